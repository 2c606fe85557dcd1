"""The asyncio fair queue: waiters wake in policy order, slots never leak; then a saturated gateway."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
from gwkit import plan

from gateway.fairness import Share
from gateway.fairqueue import FairQueue, QueueTimeout, Refused


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_light_tenant_overtakes_a_heavy_backlog() -> None:
    q = FairQueue(capacity=1)
    order: list[str] = []

    async def req(tenant: str, weight: float) -> None:
        ticket = await q.acquire(tenant, cost=10, weight=weight)
        order.append(tenant)
        await asyncio.sleep(0)
        q.release(ticket, 10, 0)

    first = await q.acquire("warm", 10, 1)  # hold the only slot while the backlog builds
    heavy = [asyncio.ensure_future(req("heavy", 1)) for _ in range(12)]
    await asyncio.sleep(0)
    light = [asyncio.ensure_future(req("light", 3)) for _ in range(3)]
    await asyncio.sleep(0)
    q.release(first, 10, 0)
    await asyncio.gather(*heavy, *light)
    assert max(i for i, t in enumerate(order) if t == "light") <= 4, order
    assert q.in_flight == 0 and q.waiting == 0


async def test_cancelled_waiter_does_not_leak_a_slot_or_get_charged() -> None:
    q = FairQueue(capacity=1)
    held = await q.acquire("a", 1, 1)
    waiter = asyncio.ensure_future(q.acquire("b", 100, 1))
    await asyncio.sleep(0)
    assert q.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert q.waiting == 0 and q.policy.counters.value("b") == 0
    q.release(held, 1, 0)
    assert q.in_flight == 0
    await asyncio.wait_for(q.acquire("c", 1, 1), 1)
    assert q.in_flight == 1


async def test_queue_time_expires_and_sheddable_is_refused() -> None:
    clock = Clock()
    q = FairQueue(capacity=1, clock=clock)
    held = await q.acquire("a", 1, share=Share())
    with pytest.raises(Refused) as refused:
        await q.acquire("bulk", 1, share=Share(tier="batch", sheddable=True))
    assert refused.value.verdict.action == "shed" and refused.value.verdict.retry_after_s >= 1
    waiter = asyncio.ensure_future(q.acquire("b", 1, share=Share(max_queue_s=2.0)))
    await asyncio.sleep(0)
    clock.t = 2.5
    q.pump()
    with pytest.raises(QueueTimeout):
        await waiter
    assert q.policy.counters.value("b") == 0
    q.release(held, 1, 0)
    assert q.in_flight == 0


def test_gateway_queue_is_fair_under_saturation(fast_upstream, write_config, gateway) -> None:
    # one backend slot, 100 ms per request: a tenant with 16 queued requests does not starve one
    # with 4 requests sent a moment later and three times the weight
    cfg = write_config(
        [fast_upstream(tokens=2, ttft_ms=100)],
        {"heavy": {**plan(), "fair_share_weight": 1}, "light": {**plan(), "fair_share_weight": 3}},
        max_in_flight_per_backend=1,
    )
    gw = gateway(cfg)
    keys = {t: gw.new_key(t) for t in ("heavy", "light")}
    done: list[tuple[float, str]] = []

    async def run() -> None:
        clients = {
            t: openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=k, max_retries=0, timeout=30)
            for t, k in keys.items()
        }

        async def one(tenant: str) -> None:
            await clients[tenant].chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "x"}], max_tokens=2
            )
            done.append((time.monotonic(), tenant))

        heavy = [asyncio.ensure_future(one("heavy")) for _ in range(16)]
        await asyncio.sleep(0.25)
        await asyncio.gather(*heavy, *(one("light") for _ in range(4)))
        for c in clients.values():
            await c.close()

    asyncio.run(run())
    order = [t for _, t in sorted(done)]
    assert order.index("light") < 8 and len(order) - 1 - order[::-1].index("light") < 12, order
