"""Global fairness across gateway replicas: counters shared through Redis, read off the request path.

settle.lua adds each served request's charge to `vtc:{tenant}` (field: model), applying the lift
floor the fair queue chose, in the same round trip that settles the request. No request reads
Redis for fairness: every `snapshot_interval_s` one pipelined read per replica fetches all
tenants' counters (`refresh`), and between reads each replica adds its own charges on top
(`SharedCounters`). So two replicas order the same tenants by nearly the same numbers; they
differ by what the other replica served since the last read (at most one interval of its
traffic).

Each model with a fair queue also gets a saturation `Detector` (gateway/saturation.py) that
scrapes its backends' /metrics in the background; a refresh wakes the queue so freed slots are
handed out without waiting for a local release.

A charge recorded here is taken to be in the snapshot once `settle_lag_s` has passed since the
request ended (settle.lua runs right after the release, within milliseconds); a charge inside
that window may count twice until the next snapshot, a bounded and short over-count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.config import GatewayConfig
from gateway.fairness import FairPolicy, VirtualTokenCounter, send_ahead_allowance
from gateway.fairqueue import FairQueue
from gateway.keyschema import tenant_keys
from gateway.saturation import Detector, Thresholds

log = logging.getLogger("gateway.fairness")


class SharedCounters(VirtualTokenCounter):
    """Counters whose base is the last Redis snapshot; local charges fill the gap until the next."""

    def __init__(self, settle_lag_s: float = 1.0) -> None:
        super().__init__()
        self.settle_lag_s = settle_lag_s
        self._recent: deque[tuple[float, str, float]] = deque()

    def served(self, tenant: str, amount: float, now: float) -> None:
        self.charge(tenant, amount)
        self._recent.append((now, tenant, amount))

    def absorb_snapshot(self, snapshot: Mapping[str, float], taken_at: float) -> None:
        """Replace the base; drop local charges the snapshot already holds (settled before it)."""
        settled: dict[str, float] = {}
        while self._recent and self._recent[0][0] < taken_at - self.settle_lag_s:
            _, tenant, amount = self._recent.popleft()
            settled[tenant] = settled.get(tenant, 0.0) + amount
        self.absorb(snapshot, settled)


def build_queues(config: GatewayConfig) -> dict[str, FairQueue]:
    """One fair queue per model that has a static cap or a fairness block."""
    queues: dict[str, FairQueue] = {}
    for name, m in config.models.items():
        if m.fairness is not None:
            f = m.fairness
            q = FairQueue(
                f.max_num_seqs * len(m.backends),
                policy=FairPolicy(SharedCounters(), burst_allowance=f.burst_tokens),
            )
            q.detector = Detector(
                m.backends,
                Thresholds(f.max_num_seqs, f.max_waiting, f.max_kv_usage),
                interval_s=f.scrape_interval_s,
                replicas=f.gateway_replicas,
                own_in_flight=lambda q=q: q.in_flight,  # type: ignore[misc]
                on_refresh=q.pump,
            )
            if f.engine_priority:  # half a replica's slice may wait in the engines, ahead of backlogs
                q.overdispatch = send_ahead_allowance(f.max_num_seqs, len(m.backends), f.gateway_replicas)
            queues[name] = q
        elif m.max_in_flight_per_backend:
            queues[name] = FairQueue(
                m.max_in_flight_per_backend * len(m.backends), policy=FairPolicy(SharedCounters())
            )
    return queues


async def refresh(redis: Redis, config: GatewayConfig, queues: Mapping[str, FairQueue]) -> None:
    """One pipelined read of every tenant's counters for every queued model (off the request path)."""
    if not queues:
        return
    tenants = list(config.tenants)
    models = list(queues)
    pipe = redis.pipeline(transaction=False)
    for t in tenants:
        pipe.hmget(tenant_keys(t).vtc, models)
    taken_at = time.monotonic()
    rows = await pipe.execute()
    for j, model in enumerate(models):
        snap = {t: float(row[j]) for t, row in zip(tenants, rows, strict=True) if row[j] is not None}
        counters = queues[model].policy.counters
        if isinstance(counters, SharedCounters):
            counters.absorb_snapshot(snap, taken_at)
        queues[model].pump()


async def run(
    redis: Redis,
    config: GatewayConfig,
    queues: Mapping[str, FairQueue],
    session: aiohttp.ClientSession,
    interval_s: float = 0.5,
) -> None:
    """Start the detectors and keep the counters fresh until cancelled (returns at once when
    no model has a fair queue: nothing to refresh, and no wake-up twice a second)."""
    if not queues:
        return
    detectors = [q.detector for q in queues.values() if q.detector is not None]
    for d in detectors:
        d.start(session)
    failing = False
    try:
        while True:
            try:
                await refresh(redis, config, queues)
            except RedisError as exc:
                if not failing:  # once per outage, not every interval
                    log.warning("Fair-queue counters not refreshed, keeping local ones: error=%s", exc)
                failing = True
            else:
                failing = False
            await asyncio.sleep(interval_s)
    finally:
        for d in detectors:
            with contextlib.suppress(Exception):
                await d.stop()


class FairnessCollector:
    """Prometheus view of the fair queues, computed when /metrics is read (nothing per request).

    servelab_gateway_fair_queue_depth{model,tenant,tier}           requests waiting now
    servelab_gateway_fair_counter{model,tenant}                    virtual token counter (this replica's view)
    servelab_gateway_fair_refused_total{model,tenant,tier,reason}  shed / deadline refusals
    servelab_gateway_fair_free_slots{model}                        free slots as the detector sees them
    Queue wait per tenant is the histogram servelab_gateway_queue_wait_seconds.
    """

    def __init__(self, queues: Mapping[str, FairQueue]) -> None:
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "servelab_gateway_fair_queue_depth",
            "Requests waiting in the fair queue.",
            labels=["model", "tenant", "tier"],
        )
        counter = GaugeMetricFamily(
            "servelab_gateway_fair_counter",
            "Virtual token counter (weighted served tokens / plan weight), as this replica sees it.",
            labels=["model", "tenant"],
        )
        refused = CounterMetricFamily(
            "servelab_gateway_fair_refused",
            "Requests refused at once by the fair queue.",
            labels=["model", "tenant", "tier", "reason"],
        )
        free = GaugeMetricFamily(
            "servelab_gateway_fair_free_slots", "Backend slots this replica may fill now.", labels=["model"]
        )
        for model, q in self.queues.items():
            for (tier, tenant), n in q.policy.depths().items():
                depth.add_metric([model, tenant, tier], n)
            c = q.policy.counters
            for tenant in sorted(set(c.base) | set(c.local) | set(c.floor)):
                counter.add_metric([model, tenant], c.value(tenant))
            for (who, band, reason), n in q.refused.items():
                refused.add_metric([model, who, band, reason], n)
            free.add_metric([model], q.free_slots())
        yield from (depth, counter, refused, free)
