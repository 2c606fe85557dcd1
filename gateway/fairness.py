"""Who is served next when a model is saturated: the policy, with no I/O and no clock of its own.

Rate limits bound each tenant; they do not decide who gets a backend slot when the admitted demand
is more than the backends can serve. This module does, and the same code runs in two homes: the
gateway's asyncio queue (gateway/fairqueue.py) and the offline simulator's tenant front
(server/sim/tenantfront.py), so a cluster-scale what-if runs the policy the live stack runs.

- **Strict tiers.** A plan has a tier (`interactive` < `standard` < `batch`); a waiting request of a
  better tier always leaves first. The tier also goes to the engine as vLLM's `priority` field
  (`engine_priority`), so the engine's own waiting queue is ordered the same way.
- **Virtual token counter inside a tier** (Sheng et al., "Fairness in Serving Large Language
  Models", OSDI 2024). Each tenant's counter grows by the service it *received*: (input + 2 x
  output tokens) / plan weight. The queue serves the tenant with the lowest counter. A tenant that
  becomes active (nothing queued before) is lifted to the lowest counter of the active tenants, so
  idle time cannot be banked. Input is charged provisionally at dispatch (as the paper charges
  prompt tokens when a request is admitted) and trued up to the backend's usage at the end; a
  request that leaves the queue unserved (timed out, shed, client gone) is never charged.
- **Overload.** When the model is saturated, a sheddable plan is refused at once (429 with
  `retry-after`), a request whose deadline is shorter than the predicted wait is refused at once,
  and everything else waits at most its plan's queue time.

Times are plain floats in seconds from whatever clock the caller reads (`now` arguments), which
is what lets the unit tests drive the queue with an injected clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # moved to gateway/fairqueue.py; still importable from here (see __getattr__)
    from gateway.fairqueue import FairQueue, QueueFull  # noqa: F401

Tier = Literal["interactive", "standard", "batch"]
TIERS: tuple[Tier, ...] = ("interactive", "standard", "batch")

INPUT_WEIGHT = 1.0
OUTPUT_WEIGHT = 2.0  # the paper's and its artifact's default: an output token costs two input tokens


def engine_priority(tier: Tier) -> int:
    """vLLM's `priority` request field for a tier: lower is served first (0, 2, 4).

    Tiers are two apart so that a request sent ahead of a backlog (`boosted_priority`) sits
    between its own tier and the better one: the tier stays the major key.
    """
    return 2 * TIERS.index(tier)


def boosted_priority(tier: Tier) -> int:
    """The `priority` of a request dispatched ahead of a backlog (`Verdict.boost`): -1, 1, 3.

    It may wait in the engine's own queue (it was sent beyond the free slots); vLLM orders that
    queue by (priority, arrival), so it takes the engine's next free slot before the backlogged
    tenants' requests of its tier, and never before a better tier's.
    """
    return engine_priority(tier) - 1


def send_ahead_allowance(max_num_seqs: int, backends: int, replicas: int) -> int:
    """Requests a replica may send ahead of a backlog beyond its free slots (`FairPolicy.offer`'s
    `overdispatch`): half its slice. The gateway (gateway/vtcsync.py) and the offline front
    (server/sim/tenantfront.py users) derive it the same way; only with engine priority on."""
    return max_num_seqs * backends // max(replicas, 1) // 2


def weighted_service(input_tokens: float, output_tokens: float) -> float:
    """Service of one request in counter units before the plan weight: input + 2 x output."""
    return INPUT_WEIGHT * input_tokens + OUTPUT_WEIGHT * output_tokens


@dataclass(frozen=True)
class Share:
    """What the policy needs of a tenant's plan."""

    weight: float = 1.0
    tier: Tier = "standard"
    sheddable: bool = False  # refused at once while the model is saturated
    max_queue_s: float = 30.0  # longest wait in the queue before the request is given up

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError("weight must be positive")
        if self.tier not in TIERS:
            raise ValueError(f"unknown tier {self.tier!r} (known: {', '.join(TIERS)})")
        if not self.max_queue_s > 0:
            raise ValueError("max_queue_s must be positive")


@dataclass(frozen=True)
class Pending:
    """A request waiting for a slot. `input_estimate` is charged provisionally when it leaves."""

    key: str
    tenant: str
    share: Share
    enqueued_s: float
    input_estimate: float = 0.0
    deadline_s: float | None = None  # absolute time by which it must have left the queue

    @property
    def expires_s(self) -> float:
        give_up = self.enqueued_s + self.share.max_queue_s
        return give_up if self.deadline_s is None else min(give_up, self.deadline_s)


Action = Literal["dispatch", "queue", "shed", "refuse_deadline"]


@dataclass(frozen=True)
class Verdict:
    """What to do with an arriving request. `retry_after_s` and `predicted_wait_s` are for refusals."""

    action: Action
    predicted_wait_s: float = 0.0
    retry_after_s: float = 0.0
    boost: bool = False  # dispatch beyond the free slots, with `boosted_priority` in the engine


