"""The engine: scheduler + paged KV cache + a cost model that says how long each step takes.

The engine never reads a clock. `plan()` asks the scheduler for a step and the cost model for its
duration; the caller decides when that step ends (the offline simulator jumps its event clock, the
real-time server sleeps until then) and calls `complete(plan, end_s)`. That seam is what lets the
same engine run under pytest without time passing, under a discrete-event loop faster than real
time, and behind an HTTP server in real time.

The cost model is a Protocol: `step_time_s(BatchShape) -> seconds`. The real one is
`server.perfmodel.PerfModel` (roofline of the model on the GPU); tests use a small linear one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from server.sim.cohort import CohortSchedule, CohortScheduler
from server.sim.kvcache import BlockAllocator
from server.sim.prefixcache import PrefixCachingAllocator
from server.sim.request import Request
from server.sim.scheduler import Schedule, Scheduler, SchedulerConfig, StepOutcome
from server.sim.scheduler_v0 import PrefillFirstScheduler

try:  # The shape type belongs to the performance model; keep a structural twin until it exists.
    from server.perfmodel import BatchShape
except ImportError:  # pragma: no cover - only while server/perfmodel.py has not landed

    @dataclass(frozen=True)
    class BatchShape:  # type: ignore[no-redef]
        prefill: tuple[tuple[int, int], ...]
        decode_context: tuple[int, ...]


class StepCostModel(Protocol):
    def step_time_s(self, batch: BatchShape) -> float: ...


# "reference": every request is updated every step (server/sim/scheduler.py); "fast": decoding
# requests are a cohort with running totals (server/sim/cohort.py), same results, O(1) in the batch.
Stepper = Literal["fast", "reference"]


@dataclass(frozen=True)
class LinearCost:
    """A transparent cost model for tests and examples: fixed + per-token + per-context-token."""

    fixed_s: float = 0.005
    per_prefill_token_s: float = 0.0001
    per_decode_seq_s: float = 0.0002
    per_context_token_s: float = 0.0

    def step_time_s(self, batch: BatchShape) -> float:
        return self.step_time_totals(batch.prefill, len(batch.decode_context), sum(batch.decode_context))

    def step_time_totals(
        self, prefill: tuple[tuple[int, int], ...], num_decode: int, decode_ctx_sum: int
    ) -> float:
        """The same time from the decodes' count and context sum (what the cohort scheduler keeps)."""
        prefill_tokens = sum(n for n, _ in prefill)
        ctx = decode_ctx_sum + sum(n + c for n, c in prefill)
        return (
            self.fixed_s
            + self.per_prefill_token_s * prefill_tokens
            + self.per_decode_seq_s * num_decode
            + self.per_context_token_s * ctx
        )


def step_time_from_totals(
    cost: StepCostModel, prefill: tuple[tuple[int, int], ...], num_decode: int, decode_ctx_sum: int
) -> float | None:
    """A step's time from decode totals when the cost model can take them, else None.

    PerfModel's `breakdown` only reads the decodes' count and context sum; this repeats its
    accumulation in the same order so the float result is identical.
    """
    totals = getattr(cost, "step_time_totals", None)
    if totals is not None:
        return float(totals(prefill, num_decode, decode_ctx_sum))
    breakdown = getattr(cost, "breakdown_from_totals", None)
    if breakdown is None:
        return None
    prefill_tokens = 0
    attn_pairs = 0.0
    kv_read_tokens = 0
    for new, before in prefill:
        prefill_tokens += new
        attn_pairs += new * (before + (new + 1) / 2)
        kv_read_tokens += before
    attn_pairs += decode_ctx_sum + num_decode
    kv_read_tokens += decode_ctx_sum
    return float(breakdown(num_tokens=prefill_tokens + num_decode, num_seqs=len(prefill) + num_decode,
                           attn_pairs=attn_pairs, kv_read_tokens=kv_read_tokens).total_s)


@dataclass(frozen=True)
class Plan:
    """A scheduled step and how long the cost model says it takes."""

    schedule: Schedule
    shape: BatchShape
    duration_s: float
    num_prefill_tokens: int
    num_decode: int


