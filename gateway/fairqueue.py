"""The fair queue as the gateway uses it: gateway/fairness.py's policy behind asyncio futures.

At most `capacity` requests of a model are in flight from this replica (the caller can lower the
free slots it reports with what the backends say, see gateway/saturation.py); beyond that a request
waits here until the policy picks it. The policy decides, this class only parks and wakes waiters:
a slot freed by `release` goes to `FairPolicy.next()`, so the order is strict tier, then lowest
virtual token counter. A waiter whose queue time passes gets `QueueTimeout`; a cancelled waiter
(client gone) leaves the queue uncharged, and one cancelled after being granted a slot gives the
slot back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.fairness import FairPolicy, Pending, Share, Verdict
from gateway.saturation import Detector


class QueueFull(Exception):
    """More requests waiting than the queue holds."""


class QueueTimeout(Exception):
    """The request waited its plan's queue time (or its deadline) without getting a slot."""


class Refused(Exception):
    """Refused at once: the plan is sheddable, or the deadline is shorter than the predicted wait."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.action)
        self.verdict = verdict


@dataclass
class Ticket:
    """A granted slot; hand it back to `release` with the usage the backend reported."""

    pending: Pending
    provisional: float
    waited_s: float
    boost: bool = False  # sent ahead of a backlog beyond the free slots: use `boosted_priority`


@dataclass
class Waiter:
    """A request parked in the queue by `FairQueue.enter`; `FairQueue.wait` awaits its slot."""

    pending: Pending
    fut: asyncio.Future[None]
    enqueued_s: float


class FairQueue:
    """At most `capacity` requests in flight; the rest wait in the policy's order."""

    def __init__(
        self,
        capacity: int,
        max_waiting: int = 10_000,
        *,
        policy: FairPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.in_flight = 0
        self.policy = policy or FairPolicy()
        self.clock = clock
        self._futures: dict[int, asyncio.Future[None]] = {}
        self._seq = 0
        self._expiry: asyncio.TimerHandle | None = None
        # With a detector, free slots come from the backends' own metrics (gateway/saturation.py);
        # without one, `capacity` is a static cap on this replica's in-flight requests.
        self.detector: Detector | None = None
        self.refused: dict[tuple[str, str, str], int] = {}  # (tenant, tier, shed | deadline) -> count
        # Requests this replica may send beyond its free slots when they would leave first anyway
        # (a tenant below its share arriving while others are backlogged). They wait in the
        # engine's queue ahead of the backlog (boosted vLLM priority), so set only with
        # engine_priority on; see FairPolicy.offer and loadtest/bench/fairness_notes.md.
        self.overdispatch = 0

    @property
    def waiting(self) -> int:
        return self.policy.depth

    def free_slots(self) -> int:
        if self.detector is not None:
            return self.detector.free_slots()
        return self.capacity - self.in_flight

    async def acquire(
        self,
        tenant: str,
        cost: float,
        weight: float = 1.0,
        *,
        share: Share | None = None,
        input_estimate: float | None = None,
        deadline_s: float | None = None,
    ) -> Ticket:
        """Return when the request may go to a backend; the caller must `release` the ticket after.

        `cost` is the reservation (legacy callers charge it provisionally); `input_estimate` the
        prompt estimate charged at dispatch and trued up by `release`.
        """
        entered = self.enter(
            tenant, cost, weight, share=share, input_estimate=input_estimate, deadline_s=deadline_s
        )
        return entered if isinstance(entered, Ticket) else await self.wait(entered)

    def enter(
        self,
        tenant: str,
        cost: float,
        weight: float = 1.0,
        *,
        share: Share | None = None,
        input_estimate: float | None = None,
        deadline_s: float | None = None,
    ) -> Ticket | Waiter:
        """`acquire` without the await: a Ticket when the request may go now (the common case of an
        unsaturated model, with no coroutine, task or timer), else its place in the queue, already
        registered, for `wait`. Raises QueueFull or Refused at once."""
        share = share or Share(weight=weight, max_queue_s=math.inf if deadline_s is None else 1e9)
        now = self.clock()
        self._seq += 1
        pending = Pending(
            key=str(self._seq), tenant=tenant, share=share, enqueued_s=now,
            input_estimate=cost if input_estimate is None else input_estimate, deadline_s=deadline_s,
        )
        if self.policy.depth >= self.max_waiting:
            raise QueueFull(f"{self.policy.depth} requests already waiting")
        verdict = self.policy.offer(pending, now, self.free_slots(), self.overdispatch)
        if verdict.action == "dispatch":
            ticket = self._grant(pending, now)
            ticket.boost = verdict.boost
            return ticket
        if verdict.action != "queue":
            key = (tenant, share.tier, "shed" if verdict.action == "shed" else "deadline")
            self.refused[key] = self.refused.get(key, 0) + 1
            raise Refused(verdict)
        # Registered before returning, so a `pump` between this and `wait` finds the future.
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures[id(pending)] = fut
        self._arm_expiry()
        return Waiter(pending, fut, now)

    async def wait(self, w: Waiter) -> Ticket:
        """Wait for a queued request's slot (`enter`'s Waiter); a cancelled waiter leaves the queue
        uncharged, or gives back the slot it was granted as it was cancelled."""
        try:
            await w.fut
        except asyncio.CancelledError:
            self._futures.pop(id(w.pending), None)
            if w.fut.done() and not w.fut.cancelled() and w.fut.exception() is None:
                self.release(Ticket(w.pending, self._provisional(w.pending), 0.0))  # granted, unused
            else:
                self.policy.cancel(w.pending)
            raise
        return Ticket(w.pending, self._provisional(w.pending), self.clock() - w.enqueued_s)

    def _provisional(self, pending: Pending) -> float:
        return pending.input_estimate / pending.share.weight

    def _grant(self, pending: Pending, now: float) -> Ticket:
        self.in_flight += 1
        return Ticket(pending, self.policy.dispatched(pending, now), 0.0)

    def release(self, ticket: Ticket | None = None, input_tokens: int = 0, output_tokens: int = 0) -> None:
        """Give the slot back; with a ticket, charge the served tokens (0, 0 for nothing served)."""
        self.in_flight -= 1
        if ticket is not None:
            p = ticket.pending
            self.policy.finished(
                p.tenant, p.share, input_tokens, output_tokens, ticket.provisional, self.clock()
            )
        if self.policy.depth:  # a freed slot matters only to a waiter (and expiry only to waiters)
            self.pump()

    def pump(self) -> None:
        """Hand free slots to waiters in policy order (also call it when the free slots grow)."""
        now = self.clock()
        for expired in self.policy.expire(now):
            fut = self._futures.pop(id(expired), None)
            if fut is not None and not fut.done():
                fut.set_exception(QueueTimeout(f"waited {now - expired.enqueued_s:.1f}s"))
        while self.free_slots() > 0:
            nxt = self.policy.next()
            if nxt is None:
                break
            fut = self._futures.pop(id(nxt), None)
            if fut is None or fut.done():
                continue
            self.in_flight += 1
            self.policy.dispatched(nxt, now)
            fut.set_result(None)

    def _arm_expiry(self) -> None:
        """Wake once a second while anything waits, so queue times are enforced without a release."""
        if self._expiry is not None or not self._futures:
            return
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self._expiry = None
            self.pump()
            self._arm_expiry()

        self._expiry = loop.call_later(1.0, tick)
