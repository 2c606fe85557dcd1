"""Weighted fair queuing in front of a saturated model, per gateway replica.

Rate limits decide whether a tenant may send at all (globally, in Redis); this queue decides
the order in which admitted requests reach backends once they are full. A model may set
`max_in_flight_per_backend`; beyond that, requests wait here and leave in start-time fair
queuing order (SFQ, Goyal et al. 1996): each request gets a start tag
`S = max(V, F_last[tenant])` and its tenant's finish tag becomes `S + cost / weight`, with cost
the request's token reservation and weight the plan's `fair_share_weight`; the queue releases
the smallest start tag and advances the virtual time V to it. A tenant that floods the queue
therefore waits behind its own backlog, while a light tenant is served at its weighted share.
The queue is per replica (no Redis round trip): with N replicas each enforces fairness over
its own traffic, which is what a load balancer spreading tenants evenly makes global enough.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field


class QueueFull(Exception):
    """More requests waiting than the queue holds."""


@dataclass(order=True)
class _Waiter:
    start: float
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class FairQueue:
    """At most `capacity` requests in flight; the rest wait in SFQ order."""

    def __init__(self, capacity: int, max_waiting: int = 10_000) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.in_flight = 0
        self._virtual = 0.0
        self._finish: dict[str, float] = {}
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._heap if not w.future.done())

    def tags(self, tenant: str, cost: float, weight: float) -> float:
        """Start tag for a new request of `tenant`; records the tenant's new finish tag."""
        start = max(self._virtual, self._finish.get(tenant, 0.0))
        self._finish[tenant] = start + max(cost, 1.0) / weight
        return start

    async def acquire(self, tenant: str, cost: float, weight: float) -> None:
        """Return when the request may go to a backend; the caller must `release()` after."""
        if self.in_flight < self.capacity and not self._heap:
            self.in_flight += 1
            self.tags(tenant, cost, weight)
            return
        if len(self._heap) >= self.max_waiting:
            raise QueueFull(f"{len(self._heap)} requests already waiting")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, _Waiter(self.tags(tenant, cost, weight), next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were granted a slot but will not use it
            raise

    def release(self) -> None:
        self.in_flight -= 1
        while self._heap and self.in_flight < self.capacity:
            w = heapq.heappop(self._heap)
            if w.future.done():  # the waiter gave up (cancelled)
                continue
            self._virtual = w.start
            self.in_flight += 1
            w.future.set_result(None)
