"""The OpenAI-compatible surface: /v1/chat/completions, /v1/completions, /v1/models, /v1/usage.

A completion request goes: read body (413 over the limit) -> key -> tenant (cached; 401) ->
validate the few fields the gateway reads (400/422) -> model allowed? (404/403) -> admit.lua
(one round trip; 429) -> fair queue if the model is saturated -> backend (502/503/504) ->
settle.lua (one round trip) -> response. The two completion routes are raw ASGI handlers that
app.py dispatches to before FastAPI (its middleware stack and pydantic body parsing cost more
than the gateway's own work on a small request); models and usage are plain Starlette endpoints.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.auth import Principal
from gateway.config import EffectivePlan, Model
from gateway.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    RedisUnavailable,
    error_response,
    rate_limit_headers,
    rejection,
)
from gateway.fairness import FairQueue, QueueFull
from gateway.metering import micro_to_usd, tenant_usage
from gateway.proxy import StreamProxy, UpstreamCall, forwardable_headers, open_upstream, read_json
from gateway.ratelimit import Decision, Usage, cost_micro_usd
from gateway.runtime import Runtime, runtime
from gateway.wire import ProxyRequest, parse_request

log = logging.getLogger("gateway.api")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id(header: str | None) -> str:
    """The client's x-request-id if it is a sane token, else a new one."""
    if header and _REQUEST_ID.match(header):
        return header
    return "req_" + os.urandom(12).hex()


