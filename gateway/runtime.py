"""The resources one gateway process shares between requests, opened in the app's lifespan.

Handlers reach them through `runtime(request)`; nothing here exists at import time. It also
owns the Redis health state: one place records that Redis failed or came back, logs the
transition once (not once per request) and keeps the `redis_up` gauge true; the transition back
also wakes the maintenance loop (recovery.py), which replays the settle spool at once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from redis.asyncio import Redis
from starlette.requests import Request

from gateway.auth import KeyStore
from gateway.config import EffectivePlan, GatewayConfig
from gateway.fairqueue import FairQueue
from gateway.liveplans import LivePlans
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import Limiter, SettleRecord
from gateway.routing import BackendPool
from gateway.settings import GatewaySettings
from gateway.spool import SettleSpool
from gateway.upstream import UpstreamClient
from gateway.versions import LiveVersions
from gateway.vtcsync import build_queues

if TYPE_CHECKING:
    from gateway.lifecycle import RequestOwner

log = logging.getLogger("gateway.redis")


@dataclass
class Runtime:
    settings: GatewaySettings
    config: GatewayConfig
    redis: Redis
    limiter: Limiter
    keys: KeyStore
    session: aiohttp.ClientSession
    upstream: UpstreamClient
    pool: BackendPool
    metrics: GatewayMetrics
    spool: SettleSpool
    replica_id: str
    redis_ok: bool = field(default=True)
    redis_back: asyncio.Event = field(default_factory=asyncio.Event)
    live: set[RequestOwner] = field(default_factory=set)  # admitted, unfinished: lifecycle.heartbeats
    plans: LivePlans = field(init=False)
    versions: LiveVersions = field(init=False)
    queues: dict[str, FairQueue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.plans = LivePlans(self.config, self.redis)
        self.versions = LiveVersions(self.config, self.redis)
        self.queues = build_queues(self.config)  # gateway/vtcsync.py: fair queues + saturation detectors

    def plan(self, tenant: str) -> EffectivePlan:
        return self.plans.plans[tenant]

    @property
    def heartbeat_s(self) -> float:
        """Lease renewal interval: a third of the TTL unless set, so two beats may fail in a row."""
        return self.settings.lease_heartbeat_s or self.settings.lease_ttl_s / 3

    def spool_settle(self, rec: SettleRecord) -> None:
        """Keep a settle that Redis did not take on local disk, for replay (never raises)."""
        try:
            self.spool.append(rec)
        except OSError as exc:
            log.error(
                "Settle lost: Redis unreachable and the spool cannot be written: tenant=%s request_id=%s "
                "prompt_tokens=%d completion_tokens=%d error=%s",
                rec.tenant,
                rec.request_id,
                rec.prompt_tokens,
                rec.completion_tokens,
                exc,
            )
            self.metrics.settles_lost.inc()
            return
        self.metrics.settles_spooled.inc()

    def redis_failed(self, op: str, exc: BaseException) -> None:
        self.metrics.redis_errors.labels(op).inc()
        if self.redis_ok:
            self.redis_ok = False
            self.metrics.redis_up.set(0)
            log.error(
                "Redis unreachable, failing %s until it answers again: op=%s error=%s",
                self.settings.redis_failure_mode,
                op,
                exc,
            )

    def redis_answered(self) -> None:
        if not self.redis_ok:
            self.redis_ok = True
            self.metrics.redis_up.set(1)
            self.redis_back.set()
            log.warning("Redis reachable again, admission and metering resumed.")


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt
