"""A cell of replicas behind a least-loaded router, with one replica lost mid-run.

Capacity planning needs two things the plain offline run (server/sim/offline.py) does not give:

- **What a failure does.** At `Failure.at_s` one replica dies (a GPU of its tensor-parallel group
  fails, or the node): its running and waiting requests are dropped and their clients retry
  after `retry_after_s`, on the survivors, from scratch. A retried request's TTFT is counted from
  its *original* send, because that is what its user waited; its TPOT is that of the attempt
  that finished. The survivors take the dead replica's share of new traffic from then on.
- **Where GPU time goes.** Each step's time is split into decode and prefill by marginal cost:
  the decode share of a mixed step is what the step would have cost with its decodes alone
  (the perf model asked a second time), the rest is prefill. A step with only prefill chunks is
  all prefill. It also keeps the time-weighted mean batch (sequences per step).

It drives the same `Engine` (scheduler, paged KV cache, perf model) the offline simulator and the
real-time server use, with the same event loop shape; it is a separate loop because dropping a
replica and re-sending its requests is not something a benchmark replay does. Metrics follow
vLLM's benchmark: TTFT = first token - send, TPOT = (last - first) / (output tokens - 1).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from server.perfmodel import BatchShape
from server.sim.engine import Engine, Plan, StepCostModel
from server.sim.offline import Workload
from server.sim.request import Request
from server.sim.scheduler import SchedulerConfig


@dataclass(frozen=True)
class Failure:
    """Replicas `replica` .. `replica + count - 1` die at `at_s`; their clients resend after `retry_after_s`.

    `count` > 1 is a failure domain bigger than one replica: a node of 8 GPUs holds two TP4
    replicas, and losing the node (power, NIC, host) loses both.
    """

    at_s: float
    replica: int = 0
    retry_after_s: float = 0.5
    count: int = 1

    def __post_init__(self) -> None:
        if self.at_s < 0 or self.retry_after_s < 0:
            raise ValueError("failure time and retry delay must be >= 0")
        if self.count < 1:
            raise ValueError("a failure loses at least one replica")

    @property
    def lost(self) -> range:
        return range(self.replica, self.replica + self.count)


@dataclass(frozen=True)
class CellResult:
    """Per-request arrays (request order) and GPU-time totals of one cell run (seconds)."""

    send_s: np.ndarray
    ttft: np.ndarray
    e2e: np.ndarray
    tpot: np.ndarray  # NaN for one-token outputs
    retried: np.ndarray  # bool: dropped by the failure and resent
    prefill_s: float
    decode_s: float
    batch_seqs_mean: float  # sequences per step, weighted by step time
    duration_s: float
    replicas: int

    @property
    def prefill_share(self) -> float:
        busy = self.prefill_s + self.decode_s
        return self.prefill_s / busy if busy else 0.0

    def mask_sent(self, start_s: float, end_s: float = math.inf) -> np.ndarray:
        return (self.send_s >= start_s) & (self.send_s < end_s)

    def p95(self, mask: np.ndarray | None = None) -> tuple[float, float]:
        """(p95 TTFT, p95 TPOT) over the selected requests."""
        m = np.ones(self.ttft.size, dtype=bool) if mask is None else mask
        if not m.any():
            return math.nan, math.nan
        tpot = self.tpot[m]
        tpot = tpot[~np.isnan(tpot)]
        return float(np.percentile(self.ttft[m], 95)), float(np.percentile(tpot, 95)) if tpot.size else 0.0

    def good_fraction(self, ttft_slo_s: float, tpot_slo_s: float, mask: np.ndarray | None = None) -> float:
        """Share of requests that met both targets *themselves* (vLLM's --goodput rule)."""
        m = np.ones(self.ttft.size, dtype=bool) if mask is None else mask
        if not m.any():
            return math.nan
        ok = (self.ttft[m] <= ttft_slo_s) & ~(self.tpot[m] > tpot_slo_s)  # NaN TPOT (1 token) passes
        return float(ok.mean())


def run_cell(
    workload: Workload,
    cost: StepCostModel,
    num_blocks: int,
    *,
    replicas: int = 1,
    config: SchedulerConfig | None = None,
    block_size: int = 16,
    failure: Failure | None = None,
) -> CellResult:
    """Play `workload` through `replicas` engines; optionally lose one (see the module docstring)."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    if failure is not None and not (failure.replica >= 0 and failure.lost.stop < replicas + 1
                                    and replicas > failure.count):
        raise ValueError("a failure needs a survivor and valid replica indices")
    cfg = config or SchedulerConfig()
    engines = [Engine(cost, num_blocks, cfg, block_size, track_emitted=False) for _ in range(replicas)]
    alive = [True] * replicas
    busy = [False] * replicas
    on_replica: list[dict[int, Request]] = [{} for _ in range(replicas)]
    send_times, ins, outs = workload.generate()
    n = workload.num_requests
    ins_l, outs_l = ins.tolist(), outs.tolist()
    send = send_times.astype(float)
    ttft = np.zeros(n)
    e2e = np.zeros(n)
    tpot = np.full(n, np.nan)
    retried = np.zeros(n, dtype=bool)

    sends: list[tuple[float, int]] = [(float(t), i) for i, t in enumerate(send)]
    heapq.heapify(sends)
    in_flight: list[tuple[float, int, int, Plan]] = []  # (end, seq, replica, plan)
    seq = 0
    fail_at = failure.at_s if failure is not None else math.inf
    prefill_s = decode_s = seq_area = 0.0
    done = 0
    last_end = 0.0

    while done < n:
        t_send = sends[0][0] if sends else math.inf
        t_step = in_flight[0][0] if in_flight else math.inf
        t = min(t_send, t_step, fail_at)
        if t == math.inf:
            raise RuntimeError("cell stalled: no step in flight and nothing to send")
        if t == fail_at and failure is not None:  # replicas die: drop their work, clients retry
            for r in failure.lost:
                alive[r] = False
                for i in on_replica[r]:
                    retried[i] = True
                    heapq.heappush(sends, (t + failure.retry_after_s, i))
                on_replica[r].clear()
            fail_at = math.inf
            continue
        while in_flight and in_flight[0][0] <= t:
            end, _, r, plan = heapq.heappop(in_flight)
            busy[r] = False
            if not alive[r]:
                continue  # the step died with its replica
            out = engines[r].complete(plan, end)
            for req in out.finished:
                i = int(req.req_id)
                del on_replica[r][i]
                ttft[i] = req.first_token_s - send[i]
                e2e[i] = req.finish_s - send[i]
                if req.num_output > 1:
                    tpot[i] = (req.finish_s - req.first_token_s) / (req.num_output - 1)
                last_end = max(last_end, end)
            done += len(out.finished)
        while sends and sends[0][0] <= t:
            _, i = heapq.heappop(sends)
            live = [r for r in range(replicas) if alive[r]]
            r = min(live, key=lambda k: engines[k].outstanding)
            req = Request(str(i), ins_l[i], outs_l[i], arrival_s=t)
            engines[r].add(req)
            on_replica[r][i] = req
        for r in range(replicas):
            if busy[r] or not alive[r] or not engines[r].has_work():
                continue
            step = engines[r].plan()
            if step is None:
                continue
            busy[r] = True
            seq += 1
            heapq.heappush(in_flight, (t + step.duration_s, seq, r, step))
            d, shape = step.duration_s, step.shape
            seq_area += d * shape.num_seqs
            if not shape.prefill:
                decode_s += d
            elif not shape.decode_context:
                prefill_s += d
            else:
                alone = cost.step_time_s(BatchShape((), shape.decode_context))
                decode_s += min(d, alone)
                prefill_s += max(0.0, d - alone)
    busy_total = prefill_s + decode_s
    return CellResult(
        send_s=send, ttft=ttft, e2e=e2e, tpot=tpot, retried=retried,
        prefill_s=prefill_s, decode_s=decode_s,
        batch_seqs_mean=seq_area / busy_total if busy_total else 0.0,
        duration_s=last_end - float(send.min()), replicas=replicas,
    )