DISPATCH = Verdict("dispatch")  # immutable: one object serves every unsaturated arrival


class VirtualTokenCounter:
    """Per-tenant counters of weighted service received, with lift on activation.

    `base` holds counters as last read from the shared store (Redis) or, in a single home, the
    counters themselves; `local` holds what this home charged since (provisional charges of
    requests in flight and settles not yet seen in a snapshot). The value the queue orders on is
    max(base, floor) + local, where `floor` is the lift applied when the tenant became active.
    """

    def __init__(self) -> None:
        self.base: dict[str, float] = {}
        self.local: dict[str, float] = {}
        self.floor: dict[str, float] = {}

    def value(self, tenant: str) -> float:
        return max(self.base.get(tenant, 0.0), self.floor.get(tenant, 0.0)) + self.local.get(tenant, 0.0)

    def charge(self, tenant: str, amount: float) -> None:
        """Add weighted service (already divided by the weight); negative amounts true up."""
        self.local[tenant] = self.local.get(tenant, 0.0) + amount

    def served(self, tenant: str, amount: float, now: float) -> None:
        """A request's final charge (its served tokens); a shared store may hold it later too."""
        self.charge(tenant, amount)

    def lift(self, tenant: str, to: float) -> None:
        """Raise the tenant's counter to at least `to` (never lowers it)."""
        if self.value(tenant) < to:
            self.floor[tenant] = to - self.local.get(tenant, 0.0)

    def absorb(self, snapshot: Mapping[str, float], settled_since: Mapping[str, float] | None = None) -> None:
        """Take a snapshot of the shared counters; `settled_since` are local charges it now contains."""
        self.base = dict(snapshot)
        for tenant, amount in (settled_since or {}).items():
            self.local[tenant] = self.local.get(tenant, 0.0) - amount


