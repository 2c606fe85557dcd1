"""A continuous-batching scheduler shaped like vLLM V1's.

Every step gets a token budget (`max_num_batched_tokens`) and a sequence cap (`max_num_seqs`).
Following vLLM V1 (`vllm/v1/core/sched/scheduler.py`):

1. Running requests go first, in order. Each asks for `num_tokens - num_computed` tokens (one for a
   decode, the rest of its prompt for a prefill), clipped to the budget left: this is chunked
   prefill. If its KV blocks cannot be allocated, the scheduler preempts by recompute: it frees all
   blocks of the newest running request (FCFS) or of the lowest-priority one (priority policy:
   largest `(priority, arrival)`), resets it to zero computed tokens and puts it back at the front
   of the waiting queue; it repeats until the allocation fits or the request preempted itself.
2. Only if nothing was preempted this step, waiting requests are admitted in queue order (FCFS, or
   lowest `priority` value first, then arrival) while budget, sequence cap and free blocks allow;
   the head of the queue blocks the ones behind it, as in vLLM.

After the model "runs", `update` advances each scheduled request's computed tokens; a request whose
computed tokens reach its token count samples one new token (the last prefill chunk samples the
first token). Reaching `output_target` finishes the request and frees its blocks.

Pure logic: time only enters through the `now` argument of `update`.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from server.sim.kvcache import BlockAllocator
from server.sim.request import Request, Status

Policy = Literal["fcfs", "priority"]


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    policy: Policy = "fcfs"
    # False: vLLM V0's default (prefill-only steps of whole prompts; server/sim/scheduler_v0.py)
    chunked_prefill: bool = True

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if self.policy not in ("fcfs", "priority"):
            raise ValueError(f"unknown scheduling policy {self.policy!r}")


@dataclass
class Schedule:
    """What one step computes: decoding requests (one token each) and prefill chunks.

    Kept as two lists because the engine treats them differently (the cost model takes decode
    contexts and prefill chunks separately) and the decode path is the hot loop of the simulator.
    """

    decodes: list[Request] = field(default_factory=list)
    prefills: list[Request] = field(default_factory=list)
    prefill_new: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    admitted: list[Request] = field(default_factory=list)  # moved from waiting to running this step

    @property
    def reqs(self) -> list[Request]:
        return self.decodes + self.prefills

    @property
    def num_new(self) -> list[int]:
        return [1] * len(self.decodes) + self.prefill_new

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(self.prefill_new)

    def __bool__(self) -> bool:
        return bool(self.decodes) or bool(self.prefills)

    def _unschedule(self, req: Request) -> int:
        """Remove `req` from this step; returns the tokens it had been given."""
        if req in self.decodes:
            self.decodes.remove(req)
            return 1
        k = self.prefills.index(req)
        del self.prefills[k]
        return self.prefill_new.pop(k)


@dataclass
class StepOutcome:
    """Tokens sampled at the end of a step.

    `itl_gaps` maps a gap between a request's previous token and this one (seconds) to how many
    requests had it: most requests in a step share one gap, so this stays tiny without one Python
    object per token.
    """

    emitted: list[Request]
    first_token: list[Request]
    finished: list[Request]
    itl_gaps: dict[float, int]
    num_emitted: int = 0


class _WaitingQueue:
    """FCFS deque or priority heap with lazy deletion (aborted requests are skipped when met)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._fifo: deque[Request] = deque()
        self._heap: list[tuple[int, float, int, Request]] = []
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, req: Request) -> None:
        if self.policy == "fcfs":
            self._fifo.append(req)
        else:
            heapq.heappush(self._heap, (req.priority, req.arrival_s, req.seq, req))
        self._live += 1

    def push_front(self, req: Request) -> None:
        """A preempted request goes back first (FCFS); the heap orders it by priority anyway."""
        if self.policy == "fcfs":
            self._fifo.appendleft(req)
            self._live += 1
        else:
            self.push(req)

    def _drop_dead(self) -> None:
        if self.policy == "fcfs":
            while self._fifo and self._fifo[0].finished:
                self._fifo.popleft()
        else:
            while self._heap and self._heap[0][3].finished:
                heapq.heappop(self._heap)

    def peek(self) -> Request | None:
        self._drop_dead()
        if self.policy == "fcfs":
            return self._fifo[0] if self._fifo else None
        return self._heap[0][3] if self._heap else None

    def pop(self) -> Request:
        self._drop_dead()
        self._live -= 1
        if self.policy == "fcfs":
            return self._fifo.popleft()
        return heapq.heappop(self._heap)[3]

    def forget(self, req: Request) -> None:
        """Account for a request that was aborted while waiting (its entry is skipped later)."""
        self._live -= 1


