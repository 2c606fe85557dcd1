"""Capacity planning: how many replicas and GPUs serve a request rate under a p95 latency SLO.

The answer is built from three steps, each printed with its inputs:

1. Memory (perf model): weights per GPU, activation reserve, what is left for the KV cache, for
   each tensor-parallel degree 1, 2, 4, 8 (one node). A TP degree *fits* when its KV cache holds
   at least one full sequence (input + output tokens).
2. Per-replica goodput (offline simulator): the highest Poisson arrival rate at which one replica
   still meets p95 TTFT and p95 TPOT, found by bisection between 0 and the replica's saturation
   throughput (rate=inf). Each probe is a full discrete-event simulation of the vLLM-like engine.
3. Replicas = ceil(target rate / per-replica rate); GPUs = replicas x TP. The recommendation is the
   fitting TP with the fewest GPUs (ties: the smaller TP); the smallest fitting TP is shown too.

Nothing here is fitted to the question asked: change an input and every number follows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from server import catalog
from server.perfmodel import PerfModel

TP_CANDIDATES = (1, 2, 4, 8)


@dataclass(frozen=True)
class CapacityQuery:
    model: str
    gpu: str
    target_rps: float
    input_len: int
    output_len: int
    p95_ttft_s: float
    p95_tpot_s: float
    dtype: str = "bf16"
    kv_dtype: str | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    tp: int | None = None  # None: try every candidate
    block_size: int = 16
    sim_seconds: float = 60.0  # simulated traffic per probe (bounded below and above by request counts)
    min_requests: int = 300
    max_requests: int = 3000
    bisection_steps: int = 9
    seed: int = 0


@dataclass(frozen=True)
class TpOption:
    tp: int
    fits: bool
    weight_bytes_per_gpu: int
    activation_reserve_bytes_per_gpu: int
    kv_bytes_per_gpu: int
    kv_tokens: int
    max_concurrent_seqs: int
    saturation_rps: float = 0.0
    replica_rps: float = 0.0  # highest rate meeting the SLO
    goodput_rps: float = 0.0  # requests/s meeting both SLOs at that rate
    p95_ttft_s: float = math.nan
    p95_tpot_s: float = math.nan
    replicas: int = 0
    gpus: int = 0
    probes: int = 0
    note: str = ""


@dataclass(frozen=True)
class CapacityPlan:
    query: CapacityQuery
    options: tuple[TpOption, ...]
    smallest_fitting_tp: int | None
    recommended_tp: int | None
    perf_inputs: dict[str, object] = field(default_factory=dict)

    @property
    def recommended(self) -> TpOption | None:
        return next((o for o in self.options if o.tp == self.recommended_tp), None)

    def as_dict(self) -> dict[str, object]:
        return {
            "query": asdict(self.query),
            "options": [asdict(o) for o in self.options],
            "smallest_fitting_tp": self.smallest_fitting_tp,
            "recommended_tp": self.recommended_tp,
            "perf_model": self.perf_inputs,
        }


def memory_option(q: CapacityQuery, tp: int) -> TpOption:
    pm = _perf(q, tp)
    seq_tokens = q.input_len + q.output_len
    kv_tokens = pm.kv_tokens(q.block_size)
    blocks_per_seq = math.ceil(seq_tokens / q.block_size)
    max_seqs = min(q.max_num_seqs, pm.kv_blocks(q.block_size) // blocks_per_seq)
    heads_ok = catalog.model(q.model).num_heads % tp == 0
    fits = heads_ok and max_seqs >= 1
    note = "" if heads_ok else f"{catalog.model(q.model).num_heads} attention heads do not split {tp} ways"
    if heads_ok and not fits:
        note = "no room for one sequence's KV cache"
    return TpOption(
        tp=tp,
        fits=fits,
        weight_bytes_per_gpu=pm.weight_bytes_per_gpu(),
        activation_reserve_bytes_per_gpu=pm.activation_reserve_bytes(),
        kv_bytes_per_gpu=pm.kv_budget_bytes_per_gpu(),
        kv_tokens=kv_tokens,
        max_concurrent_seqs=max(0, max_seqs),
        note=note,
    )


def _perf(q: CapacityQuery, tp: int) -> PerfModel:
    return PerfModel.build(
        q.model,
        q.gpu,
        tp=tp,
        dtype=q.dtype,
        kv_dtype=q.kv_dtype,
        gpu_memory_utilization=q.gpu_memory_utilization,
        max_num_batched_tokens=q.max_num_batched_tokens,
    )


@dataclass(frozen=True)
class _Probe:
    rate: float
    p95_ttft_s: float
    p95_tpot_s: float
    goodput_rps: float
    throughput_rps: float


def _run(q: CapacityQuery, tp: int, rate: float | None, num_requests: int) -> _Probe:
    from server.sim.offline import Workload, simulate

    pm = _perf(q, tp)
    wl = Workload(
        num_requests=num_requests,
        input_len=q.input_len,
        output_len=q.output_len,
        rate=rate,
        seed=q.seed,
    )
    res = simulate(
        wl,
        cost_model=pm,
        num_blocks=pm.kv_blocks(q.block_size),
        max_num_seqs=q.max_num_seqs,
        max_num_batched_tokens=q.max_num_batched_tokens,
        block_size=q.block_size,
    )
    s = res.summary()
    return _Probe(
        rate=rate if rate is not None else math.inf,
        p95_ttft_s=float(s["ttft_p95_s"]),
        p95_tpot_s=float(s["tpot_p95_s"]),
        goodput_rps=res.goodput(q.p95_ttft_s, q.p95_tpot_s),
        throughput_rps=float(s["request_throughput"]),
    )


def _ok(q: CapacityQuery, p: _Probe) -> bool:
    return p.p95_ttft_s <= q.p95_ttft_s and p.p95_tpot_s <= q.p95_tpot_s


def _requests_for(q: CapacityQuery, rate: float) -> int:
    return int(min(q.max_requests, max(q.min_requests, rate * q.sim_seconds)))


def replica_goodput(q: CapacityQuery, opt: TpOption) -> TpOption:
    """Bisect the Poisson rate at which one replica still meets the p95 SLO."""
    sat = _run(q, opt.tp, None, max(q.min_requests, min(q.max_requests, 4 * opt.max_concurrent_seqs)))
    probes = 1
    lo, hi = 0.0, sat.throughput_rps
    best: _Probe | None = None
    for _ in range(q.bisection_steps):
        mid = (lo + hi) / 2
        p = _run(q, opt.tp, mid, _requests_for(q, mid))
        probes += 1
        if _ok(q, p):
            lo, best = mid, p
        else:
            hi = mid
    if best is None:
        note = "misses the SLO even at the lowest rate probed"
        return _replace(opt, saturation_rps=sat.throughput_rps, probes=probes, note=note)
    replicas = math.ceil(q.target_rps / best.rate)
    return _replace(
        opt,
        saturation_rps=sat.throughput_rps,
        replica_rps=best.rate,
        goodput_rps=best.goodput_rps,
        p95_ttft_s=best.p95_ttft_s,
        p95_tpot_s=best.p95_tpot_s,
        replicas=replicas,
        gpus=replicas * opt.tp,
        probes=probes,
    )


def _replace(opt: TpOption, **changes: object) -> TpOption:
    from dataclasses import replace

    return replace(opt, **changes)  # type: ignore[arg-type]


def plan(q: CapacityQuery) -> CapacityPlan:
    if q.target_rps <= 0 or q.input_len < 1 or q.output_len < 1:
        raise ValueError("target rate, input length and output length must be positive")
    tps = (q.tp,) if q.tp else TP_CANDIDATES
    options = [memory_option(q, tp) for tp in tps]
    smallest = next((o.tp for o in options if o.fits), None)
    options = [replica_goodput(q, o) if o.fits else o for o in options]
    viable = [o for o in options if o.fits and o.gpus > 0]
    recommended = min(viable, key=lambda o: (o.gpus, o.tp)).tp if viable else None
    inputs = _perf(q, recommended or smallest or tps[0]).describe()
    return CapacityPlan(q, tuple(options), smallest, recommended, inputs)