class FairPolicy:
    """The queue's state and its decisions; callers do the waiting and the I/O.

    Protocol: `offer` each arriving request with the number of free backend slots the caller sees;
    on "dispatch" send it, on "queue" keep it until `next` hands it back (or `expire` / `cancel`
    drop it), on "shed"/"refuse_deadline" answer at once. `dispatched` after sending (provisional
    charge), `finished` when the backend reports usage (true-up; zero tokens for an unserved one).
    """

    def __init__(
        self,
        counters: VirtualTokenCounter | None = None,
        *,
        wait_horizon_s: float = 10.0,
        burst_allowance: float = 0.0,
    ) -> None:
        self.counters = counters or VirtualTokenCounter()
        # How far below the lowest active counter a returning tenant may stay (weighted tokens).
        # 0 is the paper's lift; a few requests' worth lets a tenant below its share skip ahead
        # of a backlog for a short burst, at the price of a looser service-difference bound.
        self.burst_allowance = burst_allowance
        self._queues: dict[Tier, dict[str, deque[Pending]]] = {t: {} for t in TIERS}
        self._depth = 0
        self._last_min = 0.0  # lowest active counter when the queue last held anything
        # dispatch times over the last `wait_horizon_s`: the service rate wait predictions divide by
        self._horizon = wait_horizon_s
        self._sent: deque[float] = deque()

    # -- queue state ------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self._depth

    def depth_of(self, tenant: str) -> int:
        return sum(len(q.get(tenant, ())) for q in self._queues.values())

    def depths(self) -> dict[tuple[Tier, str], int]:
        """Requests waiting per (tier, tenant)."""
        return {(tier, t): len(q) for tier in TIERS for t, q in self._queues[tier].items()}

    def active_tenants(self) -> Iterable[str]:
        for per_tenant in self._queues.values():
            yield from per_tenant

    def _min_active(self) -> float | None:
        values = [self.counters.value(t) for t in self.active_tenants()]
        return min(values) if values else None

    # -- decisions --------------------------------------------------------------------------------

    def ahead_of_backlog(self, tenant: str, share: Share) -> bool:
        """Would a new request of `tenant` leave before everything queued, and is anything queued?

        True when the tenant has nothing queued, no better tier waits, and its counter (after the
        lift it would get on arrival) is below the counter of every tenant queued in its tier (or
        only worse tiers wait): a tenant below its share, arriving while others are backlogged.
        """
        if self._depth == 0 or self.depth_of(tenant):
            return False
        for tier in TIERS:
            if tier == share.tier:
                break
            if self._queues[tier]:
                return False
        others = [self.counters.value(t) for t in self._queues[share.tier]]
        if not others:
            return True  # only worse tiers wait
        low = min(others)
        return max(self.counters.value(tenant), low - self.burst_allowance) < low

    def predicted_wait_s(self, tenant: str, share: Share) -> float:
        """Requests that would leave before this one, divided by the recent dispatch rate."""
        ahead = 0
        mine = self.counters.value(tenant)
        if self.depth_of(tenant) == 0:  # it would be lifted on arrival (see _push)
            low = self._min_active()
            mine = max(mine, (self._last_min if low is None else low) - self.burst_allowance)
        for tier in TIERS:
            per_tenant = self._queues[tier]
            if tier == share.tier:
                ahead += sum(
                    len(q) for t, q in per_tenant.items() if t == tenant or self.counters.value(t) <= mine
                )
                break
            ahead += sum(len(q) for q in per_tenant.values())
        rate = self.dispatch_rate()
        if rate <= 0:
            return math.inf if ahead else 0.0
        return (ahead + 1) / rate

    def dispatch_rate(self) -> float:
        """Requests sent per second over the recent window (0 before two sends)."""
        if len(self._sent) < 2:
            return 0.0
        span = self._sent[-1] - self._sent[0]
        return (len(self._sent) - 1) / span if span > 0 else 0.0

    def offer(self, req: Pending, now: float, free_slots: int, overdispatch: int = 0) -> Verdict:
        """Decide at arrival. `free_slots` > 0 means the model is not saturated for this caller.

        With `overdispatch` > 0, a request that would leave first anyway (`ahead_of_backlog`) is
        sent at once while free_slots > -overdispatch, to wait in the engine's own queue ahead of
        the backlogged tenants' requests (`Verdict.boost`: send it with `boosted_priority`).
        """
        if free_slots > 0 and self._depth == 0:
            return DISPATCH  # the hot path: nothing queued, a slot free
        if free_slots > -overdispatch and self.ahead_of_backlog(req.tenant, req.share):
            return Verdict("dispatch", boost=True)
        wait = self.predicted_wait_s(req.tenant, req.share)
        retry = max(1.0, min(wait, 60.0)) if math.isfinite(wait) else 1.0
        if req.share.sheddable:
            return Verdict("shed", wait, retry)
        if req.deadline_s is not None and now + wait > req.deadline_s:
            return Verdict("refuse_deadline", wait, retry)
        self._push(req)
        return Verdict("queue", wait)

    def _push(self, req: Pending) -> None:
        per_tenant = self._queues[req.share.tier]
        if self.depth_of(req.tenant) == 0:  # becomes active: lift so idle time is not banked
            low = self._min_active()
            self.counters.lift(req.tenant, (self._last_min if low is None else low) - self.burst_allowance)
        per_tenant.setdefault(req.tenant, deque()).append(req)
        self._depth += 1

    def _remove(self, tier: Tier, tenant: str) -> Pending:
        per_tenant = self._queues[tier]
        q = per_tenant[tenant]
        req = q.popleft()
        if not q:
            low = self._min_active()
            if low is not None:
                self._last_min = low
            del per_tenant[tenant]
        self._depth -= 1
        return req

    def next(self) -> Pending | None:
        """The request to send now: best tier, then lowest counter (ties: oldest).

        Callers drop the expired first (`expire`), since they must answer those requests.
        """
        for tier in TIERS:
            per_tenant = self._queues[tier]
            if not per_tenant:
                continue
            tenant = min(per_tenant, key=lambda t: (self.counters.value(t), per_tenant[t][0].enqueued_s))
            self._last_min = self.counters.value(tenant)
            return self._remove(tier, tenant)
        return None

    def expire(self, now: float) -> list[Pending]:
        """Remove and return requests whose queue time or deadline has passed (never charged)."""
        out: list[Pending] = []
        for tier in TIERS:
            for tenant in list(self._queues[tier]):
                q = self._queues[tier][tenant]
                while q and q[0].expires_s <= now:
                    out.append(self._remove(tier, tenant))
                    if tenant not in self._queues[tier]:
                        break
        return out

    def cancel(self, req: Pending) -> bool:
        """The client went away while waiting; nothing is charged. False if it was not queued."""
        per_tenant = self._queues[req.share.tier]
        q = per_tenant.get(req.tenant)
        if not q or req not in q:
            return False
        q.remove(req)
        self._depth -= 1
        if not q:
            del per_tenant[req.tenant]
        return True

    # -- accounting -------------------------------------------------------------------------------

    def dispatched(self, req: Pending, now: float) -> float:
        """Record a send; returns the provisional charge to pass back to `finished`."""
        self._sent.append(now)
        while self._sent and self._sent[0] < now - self._horizon:
            self._sent.popleft()
        provisional = weighted_service(req.input_estimate, 0.0) / req.share.weight
        self.counters.charge(req.tenant, provisional)
        return provisional

    def finished(
        self,
        tenant: str,
        share: Share,
        input_tokens: int,
        output_tokens: int,
        provisional: float,
        now: float = 0.0,
    ) -> float:
        """True up to the served tokens; returns the request's final charge (0 if nothing was served)."""
        final = weighted_service(input_tokens, output_tokens) / share.weight
        self.counters.charge(tenant, -provisional)
        if final:
            self.counters.served(tenant, final, now)
        return final


def __getattr__(name: str) -> object:
    """`FairQueue`/`QueueFull` moved to gateway/fairqueue.py; kept importable from here for callers."""
    if name in ("FairQueue", "QueueFull"):
        from gateway import fairqueue

        return getattr(fairqueue, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