class Scheduler:
    """Continuous batching over a paged KV cache; see the module docstring for the rules."""

    def __init__(self, config: SchedulerConfig, kv: BlockAllocator) -> None:
        self.config = config
        self.kv = kv
        self.block_size = kv.block_size
        self.waiting = _WaitingQueue(config.policy)
        self.running: list[Request] = []
        self.num_preemptions = 0
        self._seq = 0
        self._last_end = -1.0  # end time of the previous step (most tokens' previous token)

    # -- intake -----------------------------------------------------------------------------------

    def add(self, req: Request) -> None:
        max_blocks = -(-(req.prompt_len + req.output_target) // self.block_size)
        if max_blocks > self.kv.num_blocks:
            raise ValueError(
                f"request {req.req_id} needs up to {max_blocks} KV blocks but the cache has"
                f" {self.kv.num_blocks}; it could never run"
            )
        req.seq = self._seq
        self._seq += 1
        req.status = Status.WAITING
        self.waiting.push(req)

    def abort(self, req: Request) -> bool:
        """Drop a request wherever it is and free its blocks. False if it had already finished."""
        if req.finished:
            return False
        if req.status == Status.RUNNING:
            self.running.remove(req)
        else:
            self.waiting.forget(req)
        self.kv.release(req)
        req.status = Status.ABORTED
        return True

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    # -- one step ---------------------------------------------------------------------------------

    def _preempt(self, victim: Request) -> None:
        self.kv.release(victim)  # with prefix caching its full blocks stay cached for the recompute
        victim.num_computed = 0
        victim.status = Status.PREEMPTED
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.push_front(victim)

    def _victim(self) -> tuple[Request, int]:
        """The running request to preempt: the newest (FCFS) or the lowest priority, and its index."""
        running = self.running
        if self.config.policy == "priority":
            victim = max(running, key=_priority_key)
            return victim, running.index(victim)
        return running[-1], len(running) - 1

    def _preempt_until_fits(self, req: Request, need: int, i: int, out: Schedule) -> tuple[bool, int, int]:
        """Preempt victims until `need` blocks fit for `req` (= running[i]); shared by both schedulers.

        Returns whether `req` is still running, the tokens handed back by victims that had already
        been scheduled this step (priority policy only), and `req`'s new index in `running`.
        """
        returned = 0
        while not self.kv.try_allocate(need):
            victim, vi = self._victim()
            self.running.pop(vi)
            if vi < i:
                returned += out._unschedule(victim)
                i -= 1
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is req:
                return False, returned, i
        return True, returned, i

    def schedule(self) -> Schedule:
        cfg = self.config
        kv = self.kv
        bs = self.block_size
        budget = cfg.max_num_batched_tokens
        out = Schedule()
        decodes, prefills, prefill_new = out.decodes, out.prefills, out.prefill_new
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            c = req.num_computed
            n = req.prompt_len + req.num_output - c
            if n > budget:
                n = budget
            need = -(-(c + n) // bs) - req.num_blocks
            if need > 0 and not kv.try_allocate(need):
                fits, returned, i = self._preempt_until_fits(req, need, i, out)
                budget += returned
                if not fits:
                    break
            if need > 0:
                req.num_blocks += need
            if n == 1 and req.num_output > 0:
                decodes.append(req)
            else:
                prefills.append(req)
                prefill_new.append(n)
            budget -= n
            i += 1

        if not out.preempted:
            for head, n in admit_waiting(kv, self.waiting, running, budget, cfg.max_num_seqs):
                out.admitted.append(head)
                if n == 1 and head.num_output > 0:
                    decodes.append(head)
                else:
                    prefills.append(head)
                    prefill_new.append(n)
        return out

    def update(self, sched: Schedule, now: float, *, track_emitted: bool = True) -> StepOutcome:
        """Apply a computed step that ended at `now`: advance, sample, finish.

        `track_emitted=False` skips building the list of requests that got a token (the offline
        simulator has nobody to wake), which is most of the per-token cost.
        """
        emitted: list[Request] = []
        first: list[Request] = []
        finished: list[Request] = []
        gaps: dict[float, int] = {}
        running_ = Status.RUNNING
        prev = self._last_end
        same = 0
        n_emitted = 0
        # Decodes: exactly one new token each, so every one samples. The hot loop.
        for req in sched.decodes:
            if req.status != running_:
                continue  # aborted while the step ran
            req.num_computed += 1
            last = req.last_token_s
            if last == prev:
                same += 1  # the common case: it also got a token at the end of the previous step
            else:
                gap = now - last
                gaps[gap] = gaps.get(gap, 0) + 1
            req.last_token_s = now
            req.num_output += 1
            n_emitted += 1
            if req.num_output >= req.output_target:
                self._finish(req, now)
                finished.append(req)
        if track_emitted:
            emitted.extend(r for r in sched.decodes if r.last_token_s == now)
        # Prefill chunks: only the one that reaches the end of the tokens samples.
        caching = self.kv.caching
        for req, n in zip(sched.prefills, sched.prefill_new, strict=True):
            if req.status != running_:
                continue
            req.num_computed += n
            if caching:
                self.kv.register(req)
            if req.num_computed < req.prompt_len + req.num_output:
                continue
            if req.num_output == 0:
                req.first_token_s = now
                first.append(req)
            else:
                last = req.last_token_s
                if last == prev:
                    same += 1
                else:
                    gap = now - last
                    gaps[gap] = gaps.get(gap, 0) + 1
            req.num_output += 1
            req.last_token_s = now
            n_emitted += 1
            if track_emitted:
                emitted.append(req)
            if req.num_output >= req.output_target:
                self._finish(req, now)
                finished.append(req)
        if same:
            gap = now - prev
            gaps[gap] = gaps.get(gap, 0) + same
        self._last_end = now
        if finished:
            self.running = [r for r in self.running if r.status == running_]
        return StepOutcome(emitted, first, finished, gaps, n_emitted)

    def _finish(self, req: Request, now: float) -> None:
        req.status = Status.FINISHED
        req.finish_s = now
        self.kv.release(req)


def admit_waiting(
    kv: BlockAllocator, waiting: _WaitingQueue, running: list[Request], budget: int, max_seqs: int
) -> list[tuple[Request, int]]:
    """Move requests from the head of `waiting` into `running` while the step's token budget, the
    KV blocks and the batch seats last; each admitted request with its new-token count, in order.

    The one admission loop of both steppers (this reference and server/sim/cohort.py), so the fast
    one cannot drift from the reference it must equal.
    """
    admitted: list[tuple[Request, int]] = []
    while budget > 0 and len(waiting) > 0 and len(running) < max_seqs:
        head = waiting.peek()
        if head is None:
            break
        n = admit_tokens(kv, head, budget)
        if n == 0:
            break
        waiting.pop()
        head.status = Status.RUNNING
        running.append(head)
        admitted.append((head, n))
        budget -= n
    return admitted


def admit_tokens(kv: BlockAllocator, head: Request, budget: int) -> int:
    """Take the blocks for `head`'s first step out of the waiting queue; its token count, 0 if none fit.

    With prefix caching a request that has computed nothing yet first looks up its leading blocks:
    the hits become its computed prefix (vLLM's `get_computed_blocks`), and only the rest is
    scheduled. Nothing is taken when the revived hits plus the new blocks do not fit.
    """
    bs = kv.block_size
    c = head.num_computed
    hit = revive = 0
    if kv.caching and c == 0:
        hit, revive = kv.match(head)
        c = hit * bs
    n = head.prompt_len + head.num_output - c
    if n > budget:
        n = budget
    need = -(-(c + n) // bs) - (hit if hit else head.num_blocks)
    if need + revive > kv.num_free:
        return 0
    if kv.caching and head.num_computed == 0:
        if hit:
            kv.take_hits(head, hit)
        if head.num_preemptions == 0:
            head.num_cached_tokens = min(hit * bs, head.prompt_len)
            kv.count_query(head, hit)
    if need > 0:
        kv.try_allocate(need)
        head.num_blocks += need
    return n


def _priority_key(r: Request) -> tuple[int, float, int]:
    return (r.priority, r.arrival_s, r.seq)
