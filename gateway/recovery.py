"""Settling what a dead replica left in flight, and the background loop that does it (it also
runs the replica's lease heartbeats, `lifecycle.heartbeats`).

Every admitted request has a record in `inflight:{tenant}` (admit.lua) with its reservation,
its replica and, after each heartbeat, its running usage and lease expiry (heartbeat.lua). A
replica that dies with -9 leaves those records behind. Every replica runs `maintain()`, which on
each tick (`recovery_interval_s`):

1. replays its settle spool (and those dead replicas left in the spool folder) if there is any;
2. refreshes its liveness key `replica:<id>` (TTL: three ticks);
3. settles, from the last checkpoint, every record whose lease expired and whose replica has no
   liveness key: settle.lua meters the checkpointed usage (the usage event says `recovered=1`),
   releases the lease and returns the unused reservation to the token bucket and the quota.

Two survivors may race for one record; settle.lua's HDEL of the record decides, so it is
settled once. A replica only recovers after it has seen Redis answer for three ticks in a row,
so that after a Redis outage the live replicas have re-announced themselves (and replayed their
spools) before anyone decides they are dead.

What recovery cannot give back: tokens generated after the dead replica's last heartbeat (at
most `lease_heartbeat_s` of generation per stream), and the checkpoint of a request that died
before its first heartbeat, which is metered as its prompt estimate and no completion tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from gateway.costs import Usage, cost_micro_usd
from gateway.keyschema import replica_key, tenant_keys
from gateway.lifecycle import heartbeats
from gateway.ratelimit import SettleRecord

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("gateway.recovery")

RECOVERED_STATUS = 0  # the usage event of a recovered request: no HTTP status was ever sent


async def recover_dead(rt: Runtime) -> int:
    """Settle the expired requests of replicas that are gone; returns how many were settled."""
    tenants = list(rt.config.tenants)
    pipe = rt.redis.pipeline(transaction=False)
    pipe.time()
    for t in tenants:
        pipe.hgetall(tenant_keys(t).inflight)
    res: list[Any] = await pipe.execute()
    secs, usecs = res[0]
    now_ms = secs * 1000 + usecs // 1000
    expired: list[tuple[str, str, dict[str, Any]]] = []
    for tenant, records in zip(tenants, res[1:], strict=True):
        for lease_b, raw in records.items():
            rec = json.loads(raw)
            if rec.get("replica") != rt.replica_id and int(rec.get("exp", 0)) < now_ms:
                expired.append((tenant, lease_b.decode(), rec))
    if not expired:
        return 0
    replicas = sorted({str(r.get("replica", "")) for _, _, r in expired})
    alive_raw: list[Any] = await rt.redis.mget([replica_key(r) for r in replicas])
    alive = {r for r, v in zip(replicas, alive_raw, strict=True) if v is not None}
    settled = 0
    for tenant, lease_id, rec in expired:
        if rec.get("replica") in alive:
            continue  # its replica lives (maybe cut off from Redis for a while): it will settle
        model = rt.config.models.get(rec["model"])
        plan = rt.plan(tenant) if tenant in rt.plans.plans else None
        if plan is None:
            continue
        usage = Usage(int(rec.get("prompt", 0)), int(rec.get("completion", 0)))
        cost = (
            cost_micro_usd(usage, model.input_price_per_million_usd, model.output_price_per_million_usd)
            if model
            else 0
        )
        result = await rt.limiter.settle(
            SettleRecord(
                tenant=tenant,
                tokens_per_minute=plan.tokens_per_minute,
                tokens_per_month=plan.tokens_per_month,
                lease_id=lease_id,
                reserved=int(rec["reserved"]),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                served=True,
                month=str(rec["month"]),
                model=str(rec["model"]),
                cost_micro=cost,
                request_id=str(rec["rid"]),
                key_id=str(rec.get("key", "")),
                latency_ms=0.0,
                status=RECOVERED_STATUS,
                recovered=True,
            )
        )
        if result.owned:
            settled += 1
            rt.metrics.recovered.labels(tenant).inc()
            log.warning(
                "Recovered a dead replica's request from its last checkpoint: tenant=%s request_id=%s "
                "replica=%s prompt_tokens=%d completion_tokens=%d reserved=%s",
                tenant,
                rec["rid"],
                rec.get("replica"),
                usage.prompt_tokens,
                usage.completion_tokens,
                rec["reserved"],
            )
    return settled


async def maintain(rt: Runtime) -> None:
    """Run forever: spool replay, liveness, recovery, once per tick or when Redis comes back."""
    interval = rt.settings.recovery_interval_s
    healthy_ticks = 0
    beater = asyncio.create_task(heartbeats(rt))  # the lease heartbeats of this replica's requests
    try:
        await _maintain(rt, interval, healthy_ticks)
    finally:
        beater.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beater


async def next_tick(redis_back: asyncio.Event, interval: float) -> None:
    """Return when Redis came back or after `interval`, whichever is first; raise
    CancelledError if this task was cancelled and the cancellation got lost on the way.

    On Python 3.11 `asyncio.wait_for` returns normally instead of raising when the cancellation
    arrives in the loop turn in which what it waits for completes. redis-py wraps every command
    it sends in one (`send_packed_command` with a socket timeout), so a tick's Redis work can
    swallow the app's shutdown cancel; this loop then ran forever and held the shutdown (and
    the server thread) at `await maintainer` (tests/gateway/test_sentinel.py, 3 of about 70
    runs). `Task.cancelling()` still counts such a request, so each tick checks it. The wait
    itself uses `asyncio.timeout`, which only turns its own cancellation into TimeoutError.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(interval):
            await redis_back.wait()


async def _maintain(rt: Runtime, interval: float, healthy_ticks: int) -> None:
    while True:
        await next_tick(rt.redis_back, interval)
        rt.redis_back.clear()
        try:
            # Liveness first: it is also the probe that Redis answers before the spool is touched.
            await rt.redis.set(replica_key(rt.replica_id), "1", px=int(interval * 3000))
            if rt.spool.has_work():
                await rt.spool.replay(rt.limiter.settle)
            healthy_ticks += 1
            if healthy_ticks >= 3:
                await recover_dead(rt)
        except (RedisError, OSError) as exc:
            healthy_ticks = 0
            log.debug("Maintenance tick skipped, Redis unreachable: error=%s", exc)
        except Exception:
            healthy_ticks = 0
            log.exception("Maintenance tick failed")