class Engine:
    """One model replica: requests in, steps planned and completed, tokens out."""

    def __init__(
        self,
        cost: StepCostModel,
        num_blocks: int,
        config: SchedulerConfig | None = None,
        block_size: int = 16,
        *,
        track_emitted: bool = True,
        stepper: Stepper = "reference",
        prefix_caching: bool = False,
    ) -> None:
        if stepper not in ("fast", "reference"):
            raise ValueError(f"unknown stepper {stepper!r}; expected 'fast' or 'reference'")
        if stepper == "fast" and track_emitted:
            raise ValueError("the fast stepper does not list emitted requests; pass track_emitted=False")
        self.cost = cost
        config = config or SchedulerConfig()
        if prefix_caching and not config.chunked_prefill:
            raise ValueError("prefix caching is modelled for the chunked-prefill (V1) scheduler only")
        self.kv = PrefixCachingAllocator(num_blocks, block_size) if prefix_caching \
            else BlockAllocator(num_blocks, block_size)
        if not config.chunked_prefill:
            stepper = "reference"  # V0's prefill-only steps have no cohort to keep
        self.stepper: Stepper = stepper
        sched_cls = (CohortScheduler if stepper == "fast" else Scheduler) if config.chunked_prefill \
            else PrefillFirstScheduler
        self.scheduler = sched_cls(config, self.kv)
        # Counters since start (the /metrics endpoint and the offline summary read these).
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.num_steps = 0
        self.busy_s = 0.0
        self.outstanding = 0  # running + waiting, kept as a counter for the router's hot path
        self.track_emitted = track_emitted

    @property
    def num_running(self) -> int:
        return self.scheduler.num_running

    @property
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting

    @property
    def num_preemptions(self) -> int:
        return self.scheduler.num_preemptions

    def add(self, req: Request) -> None:
        self.scheduler.add(req)
        self.outstanding += 1

    def abort(self, req: Request) -> bool:
        if self.scheduler.abort(req):
            self.outstanding -= 1
            return True
        return False

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def plan(self, now: float | None = None) -> Plan | None:
        """Schedule the next step; `now` (when given) stamps requests admitted for the first time."""
        sched = self.scheduler.schedule()
        if not sched:
            return None
        if now is not None:
            for req in sched.admitted:
                if req.scheduled_s < 0:
                    req.scheduled_s = now
        # A decode is the one token sampled last step; anything else (prompt chunks, the
        # recompute of a preempted request) is prefill work.
        prefill = tuple(zip(sched.prefill_new, [r.num_computed for r in sched.prefills], strict=True))
        if isinstance(sched, CohortSchedule):
            num_decode = sched.num_decode
            timed = step_time_from_totals(self.cost, prefill, num_decode, sched.decode_ctx_sum)
            if timed is None:  # a cost model that needs every context: list the cohort's
                duration = float(self.cost.step_time_s(
                    BatchShape(prefill=prefill, decode_context=self.scheduler.decode_contexts())))  # type: ignore[attr-defined]
            else:
                duration = timed
            shape = BatchShape(prefill=prefill, decode_context=())  # the cohort's contexts are not listed
        else:
            num_decode = len(sched.decodes)
            shape = BatchShape(prefill=prefill, decode_context=tuple([r.num_computed for r in sched.decodes]))
            duration = float(self.cost.step_time_s(shape))
        if not duration > 0:
            raise ValueError(f"cost model returned a non-positive step time {duration!r} for {shape}")
        return Plan(sched, shape, duration, sum(sched.prefill_new), num_decode)

    def complete(self, plan: Plan, end_s: float) -> StepOutcome:
        out = self.scheduler.update(plan.schedule, end_s, track_emitted=self.track_emitted)
        self.num_steps += 1
        self.busy_s += plan.duration_s
        self.generation_tokens_total += out.num_emitted
        self.outstanding -= len(out.finished)
        for req in out.first_token:
            self.prompt_tokens_total += req.prompt_len
        return out
