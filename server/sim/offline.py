"""Offline mode: the engine on a discrete-event clock, K replicas behind a least-loaded router.

Nothing sleeps. Events are request dispatches and step completions; the clock jumps to the next
one. At each event time the loop (1) completes every step that ends then, (2) dispatches every
request whose time has come, each to the replica with the fewest outstanding (running + waiting)
requests, and (3) starts a step on every idle replica that has work. Arrivals are all at t=0
(`rate=inf` / None) or Poisson at `rate` per second; with `concurrency=N` at most N requests are
outstanding (the closed loop of vLLM's `--max-concurrency`: a request waits for a free slot and its
clock starts when it is sent, as the benchmark client measures it).

Metrics follow vLLM's benchmark_serving / `vllm bench serve`: TTFT = first token - send time;
TPOT = (e2e - ttft) / (output_tokens - 1), requests with one output token excluded; ITL pools every
gap between consecutive tokens of every request; E2E = last token - send time; throughput divides
by the time from the first send to the last completion. Percentiles are numpy's linear ones.

Offline requests always produce exactly their output length (the benchmark's `ignore_eos`).
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.sim.engine import Engine, Plan, StepCostModel, Stepper
from server.sim.lengths import LengthDist
from server.sim.prefixwork import PrefixSpec
from server.sim.request import BlockChain, Request
from server.sim.routing import RouterKind, make_router
from server.sim.scheduler import Policy, SchedulerConfig

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Workload:
    num_requests: int
    input_len: int | LengthDist | str = 1024
    output_len: int | LengthDist | str = 128
    rate: float | None = None  # requests/s, Poisson; None or inf = all at t=0
    concurrency: int | None = None  # closed-loop cap on outstanding requests
    seed: int = 0
    # Shared prefixes (server/sim/prefixwork.py): input_len is then each request's own part (the
    # question, or a chat turn's new user message); the shared context comes on top.
    prefix: PrefixSpec | None = None

    def __post_init__(self) -> None:
        if self.num_requests < 1:
            raise ValueError("num_requests must be at least 1")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be positive (or None/inf for all at t=0)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")

    @property
    def input_dist(self) -> LengthDist:
        return self.input_len if isinstance(self.input_len, LengthDist) else LengthDist.parse(self.input_len)

    @property
    def output_dist(self) -> LengthDist:
        out = self.output_len
        return out if isinstance(out, LengthDist) else LengthDist.parse(out)

    def describe(self) -> dict[str, object]:
        return {
            "num_requests": self.num_requests,
            "input_len": self.input_dist.spec(),
            "output_len": self.output_dist.spec(),
            "rate": "inf" if self.rate is None or math.isinf(self.rate) else self.rate,
            "concurrency": self.concurrency,
            "seed": self.seed,
            **({"prefix": self.prefix.describe()} if self.prefix is not None else {}),
        }

    def prepare(
        self, block_size: int = 16
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[BlockChain] | None]:
        """`generate()` plus each request's block chain (None without shared prefixes)."""
        if self.prefix is None:
            return (*self.generate(), None)
        rate = None if self.rate is None or math.isinf(self.rate) else self.rate
        p = self.prefix.prepare(self.num_requests, rate, self.input_dist, self.output_dist, self.seed,
                                block_size)
        return p.send_s, p.input_lens, p.output_lens, p.chains

    def generate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(send times, prompt lengths, output lengths), seeded."""
        if self.prefix is not None:
            send, ins, outs, _ = self.prepare()
            return send, ins, outs
        rng = np.random.default_rng(self.seed)
        n = self.num_requests
        ins = self.input_dist.sample(rng, n)
        outs = self.output_dist.sample(rng, n)
        if self.rate is None or math.isinf(self.rate):
            times = np.zeros(n)
        else:
            times = np.cumsum(rng.exponential(1.0 / self.rate, size=n))
            times -= times[0]  # the first request is sent at t=0, as the benchmark does
        return times, ins, outs


def weighted_percentiles(values: np.ndarray, counts: np.ndarray, ps: tuple[int, ...]) -> list[float]:
    """np.percentile (linear) of the multiset where values[i] occurs counts[i] times."""
    if values.size == 0:
        return [float("nan")] * len(ps)
    order = np.argsort(values)
    v = values[order]
    c = np.cumsum(counts[order])
    total = int(c[-1])
    res = []
    for p in ps:
        rank = p / 100 * (total - 1)
        lo, hi = math.floor(rank), math.ceil(rank)
        vlo = v[np.searchsorted(c, lo, side="right")]
        vhi = v[np.searchsorted(c, hi, side="right")]
        res.append(float(vlo + (vhi - vlo) * (rank - lo)))
    return res


@dataclass(frozen=True)
class SimResult:
    """Per-request latencies (seconds, arrays in request order) and run-wide figures.

    `kv_usage_mean` is the mean fraction of KV blocks in use, weighted by step duration over all
    replicas' steps (idle time excluded); `kv_usage_max` the highest fraction any step started with.
    `summary()` keys: {ttft,tpot,itl,e2e}_{mean,p50,p95,p99}_s, request_throughput (req/s),
    output_throughput and total_token_throughput (tok/s), duration_s, num_requests, mean_input_len,
    mean_output_len, kv_usage_mean, kv_usage_max, preemptions, num_blocks, steps, wall_s.
    """

    ttft: np.ndarray
    e2e: np.ndarray
    output_lens: np.ndarray
    input_lens: np.ndarray
    itl_values: np.ndarray
    itl_counts: np.ndarray
    duration_s: float
    preemptions: int
    kv_usage_mean: float
    kv_usage_max: float
    num_blocks: int
    steps: int
    wall_s: float
    inputs: dict[str, object] = field(default_factory=dict)
    prefix_hit_rate: float = float("nan")  # cached / admitted prompt tokens, with prefix caching on

    @property
    def tpot(self) -> np.ndarray:
        mask = self.output_lens > 1
        return (self.e2e[mask] - self.ttft[mask]) / (self.output_lens[mask] - 1)

    def goodput(self, slo_ttft_s: float | None = None, slo_tpot_s: float | None = None) -> float:
        """Requests per second that met every given SLO (vLLM's --goodput definition)."""
        ok = np.ones(self.ttft.size, dtype=bool)
        if slo_ttft_s is not None:
            ok &= self.ttft <= slo_ttft_s
        if slo_tpot_s is not None:
            tpot = np.zeros(self.ttft.size)
            mask = self.output_lens > 1
            tpot[mask] = (self.e2e[mask] - self.ttft[mask]) / (self.output_lens[mask] - 1)
            ok &= tpot <= slo_tpot_s
        return float(ok.sum()) / self.duration_s

    def summary(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "num_requests": int(self.ttft.size),
            "duration_s": self.duration_s,
            "request_throughput": self.ttft.size / self.duration_s,
            "output_throughput": float(self.output_lens.sum()) / self.duration_s,
            "total_token_throughput": float(self.output_lens.sum() + self.input_lens.sum()) / self.duration_s,
            "mean_input_len": float(self.input_lens.mean()),
            "mean_output_len": float(self.output_lens.mean()),
        }
        for name, arr in (("ttft", self.ttft), ("tpot", self.tpot), ("e2e", self.e2e)):
            if arr.size:
                out[f"{name}_mean_s"] = float(arr.mean())
                for p, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES), strict=True):
                    out[f"{name}_p{p}_s"] = float(v)
            else:
                out[f"{name}_mean_s"] = float("nan")
                for p in PERCENTILES:
                    out[f"{name}_p{p}_s"] = float("nan")
        n_itl = int(self.itl_counts.sum())
        itl_sum = float((self.itl_values * self.itl_counts).sum())
        out["itl_mean_s"] = itl_sum / n_itl if n_itl else float("nan")
        for p, v in zip(PERCENTILES, weighted_percentiles(self.itl_values, self.itl_counts, PERCENTILES),
                        strict=True):
            out[f"itl_p{p}_s"] = v
        out.update(
            kv_usage_mean=self.kv_usage_mean,
            kv_usage_max=self.kv_usage_max,
            preemptions=self.preemptions,
            num_blocks=self.num_blocks,
            steps=self.steps,
            wall_s=self.wall_s,
        )
        if not math.isnan(self.prefix_hit_rate):
            out["prefix_cache_hit_rate"] = self.prefix_hit_rate
        return out