@dataclass(frozen=True)
class Admitted:
    """Everything settle needs about one admitted request."""

    principal: Principal
    plan: EffectivePlan
    model_name: str
    model: Model
    lease_id: str
    reserved: int
    month: str
    request_id: str
    started: float


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    length = headers.get(b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyTooLarge(f"Request body of {int(length)} bytes is over the limit of {limit} bytes.")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise InvalidRequest("Client disconnected while sending the body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"Request body is over the limit of {limit} bytes.")
        parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def authenticate(rt: Runtime, authorization: str | None) -> Principal:
    try:
        principal = await rt.keys.authenticate(authorization)
    except RedisError as exc:
        rt.redis_failed("auth", exc)
        raise RedisUnavailable("Cannot verify the API key: Redis is unreachable.") from None
    if principal.tenant not in rt.config.tenants:
        raise AuthenticationFailed("API key belongs to a tenant that is no longer configured.")
    return principal


def _upstream_body(raw: bytes, preq: ProxyRequest, plan: EffectivePlan, model: Model) -> tuple[bytes, int]:
    """Bytes to send upstream (the client's own when nothing changes) and the max_tokens in force."""
    body = preq.body
    changed = False
    max_tokens = preq.max_tokens
    if max_tokens is None:
        max_tokens = body["max_tokens"] = plan.default_max_tokens
        changed = True
    if model.upstream_model and model.upstream_model != preq.model:
        body["model"] = model.upstream_model
        changed = True
    if preq.stream:
        opts = dict(body.get("stream_options") or {})
        # The true usage must come back even when the client did not ask: it is what we meter.
        if opts.get("include_usage") is not True:
            opts["include_usage"] = True
            changed = True
        if model.continuous_usage_stats and opts.get("continuous_usage_stats") is not True:
            opts["continuous_usage_stats"] = True
            changed = True
        body["stream_options"] = opts
    return (json.dumps(body, separators=(",", ":")).encode() if changed else raw), max_tokens


async def settle(
    rt: Runtime, adm: Admitted | None, tenant: str, model: str, usage: Usage | None, status: int
) -> None:
    """Settle one request (never raises) and count it in the metrics."""
    m = rt.metrics
    m.child(m.requests, tenant, model, str(status)).inc()
    if usage is not None:
        m.child(m.prompt_tokens, tenant, model).inc(usage.prompt_tokens)
        m.child(m.completion_tokens, tenant, model).inc(usage.completion_tokens)
    if adm is None:
        return  # fail-open request: nothing was reserved, nothing can be metered
    cost = (
        cost_micro_usd(usage, adm.model.input_price_per_million_usd, adm.model.output_price_per_million_usd)
        if usage
        else 0
    )
    try:
        settled = await rt.limiter.settle(
            tenant=tenant,
            plan=adm.plan,
            lease_id=adm.lease_id,
            reserved=adm.reserved,
            usage=usage,
            month=adm.month,
            model=model,
            cost_micro=cost,
            request_id=adm.request_id,
            key_id=adm.principal.key_id,
            latency_ms=(time.perf_counter() - adm.started) * 1000,
            status=status,
        )
        rt.redis_answered()
    except RedisError as exc:
        rt.redis_failed("settle", exc)
        log.error(
            "Settle failed, usage not metered and lease left to expire: tenant=%s request_id=%s "
            "prompt_tokens=%s completion_tokens=%s",
            tenant,
            adm.request_id,
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
        )
    else:
        m.child(m.quota_remaining, tenant).set(settled.quota_remaining)
        if settled.counted == 1:
            # The same integer settle.lua added to usage:{tenant}, so this agrees with /v1/usage.
            m.child(m.cost_usd, tenant, model).inc(micro_to_usd(cost))


async def _wait_in_queue(
    rt: Runtime, queue: FairQueue, adm: Admitted | None, tenant: str, model: str, cost: int, weight: float
) -> float:
    """Wait for a backend slot in fair order; 503 (settled, nothing metered) if it takes too long."""
    t = time.perf_counter()
    try:
        await asyncio.wait_for(queue.acquire(tenant, cost, weight), rt.settings.queue_timeout_s)
    except (TimeoutError, QueueFull) as exc:
        await settle(rt, adm, tenant, model, None, 503)
        raise BackendUnavailable(
            f"Model {model!r} is saturated: no backend slot within {rt.settings.queue_timeout_s:g}s "
            f"({type(exc).__name__})."
        ) from None
    waited = time.perf_counter() - t
    rt.metrics.child(rt.metrics.queue_wait_seconds, tenant).observe(waited)
    return waited


async def completions(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    """Raw ASGI handler of both completion routes (app.py dispatches to it before FastAPI)."""
    headers = dict(scope["headers"])
    rid_header = headers.get(b"x-request-id")
    rid = request_id(rid_header.decode("latin-1") if rid_header else None)
    try:
        response = await _completions(rt, headers, receive, rid, scope["path"] == "/v1/chat/completions")
    except GatewayError as exc:
        response = error_response(exc, {"x-request-id": rid})
    await response(scope, receive, send)


async def _completions(
    rt: Runtime, headers: dict[bytes, bytes], receive: Receive, rid: str, chat: bool
) -> Response:
    t0 = time.perf_counter()
    raw = await read_body(receive, headers, rt.settings.max_body_bytes)
    auth = headers.get(b"authorization")
    principal = await authenticate(rt, auth.decode("latin-1") if auth else None)
    tenant = principal.tenant
    preq = parse_request(raw, chat=chat)
    model = rt.config.models.get(preq.model)
    if model is None:
        raise ModelNotFound(f"The model {preq.model!r} does not exist.", param="model")
    allowed = rt.config.tenants[tenant].models
    if allowed != "*" and preq.model not in allowed:
        raise ModelNotAllowed(f"Tenant {tenant!r} may not use model {preq.model!r}.", param="model")
    plan = rt.plan(tenant)
    up_body, max_tokens = _upstream_body(raw, preq, plan, model)
    reserve = preq.prompt_tokens_estimate + max_tokens

    lease_id = os.urandom(8).hex()
    decision: Decision | None
    try:
        ta = time.perf_counter()
        decision = await rt.limiter.admit(tenant, plan, reserve, lease_id)
        rt.metrics.admission_seconds.observe(time.perf_counter() - ta)
        rt.redis_answered()
    except RedisError as exc:
        rt.redis_failed("admit", exc)
        if rt.settings.redis_failure_mode == "closed":
            raise RedisUnavailable("Rate limiting is unavailable: Redis is unreachable.") from None
        rt.metrics.fail_open.inc()
        decision = None
    out_headers = {"x-request-id": rid}
    adm: Admitted | None = None
    if decision is not None:
        rt.metrics.child(rt.metrics.quota_remaining, tenant).set(decision.quota_remaining)
        if not decision.allowed:
            rt.metrics.rate_limited.labels(tenant, decision.limit).inc()
            rt.metrics.requests.labels(tenant, preq.model, "429").inc()
            raise rejection(decision, tenant)
        out_headers.update(rate_limit_headers(decision))
        adm = Admitted(principal, plan, preq.model, model, lease_id, reserve, decision.month, rid, t0)

    queue = rt.queues.get(preq.model)
    waited = 0.0
    if queue is not None:
        waited = await _wait_in_queue(rt, queue, adm, tenant, preq.model, reserve, plan.fair_share_weight)
    rt.metrics.in_flight.inc()
    path = "/v1/chat/completions" if chat else "/v1/completions"
    t_up = time.perf_counter()
    try:
        call = await open_upstream(
            rt.upstream,
            rt.pool,
            preq.model,
            path,
            up_body,
            rid,
            lambda b, kind: rt.metrics.backend_errors.labels(b.url, kind).inc(),
        )
    except GatewayError as exc:
        rt.metrics.in_flight.dec()
        if queue is not None:
            queue.release()
        await settle(rt, adm, tenant, preq.model, None, exc.status)
        raise
    pre_overhead = t_up - t0 - waited  # waiting for a backend slot is not gateway overhead
    if preq.stream:
        out_headers["x-gateway-overhead-ms"] = f"{pre_overhead * 1000:.3f}"
        rt.metrics.overhead_seconds.observe(pre_overhead)
        return _stream(rt, call, adm, tenant, preq, out_headers, t0, queue)
    try:
        data, usage = await read_json(call, preq.model)
    except GatewayError as exc:
        rt.metrics.in_flight.dec()
        await settle(rt, adm, tenant, preq.model, None, exc.status)
        raise
    finally:
        if queue is not None:
            queue.release()
    t_back = time.perf_counter()
    if usage is None:
        log.warning("Backend reported no usage; metering the prompt estimate: request_id=%s", rid)
        usage = Usage(preq.prompt_tokens_estimate, 0)
    await settle(rt, adm, tenant, preq.model, usage, 200)
    rt.metrics.in_flight.dec()
    end = time.perf_counter()
    overhead = pre_overhead + (end - t_back)
    rt.metrics.overhead_seconds.observe(overhead)
    rt.metrics.child(rt.metrics.e2e_seconds, preq.model).observe(end - t0)
    out_headers.update(forwardable_headers(call.response.headers))
    out_headers["x-gateway-overhead-ms"] = f"{overhead * 1000:.3f}"
    return Response(data, status_code=200, headers=out_headers)


def _stream(
    rt: Runtime,
    call: UpstreamCall,
    adm: Admitted | None,
    tenant: str,
    preq: ProxyRequest,
    headers: dict[str, str],
    t0: float,
    queue: FairQueue | None,
) -> StreamProxy:
    async def on_end(usage: Usage, complete: bool, client_gone: bool, first_token_at: float | None) -> None:
        rt.metrics.in_flight.dec()
        if queue is not None:
            queue.release()
        if client_gone:
            rt.metrics.disconnects.labels(tenant).inc()
        elif not complete:  # the backend broke or went silent mid-stream
            rt.metrics.backend_errors.labels(call.backend.url, "stream").inc()
        status = 200 if complete else (499 if client_gone else 502)
        await settle(rt, adm, tenant, preq.model, usage, status)
        end = time.perf_counter()
        rt.metrics.child(rt.metrics.e2e_seconds, preq.model).observe(end - t0)
        if first_token_at is not None:
            rt.metrics.ttft_seconds.labels(preq.model).observe(first_token_at - t0)
            if usage.completion_tokens > 1:
                rt.metrics.tpot_seconds.labels(preq.model).observe(
                    (end - first_token_at) / (usage.completion_tokens - 1)
                )

    out = forwardable_headers(call.response.headers)
    out.update(headers)
    out.setdefault("cache-control", "no-cache")
    return StreamProxy(
        call,
        headers=out,
        client_wants_usage=preq.client_wants_usage,
        prompt_tokens_estimate=preq.prompt_tokens_estimate,
        on_end=on_end,
    )


async def list_models(request: Request) -> Response:
    rid = request_id(request.headers.get("x-request-id"))
    rt = runtime(request)
    try:
        principal = await authenticate(rt, request.headers.get("authorization"))
    except GatewayError as exc:
        return error_response(exc, {"x-request-id": rid})
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "servelab"}
        for name in rt.config.allowed_models(principal.tenant)
    ]
    return JSONResponse({"object": "list", "data": data}, headers={"x-request-id": rid})


async def usage(request: Request) -> Response:
    """The caller's own tenant only: the key decides the tenant, there is no tenant parameter."""
    rid = request_id(request.headers.get("x-request-id"))
    rt = runtime(request)
    try:
        principal = await authenticate(rt, request.headers.get("authorization"))
        try:
            report = await tenant_usage(
                rt.redis,
                principal.tenant,
                rt.plan(principal.tenant),
                request.query_params.get("month"),
            )
        except RedisError as exc:
            rt.redis_failed("usage", exc)
            raise RedisUnavailable("Usage is unavailable: Redis is unreachable.") from None
    except GatewayError as exc:
        return error_response(exc, {"x-request-id": rid})
    return JSONResponse(report, headers={"x-request-id": rid})
