"""The gateway's ASGI app: `create_app(settings)`, with every resource opened in the lifespan.

Nothing is created at import time: the Redis pools, the aiohttp session, the metrics registry
and the key-revocation subscriber are made when the app starts and closed when it stops, so
tests (and several replicas in one test process) each build their own app with their own
settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway import admin, admin_rollout, api, broadcast, recovery, vtcsync
from gateway.auth import REVOKED_CHANNEL, KeyStore
from gateway.config import GatewayConfig, load_config
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RedisUnavailable,
    UnprocessableRequest,
    error_response,
)
from gateway.liveplans import CONFIG_CHANNEL
from gateway.metrics import GatewayMetrics
from gateway.prefixroute import PrefixAffinity
from gateway.proxy import new_session
from gateway.ratelimit import Limiter
from gateway.redistarget import FailoverWatch, RedisTarget
from gateway.rollout import RolloutController
from gateway.routing import pool_from_config
from gateway.runtime import Runtime, runtime
from gateway.scriptconn import ScriptConnection
from gateway.settings import GatewaySettings
from gateway.spool import SettleSpool
from gateway.upstream import UpstreamClient
from gateway.versions import VERSIONS_CHANNEL

log = logging.getLogger("gateway")


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection, as the direct pool does."""


async def _stop(task: asyncio.Task[Any]) -> None:
    """Cancel a background loop and wait until it is gone, cancelling again while it runs.

    One cancel is not enough on Python 3.11: `asyncio.wait_for` (which redis-py wraps around
    every command when a socket timeout is set) returns normally instead of raising when the
    cancel arrives just as the awaited call completes, and the loop carries on into its next
    tick. A loop that swallowed the cancel kept a gateway's shutdown waiting forever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled() and task.exception() is not None:
        log.error("Background task %s ended with an error", task.get_name(), exc_info=task.exception())


def _redis_clients(settings: GatewaySettings, target: RedisTarget) -> tuple[Redis, Redis, Sentinel | None]:
    """The pooled client, the pub/sub client and (with Sentinel) the Sentinel manager.

    A blocking pool waits for a free connection instead of raising once all are busy (the
    default pool turns a load spike into 500s). One retry without backoff reconnects a
    pooled connection that a Redis restart left dead, so recovery needs no gateway restart;
    with Sentinel the reconnect asks the Sentinels for the master first, so the same retry
    follows a failover.
    """
    pool_kw: dict[str, Any] = {
        "max_connections": settings.redis_pool_max_connections,
        "timeout": settings.redis_pool_timeout_s,
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "retry": Retry(NoBackoff(), 1),
    }
    sub_kw: dict[str, Any] = {"socket_connect_timeout": settings.redis_connect_timeout_s}
    if not target.sentinels:
        pool = BlockingConnectionPool.from_url(settings.redis_url, **pool_kw)
        return Redis(connection_pool=pool), Redis.from_url(settings.redis_url, **sub_kw), None
    sentinel_kw: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "username": target.sentinel_username,
        "password": target.sentinel_password,
    }
    conn_kw = target.redis_py_kwargs()
    if target.tls:
        sentinel_kw.update({k: v for k, v in conn_kw.items() if k.startswith("ssl")})
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kw)
    assert target.master_name is not None
    redis = sentinel.master_for(
        target.master_name, connection_pool_class=_BlockingSentinelPool, **pool_kw, **conn_kw
    )
    subscriber = sentinel.master_for(target.master_name, **sub_kw, **conn_kw)
    return redis, subscriber, sentinel


class GatewayApp:
    """The ASGI entry point: the two completion routes go straight to their raw ASGI handler,
    everything else (admin, models, usage, health, metrics, lifespan) to the FastAPI app.

    The completion routes are the hot path; FastAPI's middleware stack and request objects
    cost more per request than the gateway's own work there (measured: docs/gateway.md).
    Two checks sit here because they hold for every route: a request with two Authorization
    headers is refused with 400 before anything reads either (which key would pay is
    ambiguous, and a proxy in front may have appended one), and the completion routes answer
    any method but POST with 405 and `Allow: POST` instead of falling through to a 404.
    """

    HOT = frozenset({"/v1/chat/completions", "/v1/completions"})

    def __init__(self, fastapi: FastAPI) -> None:
        self.fastapi = fastapi
        self.state = fastapi.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fastapi(scope, receive, send)
            return
        refusal = _refusal(scope, scope["path"] in self.HOT)
        if refusal is not None:
            rid = api.request_id(_header(scope, b"x-request-id"))
            await error_response(refusal, {"x-request-id": rid})(scope, receive, send)
        elif scope["path"] in self.HOT:
            await api.completions(self.state.runtime, scope, receive, send)
        else:
            await self.fastapi(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


def _refusal(scope: Scope, hot: bool) -> GatewayError | None:
    """The error for a request no route may see, else None (a loop over a handful of headers)."""
    if hot and scope["method"] != "POST":
        return MethodNotAllowed(
            f"Method {scope['method']} is not allowed on {scope['path']}; use POST.",
            headers={"allow": "POST"},
        )
    seen = False
    for k, _ in scope["headers"]:
        if k == b"authorization":  # ASGI servers lower-case header names
            if seen:
                return InvalidRequest(
                    "More than one Authorization header: send exactly one 'Authorization: Bearer ...'.",
                    param="authorization",
                    code="duplicate_header",
                )
            seen = True
    return None


def create_app(settings: GatewaySettings, config: GatewayConfig | None = None) -> GatewayApp:
    """Build one gateway app; `config` defaults to the YAML file named in settings."""
    cfg = config if config is not None else load_config(settings.config_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        target = RedisTarget.parse(settings.redis_url)
        redis, subscriber, sentinel = _redis_clients(settings, target)
        metrics = GatewayMetrics()
        scripts = ScriptConnection(
            target,
            connect_timeout_s=settings.redis_connect_timeout_s,
            command_timeout_s=settings.redis_socket_timeout_s,
            wait_replicas=settings.redis_settle_wait_replicas,
            wait_timeout_ms=settings.redis_settle_wait_ms,
        )
        watch_task: asyncio.Task[None] | None = None
        if target.sentinels:
            # When Sentinel promotes a replica every connection goes at once, so nothing more is
            # written to the old master (the pub/sub client resubscribes and resyncs on the new one).
            watch = FailoverWatch(target, connect_timeout_s=settings.redis_connect_timeout_s)
            watch.on_switch(scripts.reset)
            watch.on_switch(lambda _: redis.connection_pool.disconnect())
            watch.on_switch(lambda _: subscriber.connection_pool.disconnect())
            watch_task = asyncio.create_task(watch.run())
        replica_id = os.urandom(6).hex()  # new per process: a restarted replica is a new one
        limiter = Limiter(
            scripts,
            lease_ttl_s=settings.lease_ttl_s,
            settled_ttl_s=settings.settled_ttl_s,
            stream_maxlen=settings.usage_stream_maxlen,
            replica_id=replica_id,
        )
        keys = KeyStore(redis, settings.key_cache_ttl_s)
        session = new_session(
            connect_timeout_s=settings.upstream_connect_timeout_s,
            read_timeout_s=settings.upstream_read_timeout_s,
        )
        upstream = UpstreamClient(
            connect_timeout_s=settings.upstream_connect_timeout_s,
            read_timeout_s=settings.upstream_read_timeout_s,
        )
        bound = settings.prefix_affinity_load_bound
        pool = pool_from_config(
            cfg,
            down_s=settings.backend_down_s,
            affinity=None if bound is None else PrefixAffinity(load_bound=bound),
        )
        rt = Runtime(
            settings=settings,
            config=cfg,
            redis=redis,
            limiter=limiter,
            keys=keys,
            session=session,
            upstream=upstream,
            pool=pool,
            metrics=metrics,
            spool=SettleSpool(settings.spool_dir, replica_id),
            replica_id=replica_id,
        )
        try:
            await limiter.load()
        except RedisError as exc:
            rt.redis_failed("script_load", exc)
        subscribed = asyncio.Event()
        channels = [
            broadcast.Channel(REVOKED_CHANNEL, keys.on_revoked, keys.resync),
            broadcast.Channel(CONFIG_CHANNEL, rt.plans.on_changed, rt.plans.resync),
            broadcast.Channel(VERSIONS_CHANNEL, rt.versions.on_changed, rt.versions.resync),
        ]
        follower = asyncio.create_task(broadcast.follow(subscriber, channels, subscribed))
        maintainer = asyncio.create_task(recovery.maintain(rt))
        rollouts = RolloutController(redis, rt.versions, metrics.registry, list(cfg.models))
        rollout_task = asyncio.create_task(rollouts.run())
        fairness_task = asyncio.create_task(vtcsync.run(redis, cfg, rt.queues, session))
        metrics.registry.register(vtcsync.FairnessCollector(rt.queues))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(subscribed.wait(), timeout=2.0)
        app.state.runtime = rt
        # Everything built so far lives as long as the process: keep it out of the cyclic GC's
        # generations so that collections under load only walk per-request garbage.
        gc.freeze()
        log.info(
            "Gateway ready: tenants=%d models=%d redis=%s redis_failure_mode=%s",
            len(cfg.tenants),
            len(cfg.models),
            target.redacted,
            settings.redis_failure_mode,
        )
        try:
            yield
        finally:
            await _stop(maintainer)
            rt.spool.close()
            for task in (follower, rollout_task, fairness_task):
                await _stop(task)
            await rollouts.release()
            await session.close()
            await upstream.close()
            await scripts.close()
            await subscriber.aclose()
            await redis.aclose(close_connection_pool=True)
            if watch_task is not None:
                await _stop(watch_task)
            if sentinel is not None:
                await sentinel.aclose()

    app = FastAPI(
        title="servelab gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/admin/v1/openapi.json",
    )

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p != "body")
        return error_response(
            UnprocessableRequest(f"Invalid '{field}': {first['msg']}.", param=field or None)
        )

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> Response:
        # An admin or usage route that reached Redis without its own handler: still a 503 in
        # the OpenAI envelope during an outage, not a bare 500.
        runtime(request).redis_failed(request.url.path, exc)
        return error_response(RedisUnavailable(f"Redis is unreachable ({type(exc).__name__})."))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Starlette re-raises after this handler, so uvicorn logs the traceback once; this only
        # makes the client's 500 an OpenAI error body carrying the request id.
        rid = api.request_id(request.headers.get("x-request-id"))
        body = GatewayError(f"Internal error ({type(exc).__name__}); request id {rid}.")
        return error_response(body, {"x-request-id": rid})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        if exc.status_code == 404:
            return error_response(NotFound(f"No route {request.method} {path}."))
        if exc.status_code == 405:
            return error_response(MethodNotAllowed(f"Method {request.method} is not allowed on {path}."))
        return error_response(InvalidRequest(str(exc.detail)))

    app.add_route("/v1/models", api.list_models, methods=["GET"])
    app.add_route("/v1/usage", api.usage, methods=["GET"])
    app.include_router(admin.build_router())
    app.include_router(admin_rollout.build_router())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        rt = runtime(request)
        checks: dict[str, str] = {}
        try:
            await rt.redis.ping()
            rt.redis_answered()
            checks["redis"] = "ok"
        except RedisError as exc:
            rt.redis_failed("ping", exc)
            checks["redis"] = f"error: {exc}"
        backends_ok = 0
        for backend in rt.pool.all:
            checks[backend.url] = await _probe(rt.session, backend.url)
            backends_ok += checks[backend.url] == "ok"
        ready = checks["redis"] == "ok" and backends_ok > 0
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(runtime(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return GatewayApp(app)


async def _probe(session: aiohttp.ClientSession, url: str) -> str:
    """'ok' when the backend answers /health (or, failing that, /v1/models) with 2xx."""
    last = "no answer"
    for path in ("/health", "/v1/models"):
        try:
            async with session.get(url + path, timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
                if resp.status < 300:
                    return "ok"
                last = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = f"error: {type(exc).__name__}"
    return last