def build_cost_model(
    model: str, gpu: str, tp: int = 1, dtype: str = "bf16", kv_dtype: str | None = None,
    gpu_memory_utilization: float = 0.9, block_size: int = 16, max_num_batched_tokens: int = 8192,
) -> tuple[StepCostModel, int, dict[str, object]]:
    """The catalog's roofline for model on gpu: (cost model, KV blocks per replica, its description)."""
    from server.perfmodel import PerfModel

    pm = PerfModel.build(model, gpu, tp=tp, dtype=dtype, kv_dtype=kv_dtype,
                         gpu_memory_utilization=gpu_memory_utilization,
                         max_num_batched_tokens=max_num_batched_tokens)
    blocks = pm.kv_blocks(block_size)
    if blocks < 1:
        raise ValueError(f"{model} does not fit on {tp}x {gpu} in {dtype}: no memory left for KV cache")
    return pm, blocks, pm.describe()


def simulate(
    workload: Workload,
    model: str = "mixtral-8x7b",
    gpu: str = "h100",
    tp: int = 1,
    dtype: str = "bf16",
    *,
    kv_dtype: str | None = None,
    gpu_memory_utilization: float = 0.9,
    replicas: int = 1,
    max_num_seqs: int = 1024,
    max_num_batched_tokens: int = 8192,
    policy: Policy = "fcfs",
    chunked_prefill: bool = True,
    block_size: int = 16,
    cost_model: StepCostModel | None = None,
    num_blocks: int | None = None,
    stepper: Stepper = "fast",
    prefix_caching: bool = False,
    router: RouterKind = "least-loaded",
) -> SimResult:
    """Play `workload` through `replicas` engines and measure it like vLLM's benchmark would.

    Pass `cost_model` (and `num_blocks`, or a cost model with `kv_blocks(block_size)`) to bypass
    the catalog; otherwise the roofline of `model` on `tp` x `gpu` in `dtype` is used.
    `stepper="reference"` updates every request every step (server/sim/scheduler.py); the default
    "fast" keeps decoding requests as a cohort (server/sim/cohort.py) with the same results.
    `prefix_caching` turns on vLLM's automatic prefix caching in every replica
    (server/sim/prefixcache.py); `router` picks the cluster routing policy (server/sim/routing.py).
    """
    wall0 = time.perf_counter()
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    inputs: dict[str, Any] = {"workload": workload.describe()}
    if cost_model is None:
        cost_model, blocks, described = build_cost_model(
            model, gpu, tp, dtype, kv_dtype, gpu_memory_utilization, block_size, max_num_batched_tokens)
        inputs.update(model=model, gpu=gpu, tp=tp, dtype=dtype, kv_dtype=kv_dtype,
                      gpu_memory_utilization=gpu_memory_utilization, perf_model=described)
    else:
        if num_blocks is None:
            kv_blocks = getattr(cost_model, "kv_blocks", None)
            if kv_blocks is None:
                raise ValueError("a custom cost_model needs num_blocks (or a kv_blocks(block_size) method)")
            num_blocks = int(kv_blocks(block_size))
        blocks = num_blocks
        inputs.update(cost_model=repr(cost_model))
    if num_blocks is not None:
        blocks = num_blocks
    inputs.update(replicas=replicas, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                  policy=policy, chunked_prefill=chunked_prefill, block_size=block_size,
                  kv_blocks_per_replica=blocks, stepper=stepper, prefix_caching=prefix_caching,
                  router=router)

    cfg = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                          policy=policy, chunked_prefill=chunked_prefill)
    engines = [Engine(cost_model, blocks, cfg, block_size, track_emitted=False, stepper=stepper,
                      prefix_caching=prefix_caching) for _ in range(replicas)]
    route = make_router(router, engines)
    send_times, in_lens, out_lens, chains = workload.prepare(block_size)
    n = workload.num_requests
    send = send_times.tolist()
    ins = in_lens.tolist()
    outs = out_lens.tolist()
    cap = workload.concurrency if workload.concurrency is not None else n

    sent_at = np.zeros(n)
    ttft = np.zeros(n)
    e2e = np.zeros(n)
    itl: dict[float, int] = {}
    in_flight: list[tuple[float, int, Plan]] = []  # (end time, replica, plan) heap
    busy = [False] * replicas
    kv_area = 0.0
    kv_max = 0.0
    t = 0.0
    next_i = 0
    outstanding = 0
    done = 0
    inf = math.inf

    while done < n:
        t_send = send[next_i] if next_i < n and outstanding < cap else inf
        t_step = in_flight[0][0] if in_flight else inf
        t = t_send if t_send < t_step else t_step
        if t == inf:
            raise RuntimeError("simulation stalled: no step in flight and no request to send")
        touched: list[int] = []  # replicas whose state changed now: only they can start a step
        # 1. complete steps that end now
        while in_flight and in_flight[0][0] <= t:
            end, r, plan = heapq.heappop(in_flight)
            out = engines[r].complete(plan, end)
            busy[r] = False
            touched.append(r)
            for gap, c in out.itl_gaps.items():
                itl[gap] = itl.get(gap, 0) + c
            if out.finished:
                for req in out.finished:
                    i = int(req.req_id)
                    ttft[i] = req.first_token_s - req.arrival_s
                    e2e[i] = req.finish_s - req.arrival_s
                done += len(out.finished)
                outstanding -= len(out.finished)
                route.changed(r)
        # 2. send what is due, each to the least-loaded replica
        while next_i < n and send[next_i] <= t and outstanding < cap:
            req_ = Request(str(next_i), ins[next_i], outs[next_i], arrival_s=t,
                           blocks=None if chains is None else chains[next_i])
            r = route.pick(req_)
            engines[r].add(req_)
            route.changed(r)
            touched.append(r)
            sent_at[next_i] = t
            next_i += 1
            outstanding += 1
        # 3. start a step on every idle replica with work (in replica order, as a scan would)
        if len(touched) > 1:
            touched = sorted(set(touched))
        for r in touched:
            if busy[r]:
                continue
            eng = engines[r]
            if not eng.has_work():
                continue
            plan_ = eng.plan()
            if plan_ is None:
                continue
            busy[r] = True
            heapq.heappush(in_flight, (t + plan_.duration_s, r, plan_))
            u = eng.kv.usage
            kv_area += u * plan_.duration_s
            if u > kv_max:
                kv_max = u

    last = float((sent_at + e2e).max())
    duration = last - float(sent_at.min())
    busy_total = sum(e.busy_s for e in engines)
    itl_v = np.fromiter(itl.keys(), dtype=float, count=len(itl))
    itl_c = np.fromiter(itl.values(), dtype=np.int64, count=len(itl))
    return SimResult(
        ttft=ttft, e2e=e2e, output_lens=out_lens, input_lens=in_lens,
        itl_values=itl_v, itl_counts=itl_c,
        duration_s=duration,
        preemptions=sum(e.num_preemptions for e in engines),
        kv_usage_mean=kv_area / busy_total if busy_total else 0.0,
        kv_usage_max=kv_max,
        num_blocks=blocks,
        steps=sum(e.num_steps for e in engines),
        wall_s=time.perf_counter() - wall0,
        inputs=inputs,
        prefix_hit_rate=_hit_rate(engines) if prefix_caching else float("nan"),
    )


def _hit_rate(engines: list[Engine]) -> float:
    queries = sum(getattr(e.kv, "query_tokens", 0) for e in engines)
    hits = sum(getattr(e.kv, "hit_tokens", 0) for e in engines)
    return hits / queries if queries else 0.0


__all__ = ["LengthDist", "SimResult", "Workload", "simulate", "weighted_percentiles"]
