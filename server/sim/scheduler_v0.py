"""vLLM V0's default scheduler, the one that ran when chunked prefill was off (vLLM <= 0.6 default).

Published measurements of older vLLM (0.5.x) were taken with this policy, so the simulator keeps
it as a named alternative to the V1-like `Scheduler` (select it with `chunked_prefill=False`).
Following `vllm/core/scheduler.py::_schedule_default`:

1. Prefills first: whole prompts from the head of the waiting queue while they fit the token budget,
   the sequence cap and the free KV blocks minus a 1% watermark (V0's block manager keeps that
   reserve). If any prefill was scheduled, the step is prefill-only: running requests wait.
2. Otherwise one decode token for every running request; a request that needs a block that is not
   there preempts (recompute) the newest running request, or the lowest-priority one, exactly as
   the V1 scheduler does.

Without chunking a prompt must fit one step, so a request longer than `max_num_batched_tokens` is
refused (vLLM V0 requires max_num_batched_tokens >= max_model_len for the same reason).
"""

from __future__ import annotations

from server.sim.request import Request, Status
from server.sim.scheduler import Schedule, Scheduler

WATERMARK = 0.01


class PrefillFirstScheduler(Scheduler):
    def add(self, req: Request) -> None:
        longest = req.prompt_len + req.output_target
        if longest > self.config.max_num_batched_tokens:
            raise ValueError(
                f"request {req.req_id} can reach {longest} tokens but max_num_batched_tokens is"
                f" {self.config.max_num_batched_tokens}; without chunked prefill a (re)computed prompt"
                " must fit one step"
            )
        super().add(req)

    def schedule(self) -> Schedule:
        cfg, kv, bs = self.config, self.kv, self.block_size
        out = Schedule()
        running, waiting = self.running, self.waiting
        budget = cfg.max_num_batched_tokens
        watermark = int(WATERMARK * kv.num_blocks)

        while len(waiting) > 0 and len(running) < cfg.max_num_seqs:
            head = waiting.peek()
            if head is None:
                break
            n = head.prompt_len + head.num_output - head.num_computed
            if n > budget:
                break
            need = -(-(head.num_computed + n) // bs) - head.num_blocks
            if kv.num_free - need < watermark or not kv.try_allocate(need):
                break
            waiting.pop()
            head.num_blocks += need
            head.status = Status.RUNNING
            running.append(head)
            out.admitted.append(head)
            out.prefills.append(head)
            out.prefill_new.append(n)
            budget -= n
        if out.prefills:
            return out

        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            need = -(-(req.num_computed + 1) // bs) - req.num_blocks
            if need > 0 and not kv.try_allocate(need):
                fits, returned, i = self._preempt_until_fits(req, need, i, out)
                budget += returned
                if not fits:
                    break
            if need > 0:
                req.num_blocks += need
            out.decodes.append(req)
            budget -= 1
            i += 1
        return out
