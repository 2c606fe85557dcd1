"""The decode cohort: a scheduler whose step costs O(prefills + finishes), not O(batch).

The reference `Scheduler` touches every running request every step. At the headline cluster
(390 replicas of ~300 decoding sequences, 10,000 req/s) that is ~3 million request updates per
simulated second, which is why `servelab simulate` ran slower than real time.

The fast-forward the issue suggests (closed-form runs of decode-only steps until a replica's next
event) does not pay there: each replica receives an arrival about every 40 ms and a step is about
as long, so almost every step carries a prefill and decode-only runs are one or two steps long.
What is closed-form is each *decoding request*: once its prefill is done it gets exactly one token
per step until it finishes (while no preemption happens), so after step k its computed tokens are
`computed_at_join + (k - join_step)`. This scheduler therefore keeps the decoding requests as a
cohort with running totals:

- the number of decoding requests and the sum of their contexts (all the cost model needs:
  `PerfModel.breakdown_from_totals`),
- a finish heap keyed by the step at which each request reaches its output target,
- 16 counters by `(computed - join_step) mod block_size`: the requests that need a new KV block
  in step k are exactly those in bucket `-k mod block_size`, so the block demand of the whole
  cohort is one lookup.

A request's own fields are stale while it is in the cohort; they are brought up to date
("materialised") when it finishes, or for everyone at once when the step would need the
reference's per-request logic. That happens exactly when the reference would preempt (the step's
blocks do not fit), when more requests decode than the token budget holds, or on an abort. Such a
step runs the reference `Scheduler.schedule/update` verbatim, and the cohort is rebuilt after it
when the state allows (every decoding request got its token at the last step end, and decoding
requests precede prefilling ones in the running list, which the reference keeps true: a request is
only admitted behind others after they got their whole prefill). So the results are the
reference's, step for step; tests/server/test_cohort.py checks that on runs with preemption.

Only the offline simulator uses it (it has nobody to wake per token); the real-time server keeps
the reference scheduler, which reports every emitted request.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from server.sim.kvcache import BlockAllocator
from server.sim.request import Request, Status
from server.sim.scheduler import Schedule, Scheduler, SchedulerConfig, StepOutcome, admit_waiting


@dataclass
class CohortSchedule(Schedule):
    """A step planned on the fast path: the decodes are the whole cohort, given by its totals."""

    num_decode: int = 0
    decode_ctx_sum: int = 0
    fast: bool = field(default=True)

    def __bool__(self) -> bool:
        return self.num_decode > 0 or bool(self.prefills)


class CohortScheduler(Scheduler):
    """`Scheduler` with decoding requests kept as a cohort; same results, see the module docstring."""

    def __init__(self, config: SchedulerConfig, kv: BlockAllocator) -> None:
        super().__init__(config, kv)
        self._k = 0  # steps completed
        self._fast = True  # False: the state is materialised and the next step takes the reference path
        self._dec: dict[Request, int] = {}  # cohort member -> the step count at which its fields were exact
        self._pre: list[Request] = []  # running requests still prefilling, in running order
        self._phase = [0] * kv.block_size
        self._ctx_sum = 0
        self._finish_at: list[tuple[int, int, Request]] = []  # (finish step, seq, request)

    # -- switching between the cohort and per-request state ------------------------------------------

    def _materialise(self) -> None:
        """Bring every cohort member's fields up to date and leave the fast path."""
        k, bs, last = self._k, self.block_size, self._last_end
        for req, j in self._dec.items():
            d = k - j
            if d:
                req.num_computed += d
                req.num_output += d
                req.num_blocks = -(-req.num_computed // bs)
                req.last_token_s = last
        self._dec.clear()
        self._pre.clear()
        self._phase = [0] * bs
        self._ctx_sum = 0
        self._finish_at.clear()
        self._fast = False

    def _rebuild(self) -> None:
        """After a reference step: form the cohort again if the running list allows it."""
        last, k, bs = self._last_end, self._k, self.block_size
        dec: dict[Request, int] = {}
        pre: list[Request] = []
        phase = [0] * bs
        finish: list[tuple[int, int, Request]] = []
        ctx_sum = 0
        for req in self.running:
            if req.num_output > 0 and req.num_computed == req.prompt_len + req.num_output - 1:
                if pre or req.last_token_s != last:
                    return  # a decode behind a prefill, or one that missed the last step: stay exact
                dec[req] = k
                phase[(req.num_computed - k) % bs] += 1
                ctx_sum += req.num_computed
                finish.append((k + req.output_target - req.num_output, req.seq, req))
            else:
                pre.append(req)
        heapq.heapify(finish)
        self._dec, self._pre, self._phase, self._finish_at, self._ctx_sum = dec, pre, phase, finish, ctx_sum
        self._fast = True

    def decode_contexts(self) -> tuple[int, ...]:
        """The cohort's current contexts, in running order (for cost models that need each one)."""
        k = self._k
        return tuple([req.num_computed + (k - j) for req, j in self._dec.items()])

    def abort(self, req: Request) -> bool:
        self._materialise()
        return super().abort(req)

    # -- one step --------------------------------------------------------------------------------

    def schedule(self) -> Schedule:
        if not self._fast:
            return super().schedule()
        cfg, kv, bs = self.config, self.kv, self.block_size
        budget = cfg.max_num_batched_tokens
        n_dec = len(self._dec)
        if n_dec > budget:
            self._materialise()
            return super().schedule()
        budget -= n_dec
        need_total = self._phase[-self._k % bs]
        # Running prefills (after every decode, see the module docstring): size them first, so a
        # step that would preempt is handed to the reference before anything is allocated.
        chunks: list[tuple[Request, int, int]] = []
        for req in self._pre:
            if budget <= 0:
                break
            c = req.num_computed
            n = req.prompt_len + req.num_output - c
            if n > budget:
                n = budget
            need = -(-(c + n) // bs) - req.num_blocks
            if need > 0:
                need_total += need
            chunks.append((req, n, need))
            budget -= n
        if need_total > kv.num_free:
            self._materialise()
            return super().schedule()
        kv.try_allocate(need_total)  # fits (checked above); with prefix caching this evicts in LRU order
        out = CohortSchedule(num_decode=n_dec, decode_ctx_sum=self._ctx_sum)
        prefills, prefill_new = out.prefills, out.prefill_new
        for req, n, need in chunks:
            if need > 0:
                req.num_blocks += need
            prefills.append(req)
            prefill_new.append(n)

        # Admission, as the reference does it when nothing was preempted. A waiting request never
        # has computed tokens here (only preemption puts a started request back, and that happens
        # on the reference path, which resets it), so an admitted request is a prefill, unless prefix
        # caching left a recomputed request one token short: that is a decode, listed on its own.
        for head, n in admit_waiting(kv, self.waiting, self.running, budget, cfg.max_num_seqs):
            out.admitted.append(head)
            if n == 1 and head.num_output > 0:  # cache hits left one token: a decode, as the reference has it
                out.decodes.append(head)
                out.num_decode += 1
                out.decode_ctx_sum += head.num_computed
            else:
                self._pre.append(head)
                prefills.append(head)
                prefill_new.append(n)
        return out

    def update(self, sched: Schedule, now: float, *, track_emitted: bool = True) -> StepOutcome:
        if not isinstance(sched, CohortSchedule):
            outcome = super().update(sched, now, track_emitted=track_emitted)
            self._k += 1
            self._rebuild()
            return outcome
        if track_emitted:
            raise ValueError("the cohort scheduler does not list emitted requests; use the reference")
        k = self._k = self._k + 1
        bs = self.block_size
        first: list[Request] = []
        finished: list[Request] = []
        gaps: dict[float, int] = {}
        prev = self._last_end
        n_dec = sched.num_decode - len(sched.decodes)  # the cohort; sched.decodes are admitted decodes
        same = n_dec  # every cohort member got its previous token at the previous step end
        n_emitted = n_dec
        self._ctx_sum += n_dec
        dec, phase = self._dec, self._phase

        # Cohort members that reach their output target with this step.
        heap = self._finish_at
        while heap and heap[0][0] == k:
            _, _, req = heapq.heappop(heap)
            j = dec.pop(req)
            d = k - j
            phase[(req.num_computed - j) % bs] -= 1
            req.num_computed += d
            req.num_output += d
            req.last_token_s = now
            req.num_blocks = -(-req.num_computed // bs)
            self._ctx_sum -= req.num_computed
            self._finish_req(req, now)
            finished.append(req)

        # Admitted decodes, then prefill chunks: only the chunk that reaches the end of the tokens
        # samples (reference rules). Both join the cohort unless they are done.
        done_pre = False
        kv = self.kv
        caching = kv.caching
        steps = [(req, 1, True) for req in sched.decodes]
        steps += [(req, n, False) for req, n in zip(sched.prefills, sched.prefill_new, strict=True)]
        for req, n, is_decode in steps:
            req.num_computed += n
            if caching and not is_decode:
                kv.register(req)
            if req.num_computed < req.prompt_len + req.num_output:
                continue
            done_pre = done_pre or not is_decode
            if req.num_output == 0:
                req.first_token_s = now
                first.append(req)
            elif req.last_token_s == prev:
                same += 1
            else:
                gap = now - req.last_token_s
                gaps[gap] = gaps.get(gap, 0) + 1
            req.num_output += 1
            req.last_token_s = now
            n_emitted += 1
            if req.num_output >= req.output_target:
                self._finish_req(req, now)
                finished.append(req)
            else:  # joins the cohort, exact as of step k
                dec[req] = k
                phase[(req.num_computed - k) % bs] += 1
                self._ctx_sum += req.num_computed
                heapq.heappush(heap, (k + req.output_target - req.num_output, req.seq, req))
        if done_pre:
            self._pre = [r for r in self._pre if r.status == Status.RUNNING and r not in dec]
        if same:
            gap = now - prev
            gaps[gap] = gaps.get(gap, 0) + same
        self._last_end = now
        if finished:
            running = self.running
            if len(finished) == 1:
                running.remove(finished[0])
            else:
                self.running = [r for r in running if r.status == Status.RUNNING]
        return StepOutcome([], first, finished, gaps, n_emitted)

    def _finish_req(self, req: Request, now: float) -> None:
        req.status = Status.FINISHED
        req.finish_s = now
        self.kv.release(req)
