"""Offline multi-tenant runs: gateway replicas with the fairness policy in front of simulated engines.

This is the second home of gateway/fairness.py. Tenants send requests (Poisson at a rate, or
closed-loop "backlogged" with N outstanding); each request lands on one of `gateways` gateway
replicas (round robin, as a load balancer spreads them); the gateway decides with one of three
fronts and the request goes to the backend with the fewest outstanding requests as that replica
counts them (its own, as gateway/routing.py does):

- `fcfs`: no queue in the gateway; everything goes straight into the engines (vLLM's default).
- `sfq`: the queue the gateway had before issue 10, kept here only as a baseline to measure
  against: per gateway replica, at most `slots_per_backend` x backends in flight, the rest in
  start-time fair order on the token *reservation*, charged on arrival (so requests that time out
  in the queue are charged too).
- `vtc`: gateway/fairness.py's `FairPolicy` (strict tiers, virtual token counter on served
  tokens, shedding, queue times). Counters are global (one `VirtualTokenCounter` shared by the
  replicas, as Redis makes them); free slots are global too: a replica sees the engines'
  outstanding requests as of the last scrape (every `scrape_interval_s`) plus its own sends since.

With `engine_priority` the tier goes to the engines as vLLM's `priority` field (the engines then
run `--scheduling-policy priority`). Everything runs on a discrete-event clock; nothing sleeps.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gateway.fairness import (
    FairPolicy,
    Pending,
    Share,
    Tier,
    VirtualTokenCounter,
    boosted_priority,
    engine_priority,
)
from gateway.saturation import BackendLoad, Thresholds, free_slots
from server.sim.engine import Engine, Plan, StepCostModel
from server.sim.lengths import LengthDist
from server.sim.request import Request
from server.sim.scheduler import SchedulerConfig

Front = Literal["fcfs", "sfq", "vtc"]
FRONTS: tuple[Front, ...] = ("fcfs", "sfq", "vtc")
Outcome = Literal["ok", "timeout", "shed", "refused"]


@dataclass(frozen=True)
class TenantSpec:
    """One tenant of a multi-tenant workload."""

    name: str
    rate: float = 0.0  # requests/s, Poisson (open loop)
    backlogged: int = 0  # > 0: closed loop with this many requests outstanding instead of `rate`
    input_len: int | str = 512
    output_len: int | str = 128
    weight: float = 1.0
    tier: Tier = "standard"
    sheddable: bool = False
    max_queue_s: float = 30.0

    def __post_init__(self) -> None:
        if (self.rate > 0) == (self.backlogged > 0):
            raise ValueError(f"tenant {self.name!r}: give exactly one of rate > 0 or backlogged > 0")

    @property
    def share(self) -> Share:
        return Share(self.weight, self.tier, self.sheddable, self.max_queue_s)


@dataclass(frozen=True)
class TenantWorkload:
    tenants: tuple[TenantSpec, ...]
    duration_s: float
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TenantWorkload:
        """From {duration_s, seed?, tenants: {name: {rate | backlogged, input_len, output_len, weight,
        tier, sheddable, max_queue_s}}}, the shape of a workload YAML file."""
        tenants = tuple(TenantSpec(name=n, **spec) for n, spec in data["tenants"].items())
        return cls(tenants, float(data["duration_s"]), int(data.get("seed", 0)))


@dataclass(frozen=True)
class FrontConfig:
    front: Front = "vtc"
    gateways: int = 1
    backends: int = 1
    slots_per_backend: int = 16  # in flight per backend before requests wait in the gateway
    scrape_interval_s: float = 0.5
    # Live replicas scrape the backends on their own clocks, not together: with `stagger_scrapes`
    # replica i first scrapes at i x interval / gateways, so their views are out of phase as the
    # live replicas' are. Off by default: compared with live runs it did not bring the figures
    # closer (docs/results/fairness.md, the comparison's last column), so the model stays one
    # coherent scrape of all replicas at once.
    stagger_scrapes: bool = False
    engine_priority: bool = False
    sfq_timeout_s: float = 30.0
    burst_allowance: float = 0.0  # vtc: see FairPolicy
    max_waiting: int = 0  # vtc: engine queue length that stops borrowing beyond a replica's slice
    overdispatch: int = 0  # vtc: requests per replica sent ahead of a backlog beyond the free slots


@dataclass
class RequestRecord:
    tenant: str
    tier: Tier
    arrival_s: float
    input_len: int
    output_len: int
    outcome: Outcome = "ok"
    dispatched_s: float = math.nan
    first_token_s: float = math.nan
    finish_s: float = math.nan

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s


@dataclass
class FrontResult:
    records: list[RequestRecord]
    duration_s: float
    inputs: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


class _Sfq:
    """The pre-issue-10 gateway queue (start-time fair on reservations), for comparison only."""

    def __init__(self) -> None:
        self.virtual = 0.0
        self.finish: dict[str, float] = {}
        self.heap: list[tuple[float, int, int]] = []

    def push(self, tenant: str, cost: float, weight: float, seq: int, idx: int) -> None:
        start = max(self.virtual, self.finish.get(tenant, 0.0))
        self.finish[tenant] = start + max(cost, 1.0) / weight
        heapq.heappush(self.heap, (start, seq, idx))

    def pop(self) -> int | None:
        if not self.heap:
            return None
        start, _, idx = heapq.heappop(self.heap)
        self.virtual = start
        return idx


@dataclass
class _Gateway:
    policy: FairPolicy | None
    sfq: _Sfq | None
    own_in_flight: int = 0
    own_at_scrape: int = 0
    next_scrape: float = 0.0
    scraped: list[BackendLoad] = field(default_factory=list)  # the engines as of its last scrape
    per_backend: list[int] = field(default_factory=list)  # this replica's outstanding per backend
    pending: dict[int, Pending] = field(default_factory=dict)  # vtc: queued request index -> entry


def run(
    workload: TenantWorkload,
    front: FrontConfig,
    cost_model: StepCostModel,
    num_blocks: int,
    *,
    max_num_seqs: int = 16,
    max_num_batched_tokens: int = 8192,
    block_size: int = 16,
) -> FrontResult:
    """Play `workload` through `front` into `front.backends` engines for `workload.duration_s`.

    Requests sent before `duration_s` all run to completion (or are refused/time out); the
    result's `duration_s` is the workload's, so rates are over the offered period.
    """
    wall0 = time.perf_counter()
    rng = np.random.default_rng(workload.seed)
    specs = {t.name: t for t in workload.tenants}
    dists = {
        t.name: (LengthDist.parse(t.input_len), LengthDist.parse(t.output_len)) for t in workload.tenants
    }
    policy_cfg = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        policy="priority" if front.engine_priority else "fcfs",
    )
    engines = [
        Engine(cost_model, num_blocks, policy_cfg, block_size, track_emitted=False)
        for _ in range(front.backends)
    ]
    counters = VirtualTokenCounter()
    gateways = [
        _Gateway(
            FairPolicy(counters, burst_allowance=front.burst_allowance) if front.front == "vtc" else None,
            _Sfq() if front.front == "sfq" else None,
            per_backend=[0] * front.backends,
        )
        for _ in range(front.gateways)
    ]
    capacity = front.slots_per_backend * front.backends
    records: list[RequestRecord] = []
    provisional: dict[int, float] = {}
    where: dict[int, int] = {}  # request index -> gateway
    engine_of: dict[int, int] = {}  # request index -> backend, while in flight
    seq = itertools.count()
    rr = itertools.count()

    # arrivals: (time, seq, tenant); closed-loop tenants add theirs as their requests end
    arrivals: list[tuple[float, int, str]] = []
    for spec_ in workload.tenants:
        if spec_.rate > 0:
            gaps = rng.exponential(1.0 / spec_.rate, size=int(spec_.rate * workload.duration_s * 1.5) + 10)
            for at in np.cumsum(gaps):
                if at >= workload.duration_s:
                    break
                arrivals.append((float(at), next(seq), spec_.name))
        else:
            for _ in range(spec_.backlogged):
                arrivals.append((0.0, next(seq), spec_.name))
    heapq.heapify(arrivals)

    in_flight: list[tuple[float, int, Plan]] = []
    busy = [False] * len(engines)
    # Engines that may start a step now: those that finished one or were sent a request since the
    # last check, and those with work whose last plan was empty. Only they are looked at, so an
    # event costs O(touched engines), not O(backends): what makes hundreds of backends fast.
    touched: set[int] = set()
    for i, g in enumerate(gateways):
        g.scraped = [BackendLoad() for _ in engines]
        g.next_scrape = i * front.scrape_interval_s / front.gateways if front.stagger_scrapes else 0.0

    def new_record(tenant: str, now: float) -> int:
        inp_d, out_d = dists[tenant]
        inp = int(inp_d.sample(rng, 1)[0])
        out = int(out_d.sample(rng, 1)[0])
        records.append(RequestRecord(tenant, specs[tenant].tier, now, inp, out))
        return len(records) - 1

    def ended(idx: int, now: float) -> None:
        """A request left the system; a backlogged tenant sends its next one."""
        tenant = records[idx].tenant
        if specs[tenant].backlogged and now < workload.duration_s:
            heapq.heappush(arrivals, (now, next(seq), tenant))

    def send(idx: int, g: _Gateway, now: float, boost: bool = False) -> None:
        rec = records[idx]
        rec.dispatched_s = now
        # like gateway/routing.py: least outstanding as this replica counts it (its own requests)
        eng_i = min(range(len(engines)), key=lambda i: g.per_backend[i])
        g.per_backend[eng_i] += 1
        engine_of[idx] = eng_i
        prio = 0
        if front.engine_priority:
            prio = boosted_priority(rec.tier) if boost else engine_priority(rec.tier)
        engines[eng_i].add(Request(str(idx), rec.input_len, rec.output_len, arrival_s=now, priority=prio))
        touched.add(eng_i)
        g.own_in_flight += 1

    thresholds = Thresholds(max_num_seqs=front.slots_per_backend, max_waiting=front.max_waiting)

    def slots_for(g: _Gateway) -> int:
        return free_slots(
            g.scraped,
            thresholds,
            own_now=g.own_in_flight,
            own_at_scrape=g.own_at_scrape,
            replicas=front.gateways,
        )

    def pump(g: _Gateway, now: float) -> None:
        if g.policy is not None:
            for gone in g.policy.expire(now):
                idx = int(gone.key)
                records[idx].outcome = "timeout"
                g.pending.pop(idx, None)
                ended(idx, now)
            while slots_for(g) > 0:
                p = g.policy.next()
                if p is None:
                    break
                idx = int(p.key)
                g.pending.pop(idx, None)
                provisional[idx] = g.policy.dispatched(p, now)
                send(idx, g, now)
        elif g.sfq is not None:
            while g.own_in_flight < capacity:
                idx_or_none = g.sfq.pop()
                if idx_or_none is None:
                    break
                idx = idx_or_none
                if now - records[idx].arrival_s > front.sfq_timeout_s:
                    records[idx].outcome = "timeout"  # its tag already advanced: charged anyway
                    ended(idx, now)
                    continue
                send(idx, g, now)

    inf = math.inf
    t = 0.0
    while True:
        t_arr = arrivals[0][0] if arrivals else inf
        t_step = in_flight[0][0] if in_flight else inf
        busy_any = t_step < inf or any(g.pending or (g.sfq and g.sfq.heap) for g in gateways)
        due = min(g.next_scrape for g in gateways)
        t_scr = due if (front.front == "vtc" and busy_any) else inf
        t = min(t_arr, t_step, t_scr)
        if t == inf:
            break
        # 1. steps that end now
        while in_flight and in_flight[0][0] <= t:
            end, r, plan = heapq.heappop(in_flight)
            out = engines[r].complete(plan, end)
            busy[r] = False
            touched.add(r)
            for req in out.first_token:
                records[int(req.req_id)].first_token_s = req.first_token_s
            for req in out.finished:
                idx = int(req.req_id)
                rec = records[idx]
                rec.finish_s = req.finish_s
                g = gateways[where[idx]]
                g.own_in_flight -= 1
                g.per_backend[engine_of.pop(idx)] -= 1
                if g.policy is not None:
                    share = specs[rec.tenant].share
                    g.policy.finished(rec.tenant, share, rec.input_len, rec.output_len, provisional.pop(idx))
                pump(g, end)
                ended(idx, end)
        # 2. scrape: each replica whose time has come refreshes its view of the engines
        if t >= due:
            now_view = [BackendLoad(e.num_running, e.num_waiting, e.kv.usage) for e in engines]
            for g in gateways:
                if t >= g.next_scrape:
                    g.scraped = now_view
                    g.own_at_scrape = g.own_in_flight
                    g.next_scrape = t + front.scrape_interval_s
                    pump(g, t)
        # 3. arrivals
        while arrivals and arrivals[0][0] <= t:
            _, _, tenant = heapq.heappop(arrivals)
            idx = new_record(tenant, t)
            gi = next(rr) % len(gateways)
            where[idx] = gi
            g = gateways[gi]
            spec = specs[tenant]
            if front.front == "fcfs":
                send(idx, g, t)
            elif g.sfq is not None:
                rec = records[idx]
                g.sfq.push(tenant, rec.input_len + rec.output_len, spec.weight, next(seq), idx)
                pump(g, t)
            else:
                assert g.policy is not None
                p = Pending(str(idx), tenant, spec.share, t, input_estimate=records[idx].input_len)
                verdict = g.policy.offer(p, t, slots_for(g), front.overdispatch)
                if verdict.action == "dispatch":
                    provisional[idx] = g.policy.dispatched(p, t)
                    send(idx, g, t, verdict.boost)
                elif verdict.action == "queue":
                    g.pending[idx] = p
                else:
                    records[idx].outcome = "shed" if verdict.action == "shed" else "refused"
                    ended(idx, t)
        # 4. start a step on every idle engine with work (in index order, as a full scan would)
        stalled: set[int] = set()
        for r in sorted(touched):
            eng = engines[r]
            if busy[r] or not eng.has_work():
                continue
            plan_ = eng.plan(t)
            if plan_ is None:
                stalled.add(r)  # work it cannot start yet: look again at the next event
                continue
            busy[r] = True
            heapq.heappush(in_flight, (t + plan_.duration_s, r, plan_))
        touched = stalled
    inputs = {
        "front": front.__dict__,
        "max_num_seqs": max_num_seqs,
        "num_blocks": num_blocks,
        "tenants": [t.__dict__ for t in workload.tenants],
        "duration_s": workload.duration_s,
        "seed": workload.seed,
    }
    return FrontResult(records, workload.duration_s, inputs, time.perf_counter() - wall0)


__all__ = [
    "FRONTS",
    "Front",
    "FrontConfig",
    "FrontResult",
    "RequestRecord",
    "TenantSpec",
    "TenantWorkload",
    "run",
]
