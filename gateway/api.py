"""The OpenAI-compatible surface: /v1/chat/completions, /v1/completions, /v1/models, /v1/usage.

A completion request goes: read body (413 over the limit) -> key -> tenant (cached; 401) ->
validate the few fields the gateway reads (400/422) -> model allowed? (404/403) -> admit.lua
(one round trip; 429) -> fair queue if the model is saturated -> backend (502/503/504) ->
settle.lua (one round trip) -> response. `_completions` reads in that order; whatever it
acquires belongs to the request's `RequestOwner` (lifecycle.py), which releases it and settles
exactly once however the request ends, so no line here releases anything by hand.

The two completion routes are raw ASGI handlers that app.py dispatches to before FastAPI (its
middleware stack and pydantic body parsing cost more than the gateway's own work on a small
request), so they carry their own catch-all: an exception nobody expected becomes a 500 in the
OpenAI envelope with the request id, logged once with its traceback. Models and usage are plain
Starlette endpoints.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway import retention
from gateway.auth import Principal
from gateway.config import EffectivePlan, Model
from gateway.costs import Usage
from gateway.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    GatewayError,
    InternalError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    RedisUnavailable,
    error_response,
)
from gateway.estimate import reservation
from gateway.fairness import boosted_priority, engine_priority
from gateway.lifecycle import RequestOwner
from gateway.metering import MONTH_PATTERN, tenant_usage
from gateway.proxy import StreamProxy, UpstreamCall, forwardable_headers, read_json
from gateway.runtime import Runtime, runtime
from gateway.versions import STICKY_HEADER, VERSION_HEADER, PinnedVersion, UnknownVersion, sticky_id
from gateway.wire import ProxyRequest, parse_request

log = logging.getLogger("gateway.api")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_MONTH = re.compile(MONTH_PATTERN)


def request_id(header: str | None) -> str:
    """The client's x-request-id if it is a sane token, else a new one."""
    if header and _REQUEST_ID.match(header):
        return header
    return "req_" + os.urandom(12).hex()


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
    if model.fairness is not None and model.fairness.engine_priority and "priority" not in body:
        body["priority"] = engine_priority(plan.tier)  # vLLM orders its waiting queue by it
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


def _boosted_body(up_body: bytes, preq: ProxyRequest, plan: EffectivePlan, model: Model) -> bytes:
    """Sent ahead of a backlog beyond the free slots (gateway/fairness.py `Verdict.boost`): the
    engine queues it before the backlogged tenants' requests of its tier. A client's own
    `priority` is left alone."""
    f = model.fairness
    if f is None or not f.engine_priority or preq.body.get("priority") != engine_priority(plan.tier):
        return up_body
    preq.body["priority"] = boosted_priority(plan.tier)
    return json.dumps(preq.body, separators=(",", ":")).encode()


DEADLINE_HEADER = b"x-servelab-deadline-ms"


def _deadline_ms(value: bytes | None) -> float | None:
    """The client's queueing deadline in ms (refused at once if the predicted wait is longer)."""
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not 0 < ms < 86_400_000:
        raise InvalidRequest(
            "x-servelab-deadline-ms must be a positive number of milliseconds.",
            param="x-servelab-deadline-ms",
        )
    return ms


