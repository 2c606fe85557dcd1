"""Capacity planning: how many replicas and GPUs serve a request rate under a p95 latency SLO.

The answer is built from three steps, each printed with its inputs:

1. Memory (perf model): weights per GPU, activation reserve, what is left for the KV cache, for
   each tensor-parallel degree 1, 2, 4, 8 (one node). A TP degree *fits* when its KV cache holds
   at least one full sequence (input + output tokens).
2. Per-replica goodput (offline simulator): the highest Poisson arrival rate at which one replica
   still meets p95 TTFT and p95 TPOT, found by bisection between 0 and the replica's saturation
   throughput (rate=inf). Each probe is a full discrete-event simulation of the vLLM-like engine.
3. Replicas = ceil(target rate / (target utilisation x per-replica rate)); GPUs = replicas x TP.
   The recommendation is the fitting TP with the fewest GPUs (ties: the smaller TP); the smallest
   fitting TP is shown too.

Then, for the recommended TP only:

4. At the recommended point: the prefill / decode share of GPU time, the mean batch, and the
   share of requests that met *both* targets themselves (per-request goodput; two p95s met
   separately can hide a request that missed one of them).
5. N+k: a cell of replicas at the fleet's per-replica load loses one replica (one GPU of a TP
   group takes the whole replica down; `lost_replicas` > 1 for a node holding several) with its
   streams dropped and retried (server/failover.py);
   k is the fewest spare replicas for which the requests sent during the failover window, and the
   retried ones, still meet the SLO.
6. Sensitivity: each time factor of the perf model at the ends of its documented range
   (`perfmodel.FACTOR_RANGES`), then all at once, re-sized; the spread of GPU counts is how sure
   the answer is.
7. Cost: GPUs x $/GPU-hour (server/pricing.py) -> $/month and $/M output tokens.

Nothing here is fitted to the question asked: change an input and every number follows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from server import catalog
from server.expertpar import ExpertParallelModel, Layout
from server.perfmodel import FACTOR_RANGES, V1_FACTORS, Factors, PerfModel
from server.pricing import FleetCost, default_price

if TYPE_CHECKING:
    from server.sim.scheduler import SchedulerConfig

TP_CANDIDATES = (1, 2, 4, 8)
SloBasis = Literal["p95", "per-request"]
Progress = Callable[[str], None]


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
    # p95: p95 TTFT and p95 TPOT each within target. per-request: at least `goodput_share` of the
    # requests met both targets themselves (vLLM's --goodput), which is the stricter reading.
    slo_basis: SloBasis = "p95"
    goodput_share: float = 0.95
    target_utilization: float = 0.8  # plan replicas to run at this fraction of their SLO rate
    gpu_hourly_usd: float | None = None  # None: the GPU's default in server/pricing.py
    factors: Factors = V1_FACTORS
    failover: bool = True
    failure_cell: int = 16  # replicas simulated around the one that fails (whole fleet if smaller)
    failure_at_s: float = 20.0
    failure_window_s: float = 20.0  # requests sent this long after the failure are judged
    retry_after_s: float = 0.5  # a dropped client resends after this long
    lost_replicas: int = 1  # replicas one failure takes down together (a node of two TP4 replicas: 2)
    max_spares: int = 4
    sensitivity: bool = True
    preset: str | None = None  # the preset whose engine settings these are, for the record
    # How a replica's GPUs split an MoE model (server/expertpar.py): tp slices everything; ep keeps
    # attention sliced and puts whole experts on each GPU; dp-ep replicates attention per GPU.
    layout: Layout = "tp"
    expert_skew: float = 1.0  # hottest expert's load over the mean (1 = uniform routing)


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
    good_share: float = math.nan  # share of requests meeting both targets themselves, at that rate
    p95_ttft_s: float = math.nan
    p95_tpot_s: float = math.nan
    replicas_at_slo: int = 0  # ceil(target / replica_rps): no headroom
    replicas: int = 0  # with headroom: ceil(target / (utilisation x replica_rps))
    gpus: int = 0
    probes: int = 0
    note: str = ""


@dataclass(frozen=True)
class OperatingPoint:
    """One replica at its recommended rate: where its GPU time goes and what requests see."""

    rate_rps: float
    prefill_share: float  # of GPU busy time (marginal attribution, server/failover.py)
    batch_seqs_mean: float  # sequences per step, weighted by step time
    good_share: float  # requests meeting both targets themselves
    p95_ttft_s: float
    p95_tpot_s: float


@dataclass(frozen=True)
class FailoverTrial:
    spares: int
    fleet: int  # replicas before the failure
    cell: int  # replicas simulated
    cell_rps: float
    retried: int
    p95_ttft_before_s: float
    p95_tpot_before_s: float
    p95_ttft_s: float  # requests sent in the failover window, plus every retried one
    p95_tpot_s: float
    good_share: float
    ok: bool


@dataclass(frozen=True)
class SensitivityRow:
    factor: str  # a Factors field, or "all"
    value: str
    replica_rps: float
    replicas: int
    gpus: int


@dataclass(frozen=True)
class CapacityPlan:
    query: CapacityQuery
    options: tuple[TpOption, ...]
    smallest_fitting_tp: int | None
    recommended_tp: int | None
    perf_inputs: dict[str, object] = field(default_factory=dict)
    point: OperatingPoint | None = None
    failover: tuple[FailoverTrial, ...] = ()
    spares: int | None = None  # k of N+k; None when not simulated or no k up to max_spares works
    sensitivity: tuple[SensitivityRow, ...] = ()
    usd_per_gpu_hour: float = math.nan
    price_source: str = ""

    @property
    def recommended(self) -> TpOption | None:
        return next((o for o in self.options if o.tp == self.recommended_tp), None)

    @property
    def total_replicas(self) -> int:
        """N + k: replicas with headroom plus the spares the failure simulation asked for."""
        rec = self.recommended
        return 0 if rec is None else rec.replicas + (self.spares or 0)

    @property
    def total_gpus(self) -> int:
        return self.total_replicas * (self.recommended_tp or 0)

    def cost(self) -> FleetCost | None:
        if self.recommended is None or math.isnan(self.usd_per_gpu_hour):
            return None
        q = self.query
        return FleetCost(self.total_gpus, self.usd_per_gpu_hour, q.target_rps, q.input_len, q.output_len)

    def gpu_range(self) -> tuple[int, int] | None:
        """Fewest and most GPUs (headroom, no spares) across the sensitivity rows."""
        if not self.sensitivity:
            return None
        gpus = [r.gpus for r in self.sensitivity if r.gpus]
        return (min(gpus), max(gpus)) if gpus else None

    def as_dict(self) -> dict[str, object]:
        cost = self.cost()
        return {
            "query": asdict(self.query),
            "options": [asdict(o) for o in self.options],
            "smallest_fitting_tp": self.smallest_fitting_tp,
            "recommended_tp": self.recommended_tp,
            "operating_point": asdict(self.point) if self.point else None,
            "failover": [asdict(t) for t in self.failover],
            "spares": self.spares,
            "total_replicas": self.total_replicas,
            "total_gpus": self.total_gpus,
            "sensitivity": [asdict(r) for r in self.sensitivity],
            "gpu_range": self.gpu_range(),
            "cost": cost.as_dict() if cost else None,
            "price_source": self.price_source,
            "perf_model": self.perf_inputs,
        }


def memory_option(q: CapacityQuery, tp: int) -> TpOption:
    spec = catalog.model(q.model)
    try:
        pm = _perf(q, tp)
    except ValueError as exc:  # e.g. 8 experts over 3 GPUs
        return TpOption(tp=tp, fits=False, weight_bytes_per_gpu=0, activation_reserve_bytes_per_gpu=0,
                        kv_bytes_per_gpu=0, kv_tokens=0, max_concurrent_seqs=0, note=str(exc))
    seq_tokens = q.input_len + q.output_len
    kv_tokens = pm.kv_tokens(q.block_size)
    blocks_per_seq = math.ceil(seq_tokens / q.block_size)
    max_seqs = min(q.max_num_seqs, pm.kv_blocks(q.block_size) // blocks_per_seq)
    heads_ok = q.layout == "dp-ep" or spec.num_heads % tp == 0  # dp-ep does not slice attention
    fits = heads_ok and max_seqs >= 1
    note = "" if heads_ok else f"{spec.num_heads} attention heads do not split {tp} ways"
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


def _perf(q: CapacityQuery, tp: int) -> PerfModel | ExpertParallelModel:
    pm = _perf_tp(q, tp)
    return pm if q.layout == "tp" else ExpertParallelModel(pm, q.layout, q.expert_skew)


def _perf_tp(q: CapacityQuery, tp: int) -> PerfModel:
    return PerfModel.build(
        q.model,
        q.gpu,
        tp=tp,
        dtype=q.dtype,
        kv_dtype=q.kv_dtype,
        gpu_memory_utilization=q.gpu_memory_utilization,
        max_num_batched_tokens=q.max_num_batched_tokens,
        factors=q.factors,
    )


@dataclass(frozen=True)
class _Probe:
    rate: float
    p95_ttft_s: float
    p95_tpot_s: float
    goodput_rps: float
    throughput_rps: float
    good_share: float


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
    goodput = res.goodput(q.p95_ttft_s, q.p95_tpot_s)
    return _Probe(
        rate=rate if rate is not None else math.inf,
        p95_ttft_s=float(s["ttft_p95_s"]),
        p95_tpot_s=float(s["tpot_p95_s"]),
        goodput_rps=goodput,
        throughput_rps=float(s["request_throughput"]),
        good_share=goodput * res.duration_s / num_requests,
    )


def _ok(q: CapacityQuery, p: _Probe) -> bool:
    if q.slo_basis == "per-request":
        return p.good_share >= q.goodput_share
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
    replicas = replicas_for(q.target_rps, best.rate, q.target_utilization)
    return _replace(
        opt,
        saturation_rps=sat.throughput_rps,
        replica_rps=best.rate,
        goodput_rps=best.goodput_rps,
        good_share=best.good_share,
        p95_ttft_s=best.p95_ttft_s,
        p95_tpot_s=best.p95_tpot_s,
        replicas_at_slo=replicas_for(q.target_rps, best.rate, 1.0),
        replicas=replicas,
        gpus=replicas * opt.tp,
        probes=probes,
    )


def replicas_for(target_rps: float, replica_rps: float, utilization: float) -> int:
    """Replicas so that each runs at `utilization` of the rate at which it still meets the SLO."""
    # round() first: 10000 / (0.8 * 25) is 500.00000000000006 in floating point, not 501 replicas
    return math.ceil(round(target_rps / (utilization * replica_rps), 9))


def _replace(opt: TpOption, **changes: object) -> TpOption:
    return replace(opt, **changes)  # type: ignore[arg-type]


def _validate(q: CapacityQuery) -> None:
    if q.target_rps <= 0 or q.input_len < 1 or q.output_len < 1:
        raise ValueError("target rate, input length and output length must be positive")
    if not 0 < q.target_utilization <= 1:
        raise ValueError("target utilisation must be in (0, 1]")
    if not 0 < q.goodput_share <= 1:
        raise ValueError("goodput share must be in (0, 1]")
    if q.gpu_hourly_usd is not None and q.gpu_hourly_usd < 0:
        raise ValueError("GPU price per hour must be >= 0")
    if q.expert_skew < 1:
        raise ValueError("expert skew is the hottest expert's load over the mean: >= 1")
    if q.lost_replicas < 1:
        raise ValueError("a failure loses at least one replica")


def plan(q: CapacityQuery, progress: Progress | None = None) -> CapacityPlan:
    """Size the fleet; `progress` (if given) gets one line per stage, for long runs."""
    _validate(q)
    say = progress or (lambda _msg: None)
    tps = (q.tp,) if q.tp else TP_CANDIDATES
    options = [memory_option(q, tp) for tp in tps]
    smallest = next((o.tp for o in options if o.fits), None)
    sized = []
    for o in options:
        if o.fits:
            say(f"TP{o.tp}: bisecting the SLO rate of one replica")
            o = replica_goodput(q, o)
        sized.append(o)
    viable = [o for o in sized if o.fits and o.gpus > 0]
    recommended = min(viable, key=lambda o: (o.gpus, o.tp)) if viable else None
    inputs = _perf(q, recommended.tp if recommended else (smallest or tps[0])).describe()
    if q.gpu_hourly_usd is not None:
        price, source = q.gpu_hourly_usd, "given (--gpu-hourly-usd)"
    else:
        try:
            p = default_price(q.gpu)
            price, source = p.usd_per_hour, p.source
        except KeyError:
            price, source = math.nan, "no default price for this GPU"
    result = CapacityPlan(q, tuple(sized), smallest, recommended.tp if recommended else None, inputs,
                          usd_per_gpu_hour=price, price_source=source)
    if recommended is None:
        return result
    say(f"TP{recommended.tp}: operating point at {recommended.replica_rps:.2f} req/s")
    result = replace(result, point=operating_point(q, recommended))
    if q.failover:
        trials = failover_trials(q, recommended, say)
        spares = next((t.spares for t in trials if t.ok), None)
        result = replace(result, failover=trials, spares=spares)
    if q.sensitivity:
        result = replace(result, sensitivity=sensitivity(q, recommended, say))
    return result


def _cell_engine(q: CapacityQuery, tp: int) -> tuple[PerfModel | ExpertParallelModel, int]:
    pm = _perf(q, tp)
    return pm, pm.kv_blocks(q.block_size)


def _config(q: CapacityQuery) -> SchedulerConfig:
    from server.sim.scheduler import SchedulerConfig

    return SchedulerConfig(max_num_seqs=q.max_num_seqs, max_num_batched_tokens=q.max_num_batched_tokens)


def operating_point(q: CapacityQuery, opt: TpOption) -> OperatingPoint:
    """One replica at its SLO rate, replayed with GPU-time accounting (same seed as the probe)."""
    from server.failover import run_cell
    from server.sim.offline import Workload

    pm, blocks = _cell_engine(q, opt.tp)
    wl = Workload(num_requests=_requests_for(q, opt.replica_rps), input_len=q.input_len,
                  output_len=q.output_len, rate=opt.replica_rps, seed=q.seed)
    cell = run_cell(wl, pm, blocks, config=_config(q), block_size=q.block_size)
    ttft, tpot = cell.p95()
    return OperatingPoint(opt.replica_rps, cell.prefill_share, cell.batch_seqs_mean,
                          cell.good_fraction(q.p95_ttft_s, q.p95_tpot_s), ttft, tpot)


def failover_trials(q: CapacityQuery, opt: TpOption, say: Progress) -> tuple[FailoverTrial, ...]:
    """Lose one replica of N + k (k = 0, 1, ...) until the failover window meets the SLO."""
    from server.failover import Failure, run_cell
    from server.sim.offline import Workload

    pm, blocks = _cell_engine(q, opt.tp)
    trials = []
    for k in range(q.max_spares + 1):
        fleet = opt.replicas + k
        if fleet <= q.lost_replicas:
            continue  # losing every replica is an outage, whatever the SLO
        cell = min(fleet, max(q.failure_cell, q.lost_replicas + 1))
        cell_rps = cell * q.target_rps / fleet
        say(f"N+{k}: one of {fleet} replicas fails (cell of {cell} at {cell_rps:.1f} req/s)")
        end = q.failure_at_s + q.failure_window_s
        wl = Workload(num_requests=max(1, round(cell_rps * end)), input_len=q.input_len,
                      output_len=q.output_len, rate=cell_rps, seed=q.seed)
        res = run_cell(wl, pm, blocks, replicas=cell, config=_config(q),
                       block_size=q.block_size,
                       failure=Failure(q.failure_at_s, replica=0, retry_after_s=q.retry_after_s,
                                       count=q.lost_replicas))
        window = res.mask_sent(q.failure_at_s, end) | res.retried
        before = res.mask_sent(q.failure_at_s / 2, q.failure_at_s) & ~res.retried
        ttft_b, tpot_b = res.p95(before)
        ttft, tpot = res.p95(window)
        good = res.good_fraction(q.p95_ttft_s, q.p95_tpot_s, window)
        if q.slo_basis == "per-request":
            ok = good >= q.goodput_share
        else:
            ok = ttft <= q.p95_ttft_s and tpot <= q.p95_tpot_s
        trials.append(FailoverTrial(k, fleet, cell, cell_rps, int(res.retried.sum()), ttft_b, tpot_b,
                                    ttft, tpot, good, ok))
        if ok:
            break
    return tuple(trials)


def sensitivity(q: CapacityQuery, opt: TpOption, say: Progress) -> tuple[SensitivityRow, ...]:
    """Re-size the recommended TP with each factor at the ends of its range, then all together."""
    variants: list[tuple[str, str, Factors]] = []
    for name, rng in FACTOR_RANGES.items():
        for v in (rng.low, rng.high):
            variants.append((name, f"{v:g}", replace(q.factors, **{name: v})))  # type: ignore[arg-type]
    lows = {n: r.low for n, r in FACTOR_RANGES.items()}
    highs = {n: r.high for n, r in FACTOR_RANGES.items()}
    variants.append(("all", "low", replace(q.factors, **lows)))  # type: ignore[arg-type]
    variants.append(("all", "high", replace(q.factors, **highs)))  # type: ignore[arg-type]
    rows = []
    for name, value, factors in variants:
        say(f"sensitivity: {name} = {value}")
        qv = replace(q, factors=factors)
        o = replica_goodput(qv, memory_option(qv, opt.tp))
        rows.append(SensitivityRow(name, value, o.replica_rps, o.replicas, o.gpus))
    return tuple(rows)


def query_for_preset(name: str, **kw: object) -> CapacityQuery:
    """A query that sizes the preset as it would run: its model, GPU, TP, dtype and engine limits.

    Keyword arguments set the rest (rate, lengths, SLO) and may override the preset's values.
    """
    from server.presets import preset

    p = preset(name)
    fields: dict[str, object] = {
        "model": p.model,
        "gpu": p.gpu,
        "tp": p.tp,
        "dtype": p.dtype,
        "kv_dtype": None if p.kv_cache_dtype == "auto" else p.kv_cache_dtype,
        "gpu_memory_utilization": p.gpu_memory_utilization,
        "max_num_seqs": p.max_num_seqs,
        "layout": "ep" if p.enable_expert_parallel else "tp",
        "preset": name,
        **kw,
    }
    q = CapacityQuery(**fields)  # type: ignore[arg-type]
    if q.input_len + q.output_len > p.max_model_len:
        raise ValueError(f"input + output ({q.input_len + q.output_len} tokens) exceeds preset {name}'s "
                         f"max_model_len {p.max_model_len}")
    return q