async def completions(rt: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    """Raw ASGI handler of both completion routes (app.py dispatches to it before FastAPI)."""
    headers = dict(scope["headers"])
    rid_header = headers.get(b"x-request-id")
    rid = request_id(rid_header.decode("latin-1") if rid_header else None)
    async with RequestOwner(rt, rid) as req:
        try:
            response = await _completions(req, headers, receive, scope["path"] == "/v1/chat/completions")
        except GatewayError as exc:
            await req.finish(None, exc.status)
            response = error_response(exc, {"x-request-id": rid})
        except Exception:
            # The one place an unexpected exception of the raw routes is logged (with its
            # traceback) and answered: a 500 in the OpenAI envelope, never a bare text/plain one.
            log.exception("Unexpected error in a completion request: request_id=%s", rid)
            await req.finish(None, 500)
            response = error_response(
                InternalError(f"The gateway failed unexpectedly; it has been logged with request id {rid}."),
                {"x-request-id": rid},
            )
        await response(scope, receive, send)


async def _completions(
    req: RequestOwner, headers: dict[bytes, bytes], receive: Receive, chat: bool
) -> Response:
    rt = req.rt
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
    # Which version of the alias, sticky per conversation (versions.py); `model` becomes that
    # version's view (its backends and upstream id). The route also carries the tenant's regions.
    pick = headers.get(VERSION_HEADER)
    assigned = None if pick else rt.versions.only(tenant, preq.model)
    if assigned is None:
        conversation = headers.get(STICKY_HEADER)
        sid = sticky_id(
            conversation.decode("latin-1") if conversation else None, preq.body.get("user"), principal.key_id
        )
        try:
            assigned = rt.versions.assign(tenant, preq.model, sid, pick.decode("latin-1") if pick else None)
        except UnknownVersion as exc:
            raise InvalidRequest(str(exc), param="x-servelab-version", code="unknown_model_version") from None
        except PinnedVersion as exc:
            raise ModelNotAllowed(str(exc), param="x-servelab-version", code="version_pinned") from None
    model = assigned.model
    req.route = rt.versions.route(tenant, preq.model, assigned.version)
    plan = rt.plan(tenant)
    req.identify(principal, preq.model, model, plan)
    up_body, max_tokens = _upstream_body(raw, preq, plan, model)
    tokens = reservation(
        rt.settings.prompt_reservation,
        body_bytes=len(raw),
        prompt_estimate=preq.prompt_tokens_estimate,
        max_tokens=max_tokens,
    )

    out_headers = {"x-request-id": req.request_id, "x-servelab-version": assigned.version}
    out_headers.update(await req.admit(tokens.reserve, preq.prompt_tokens_estimate, tokens.need))
    deadline_ms = _deadline_ms(headers.get(DEADLINE_HEADER))
    queue = rt.queues.get(preq.model)  # only a model with a fair queue may wait (when saturated)
    waited = 0.0 if queue is None else await req.wait_for_slot(queue, tokens.reserve, deadline_ms)
    if req.fair_ticket is not None and req.fair_ticket.boost:
        up_body = _boosted_body(up_body, preq, plan, model)
    t_up = time.perf_counter()
    call = await req.open_upstream("/v1/chat/completions" if chat else "/v1/completions", up_body)
    pre_overhead = t_up - req.started - waited  # waiting for a backend slot is not gateway overhead
    if preq.stream:
        out_headers["x-gateway-overhead-ms"] = f"{pre_overhead * 1000:.3f}"
        rt.metrics.overhead_seconds.observe(pre_overhead)
        return _stream(req, call, preq, out_headers)

    data, usage = await read_json(call, preq.model)
    t_back = time.perf_counter()
    if usage is None:
        log.warning("Backend reported no usage; metering the prompt estimate: request_id=%s", req.request_id)
        usage = Usage(preq.prompt_tokens_estimate, 0)
    await req.finish(usage, 200)
    if rt.config.tenants[req.tenant].prompt_logging.enabled:
        await _keep_text(req, preq, data)
    end = time.perf_counter()
    overhead = pre_overhead + (end - t_back)
    rt.metrics.overhead_seconds.observe(overhead)
    rt.metrics.child(rt.metrics.e2e_seconds, preq.model).observe(end - req.started)
    out_headers.update(forwardable_headers(call.response.headers))
    out_headers["x-gateway-overhead-ms"] = f"{overhead * 1000:.3f}"
    return Response(data, status_code=200, headers=out_headers)


def _stream(
    req: RequestOwner, call: UpstreamCall, preq: ProxyRequest, headers: dict[str, str]
) -> StreamProxy:
    rt, tenant = req.rt, req.tenant

    async def on_end(usage: Usage, complete: bool, client_gone: bool, first_token_at: float | None) -> None:
        if client_gone:
            rt.metrics.disconnects.labels(tenant).inc()
        elif not complete:  # the backend broke or went silent mid-stream
            rt.metrics.backend_errors.labels(call.backend.url, "stream").inc()
        await req.finish(usage, 200 if complete else (499 if client_gone else 502))
        if proxy.capture is not None:  # an opted-in tenant (below); nobody else's text is kept
            await _keep_text(req, preq, retention.stream_text(proxy.capture))
        end = time.perf_counter()
        rt.metrics.child(rt.metrics.e2e_seconds, preq.model).observe(end - req.started)
        if first_token_at is not None:
            version = req.route.version if req.route else ""
            rt.metrics.ttft_seconds.labels(preq.model).observe(first_token_at - req.started)
            rt.metrics.child(rt.metrics.version_ttft_seconds, preq.model, version).observe(
                first_token_at - req.started
            )
            if usage.completion_tokens > 1:
                tpot = (end - first_token_at) / (usage.completion_tokens - 1)
                rt.metrics.tpot_seconds.labels(preq.model).observe(tpot)
                rt.metrics.child(rt.metrics.version_tpot_seconds, preq.model, version).observe(tpot)

    out = forwardable_headers(call.response.headers)
    out.update(headers)
    out.setdefault("cache-control", "no-cache")
    proxy = StreamProxy(
        call,
        headers=out,
        client_wants_usage=preq.client_wants_usage,
        prompt_tokens_estimate=preq.prompt_tokens_estimate,
        on_end=on_end,
    )
    req.progress = proxy.running_usage  # what the heartbeat checkpoints
    if rt.config.tenants[tenant].prompt_logging.enabled:
        proxy.capture = []  # only an opted-in tenant's answer is assembled (retention.py)
    return proxy


async def _keep_text(req: RequestOwner, preq: ProxyRequest, output: bytes | None) -> None:
    """Keep the request's text for a tenant that opted in (retention.py); never raises.

    Callers check the opt-in first (the default: nothing of the text is written anywhere), so
    that the common request does not pay for a coroutine that would return at once."""
    policy = req.rt.config.tenants[req.tenant].prompt_logging
    if not policy.enabled:
        return
    try:
        await retention.keep(
            req.rt.redis,
            policy,
            tenant=req.tenant,
            request_id=req.request_id,
            model=req.model_name,
            version=req.route.version if req.route else "",
            request_body=json.dumps(preq.body).encode(),
            output=output,
        )
    except RedisError as exc:
        req.rt.redis_failed("keep_text", exc)
        log.warning("Opted-in prompt text not kept: tenant=%s request_id=%s", req.tenant, req.request_id)


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
        month = request.query_params.get("month")
        if month is not None and not _MONTH.match(month):
            raise InvalidRequest("month must be YYYY-MM (e.g. 2026-11).", param="month")
        try:
            report = await tenant_usage(rt.redis, principal.tenant, rt.plan(principal.tenant), month)
        except RedisError as exc:
            rt.redis_failed("usage", exc)
            raise RedisUnavailable("Usage is unavailable: Redis is unreachable.") from None
    except GatewayError as exc:
        return error_response(exc, {"x-request-id": rid})
    return JSONResponse(report, headers={"x-request-id": rid})
