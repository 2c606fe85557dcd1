"""Fidelity: the simulator against every published vLLM measurement we calibrate on.

Command (writes docs/results/fidelity.md and prints the table):

    .venv/bin/python -m loadtest.bench.fidelity [--seeds 5] [--out docs/results/fidelity.md]

Each row of ../shared/reference/published-vllm.md is replayed through the offline simulator
(`server.sim.offline.simulate`) with the same model, GPU, TP, dtype, lengths and concurrency, and
the perf-model factor profile of the vLLM generation that was measured (`server.perfmodel.PROFILES`:
V1 for ~0.8 and late-2024 builds, the 0.5 profile for 0.5.4). Nothing is fitted per row.

ShareGPT rows cannot use the dataset (not on this machine), so their prompts are a synthetic
ShareGPT-like set: lognormal prompt and output lengths (coefficient of variation 1.0, an
assumption), passed through vLLM's own benchmark filter (drop prompt > 1024, prompt + output >
2048, either < 4), with the lognormal means rescaled until the *filtered* means are the reference's
230 prompt / 219 output tokens. A throughput run of 200-320 requests sent at t=0 ends with its
longest request, so each row is simulated with several seeds and the table gives the median and
the range.

Rows measured on vLLM 0.5.4 are simulated as that server ran: prefill-first scheduling (its
default without chunked prefill) and a cold start (fused-MoE Triton kernels compiled on first
use, server/sim/coldstart.py; only MoE models have any). A second table replays the published
0.5.4 runs whose raw per-request lengths are public (loadtest/bench/data), warm and cold.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.perfmodel import PROFILES, PerfModel
from server.sim.coldstart import VLLM_0_5_MOE_COMPILE_S, ColdMoeKernels
from server.sim.engine import StepCostModel
from server.sim.offline import Workload, simulate

REFERENCE = "../shared/reference/published-vllm.md"
SHAREGPT_MEAN_IN = 230.0
SHAREGPT_MEAN_OUT = 219.0
SHAREGPT_CV = 1.0


@dataclass(frozen=True)
class ExplicitWorkload(Workload):
    """A workload whose per-request lengths are given (all sent at t=0)."""

    prompt_lens: tuple[int, ...] = ()
    output_lens: tuple[int, ...] = ()

    def generate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.num_requests
        return np.zeros(n), np.asarray(self.prompt_lens, np.int64), np.asarray(self.output_lens, np.int64)

    def describe(self) -> dict[str, object]:
        return {"num_requests": self.num_requests, "lengths": "sharegpt-like (explicit)", "rate": "inf"}


def sharegpt_like(n: int, seed: int, cv: float = SHAREGPT_CV) -> tuple[np.ndarray, np.ndarray]:
    """n (prompt, output) length pairs shaped like vLLM's filtered ShareGPT sample."""
    rng = np.random.default_rng(seed)
    s2 = math.log1p(cv * cv)
    mean_in, mean_out = SHAREGPT_MEAN_IN, SHAREGPT_MEAN_OUT
    for _ in range(6):  # rescale the pre-filter means until the post-filter means match
        ins = np.rint(rng.lognormal(math.log(mean_in) - s2 / 2, math.sqrt(s2), 40 * n)).astype(np.int64)
        outs = np.rint(rng.lognormal(math.log(mean_out) - s2 / 2, math.sqrt(s2), 40 * n)).astype(np.int64)
        keep = (ins >= 4) & (outs >= 4) & (ins <= 1024) & (ins + outs <= 2048)
        ins, outs = ins[keep], outs[keep]
        mean_in *= SHAREGPT_MEAN_IN / ins.mean()
        mean_out *= SHAREGPT_MEAN_OUT / outs.mean()
    idx = rng.choice(ins.size, n, replace=False)
    return ins[idx], outs[idx]


@dataclass(frozen=True)
class Published:
    row: str
    source: str
    engine: str
    profile: str  # key of server.perfmodel.PROFILES
    model: str
    gpu: str
    tp: int
    workload: str  # "latency" (batch 8, in 32, out 128) or "sharegpt"
    num_requests: int
    max_num_seqs: int
    max_num_batched_tokens: int
    metric: str  # key into the simulated metrics below
    value: float
    unit: str

    # How the measured server ran follows from its generation: vLLM 0.5.4 defaulted to
    # prefill-first scheduling without chunked prefill (for max_model_len <= 32K), and its rows
    # (LambdaLabs) hit a server started moments before in a fresh container (cold Triton
    # kernels, server/sim/coldstart.py).
    @property
    def chunked_prefill(self) -> bool:
        return self.profile != "vllm-0.5"

    @property
    def cold_start(self) -> bool:
        return self.profile == "vllm-0.5"


ROWS: tuple[Published, ...] = (
    Published("P1", "vLLM CI dashboard, buildkite 11701 (~Apr 2025)", "vLLM ~0.8", "vllm-v1",
              "mixtral-8x7b", "h100", 2, "latency", 8, 256, 8192, "mean_e2e_ms", 2316.7, "ms"),
    Published("P2", "vLLM CI dashboard, same build", "vLLM ~0.8 (offline LLM)", "vllm-v1",
              "mixtral-8x7b", "h100", 2, "sharegpt", 200, 256, 16384, "request_throughput", 9.01, "req/s"),
    Published("P3", "vLLM CI dashboard (late 2024)", "vLLM late 2024", "vllm-v1",
              "mixtral-8x7b", "h200", 2, "latency", 8, 256, 8192, "mean_e2e_ms", 1921.0, "ms"),
    Published("P4", "LambdaLabsML/vllm-benchmark benchmark_v0.md", "vLLM 0.5.4", "vllm-0.5",
              "mixtral-8x7b", "h100", 2, "sharegpt", 320, 256, 2048, "output_throughput", 1430.0, "tok/s"),
    Published("P4", "same", "vLLM 0.5.4", "vllm-0.5",
              "mixtral-8x7b", "h100", 2, "sharegpt", 320, 256, 2048, "median_itl_ms", 38.1, "ms"),
    Published("P5", "same repo", "vLLM 0.5.4", "vllm-0.5",
              "mistral-7b", "h100", 1, "sharegpt", 320, 256, 32768, "output_throughput", 3281.0, "tok/s"),
    Published("P5", "same repo", "vLLM 0.5.4", "vllm-0.5",
              "mistral-7b", "h100", 1, "sharegpt", 320, 256, 32768, "request_throughput", 14.6, "req/s"),
    Published("P5", "same repo", "vLLM 0.5.4", "vllm-0.5",
              "mistral-7b", "h100", 1, "sharegpt", 320, 256, 32768, "mean_ttft_ms", 1290.0, "ms"),
    Published("P5", "same repo", "vLLM 0.5.4", "vllm-0.5",
              "mistral-7b", "h100", 1, "sharegpt", 320, 256, 32768, "median_tpot_ms", 41.5, "ms"),
    Published("P5", "same repo", "vLLM 0.5.4", "vllm-0.5",
              "mistral-7b", "h100", 1, "sharegpt", 320, 256, 32768, "median_itl_ms", 27.2, "ms"),
)  # fmt: skip


def _metrics(summary: dict[str, float | int]) -> dict[str, float]:
    return {
        "mean_e2e_ms": float(summary["e2e_mean_s"]) * 1000,
        "request_throughput": float(summary["request_throughput"]),
        "output_throughput": float(summary["output_throughput"]),
        "mean_ttft_ms": float(summary["ttft_mean_s"]) * 1000,
        "median_tpot_ms": float(summary["tpot_p50_s"]) * 1000,
        "median_itl_ms": float(summary["itl_p50_s"]) * 1000,
        "max_output_len": float("nan"),
    }


def _cost_model(pm: PerfModel, cold: bool, max_num_seqs: int) -> StepCostModel:
    """`pm`, or a fresh cold replica of it when the run was measured cold on a MoE model."""
    if cold and pm.model.is_moe:
        return ColdMoeKernels.for_model(pm, max_num_seqs=max_num_seqs)
    return pm


def run_row(row: Published, profile: str, seeds: int) -> list[float]:
    """The simulated metric for each seed (one value for the deterministic latency rows)."""
    pm = PerfModel.build(row.model, row.gpu, tp=row.tp, factors=PROFILES[profile],
                         max_num_batched_tokens=row.max_num_batched_tokens)  # fmt: skip
    workloads: list[Workload]
    if row.workload == "latency":
        workloads = [Workload(num_requests=8, input_len=32, output_len=128, rate=None)]
    else:
        workloads = []
        for seed in range(seeds):
            ins, outs = sharegpt_like(row.num_requests, seed)
            workloads.append(
                ExplicitWorkload(
                    num_requests=row.num_requests,
                    prompt_lens=tuple(ins.tolist()),
                    output_lens=tuple(outs.tolist()),
                )
            )
    values = []
    for wl in workloads:
        res = simulate(wl, cost_model=_cost_model(pm, row.cold_start, row.max_num_seqs),
                       num_blocks=pm.kv_blocks(16), max_num_seqs=row.max_num_seqs,
                       max_num_batched_tokens=row.max_num_batched_tokens,
                       chunked_prefill=row.chunked_prefill)  # fmt: skip
        values.append(_metrics(res.summary())[row.metric])
    return values


@dataclass(frozen=True)
class Outcome:
    row: Published
    values: tuple[float, ...]
    v1_values: tuple[float, ...]  # the same row simulated with the V1 profile, for comparison

    @property
    def simulated(self) -> float:
        return statistics.median(self.values)

    @property
    def error(self) -> float:
        return (self.simulated - self.row.value) / self.row.value

    @property
    def v1_error(self) -> float:
        return (statistics.median(self.v1_values) - self.row.value) / self.row.value


def evaluate(seeds: int) -> list[Outcome]:
    out = []
    for row in ROWS:
        values = run_row(row, row.profile, seeds)
        v1 = values if row.profile == "vllm-v1" else run_row(row, "vllm-v1", seeds)
        out.append(Outcome(row, tuple(values), tuple(v1)))
    return out


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


LAMBDALABS = Path(__file__).parent / "data" / "lambdalabs_v054_sharegpt320.json"
REPLAY_METRICS = (("output_throughput", "tok/s"), ("mean_ttft_ms", "ms"), ("median_tpot_ms", "ms"),
                  ("median_itl_ms", "ms"))  # fmt: skip


@dataclass(frozen=True)
class Replay:
    """One published 0.5.4 run replayed with its own 320 (prompt, output) lengths."""

    run: dict[str, Any]
    warm: dict[str, float]
    cold: dict[str, float]
    compiles: int


def replay_lambdalabs(path: Path = LAMBDALABS) -> list[Replay]:
    """Every run in the LambdaLabs data file, simulated warm and cold on its exact request set.

    A request that returned no text (output length 0) still had its prefill and one sampled
    token, so it is replayed with one output token.
    """
    data = json.loads(path.read_text())
    prompts = tuple(data["prompt_lens"])
    out = []
    for run in data["runs"]:
        budget = max(run["max_model_len"], 2048)  # vLLM 0.5.4's default without chunked prefill
        pm = PerfModel.build(run["model"], run["gpu"], tp=run["tp"], factors=PROFILES["vllm-0.5"],
                             max_num_batched_tokens=budget)  # fmt: skip
        wl = ExplicitWorkload(num_requests=len(prompts), prompt_lens=prompts,
                              output_lens=tuple(max(1, n) for n in run["output_lens"]))  # fmt: skip
        results = {}
        compiles = 0
        for cold in (False, True):
            cost = _cost_model(pm, cold, 256)
            res = simulate(wl, cost_model=cost, num_blocks=pm.kv_blocks(16), max_num_seqs=256,
                           max_num_batched_tokens=budget, chunked_prefill=False)  # fmt: skip
            results[cold] = _metrics(res.summary())
            if isinstance(cost, ColdMoeKernels):
                compiles = cost.num_compiles
        out.append(Replay(run, results[False], results[True], compiles))
    return out


def render_replays(replays: list[Replay]) -> list[str]:
    lines = [
        "## Replay of the published 0.5.4 runs with their own request sets",
        "",
        "LambdaLabsML/vllm-benchmark publishes the raw `benchmark_serving.py` output of each run, "
        "with the prompt and output length of every request (`loadtest/bench/data/"
        f"{LAMBDALABS.name}`). P4 is the len2000 run; its three siblings differ only in max_model_len "
        "(so in the prefill budget, max(max_model_len, 2048)); P5-file is the Mistral-7B run whose "
        "file is public (it is a different repetition from the P5 row above: 3,172 tok/s against "
        "3,281). Each is simulated with the vllm-0.5 profile and the prefill-first scheduler, warm "
        "(default) and cold (fused-MoE kernels compiled on first use, `server/sim/coldstart.py`; "
        "dense models have none).",
        "",
        "| run | model, TP | prefill budget | metric | published | warm sim | error | cold sim | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in replays:
        run = r.run
        for metric, unit in REPLAY_METRICS:
            pub = float(run[metric])
            w, c = r.warm[metric], r.cold[metric]
            lines.append(
                f"| {run['id']} | {run['model']}, TP{run['tp']} | {max(run['max_model_len'], 2048)} "
                f"| {metric} ({unit}) | {_fmt(pub)} | {_fmt(w)} | {(w - pub) / pub:+.0%} "
                f"| {_fmt(c)} | **{(c - pub) / pub:+.0%}** |"
            )
    lines += [
        "",
        "Kernels compiled mid-run in the cold replays: "
        + ", ".join(f"{r.run['id']} {r.compiles}" for r in replays)
        + ".",
        "",
    ]
    return lines


def render(outcomes: list[Outcome], replays: list[Replay], seeds: int, wall_s: float) -> str:
    errors = [abs(o.error) for o in outcomes]
    lines = [
        "# Fidelity: simulator vs published vLLM measurements",
        "",
        "Command: `.venv/bin/python -m loadtest.bench.fidelity --seeds "
        f"{seeds}` (offline simulator, {wall_s:.1f} s wall on the shared 2-core dev box; the "
        "simulated numbers do not depend on the machine).",
        "",
        f"Published values: `{REFERENCE}`. Error = (simulated - published) / published. "
        "ShareGPT rows: median over "
        f"{seeds} synthetic ShareGPT-like request sets (seeds 0..{seeds - 1}), range in brackets.",
        "",
        "| row | engine measured | model, GPU, TP | workload | metric | published | simulated | error "
        "| error with V1 factors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        r = o.row
        wl = (
            "batch 8, in 32, out 128"
            if r.workload == "latency"
            else f"ShareGPT-like x{r.num_requests}, rate=inf"
        )
        sim = _fmt(o.simulated)
        if len(o.values) > 1:
            sim += f" [{_fmt(min(o.values))}-{_fmt(max(o.values))}]"
        v1 = "same" if r.profile == "vllm-v1" else f"{o.v1_error:+.0%}"
        lines.append(
            f"| {r.row} | {r.engine} | {r.model}, {r.gpu}, TP{r.tp} | {wl} | {r.metric} ({r.unit}) "
            f"| {_fmt(r.value)} | {sim} | **{o.error:+.0%}** | {v1} |"
        )
    over = [o for o in outcomes if abs(o.error) > 0.30]
    lines += [
        "",
        f"**Median absolute error {statistics.median(errors):.1%}; largest {max(errors):.1%}; "
        f"{len(over)} of {len(outcomes)} metrics over 30%** (target: median <= 15%, none over 30%).",
        "",
        "## Inputs",
        "",
        "Perf-model factor profiles (`server/perfmodel.py`, `PROFILES`):",
        "",
        "| profile | " + " | ".join(asdict(PROFILES["vllm-v1"])) + " |",
        "|---|" + "---|" * len(asdict(PROFILES["vllm-v1"])),
    ]
    for name, f in PROFILES.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:g}" for v in asdict(f).values()) + " |")
    lines += [
        "",
        "Engine settings per row: max_num_seqs / max_num_batched_tokens = "
        + "; ".join(
            f"{r.row} {r.max_num_seqs}/{r.max_num_batched_tokens}"
            for r in {o.row.row: o.row for o in outcomes}.values()
        )
        + ". P2 uses the V1 offline `LLM` default budget (16384); P4 the 0.5.4 default without chunked "
        "prefill, max(max_model_len=2000, 2048); P5 max_model_len 32768.",
        "",
        "Scheduler and start state: P1-P3 V1-like chunked prefill on a warm server. P4 and P5 (vLLM "
        "0.5.4) prefill-first without chunking, on a cold server: fused-MoE kernels compiled on first "
        f"use at {VLLM_0_5_MOE_COMPILE_S} s each (`server/sim/coldstart.py`; Mistral-7B is dense and "
        "compiles nothing). The last column changes only the factor profile.",
        "",
        f"ShareGPT-like lengths: lognormal, CV {SHAREGPT_CV}, vLLM's filter (prompt <= 1024, "
        f"prompt + output <= 2048, both >= 4), filtered means {SHAREGPT_MEAN_IN:.0f} / "
        f"{SHAREGPT_MEAN_OUT:.0f} tokens.",
        "",
    ]
    return "\n".join(lines + render_replays(replays) + render_levers())


# vLLM blog 2024-10-17 "How Speculative Decoding Boosts vLLM Performance by up to 2.8x"
# (vllm-project/vllm-project.github.io, _posts/2024-10-17-spec-decode.md): Llama3-70B on 4xH100,
# vLLM 0.6-era (V0) spec decode, at QPS=1 and at "high QPS". Neither k, the acceptance rate, the
# batch size nor the context length is published; the blog's own n-gram example uses k=5.
SPEC_PUBLISHED = (
    ("n-gram, CNN/DailyMail, QPS=1", "ngram", 2.8),
    ("n-gram, CNN/DailyMail, high QPS", "ngram", 1 / 1.8),
    ("draft Qwama-0.5B, ShareGPT, QPS=1", "draft", 1.5),
    ("draft Qwama-0.5B, ShareGPT, high QPS", "draft", 1 / 1.4),
)
SPEC_K, SPEC_CONTEXT = 5, 1000


# SpecDecode-Bench (Liu et al., arXiv 2601.11580), vLLM 0.10.1 on one H100, Llama-3.1-8B-Instruct,
# n-gram with k = 3, speedup of generated tokens/s against batch size: Figure 1, panels (a)-(d),
# blue squares ("N-gram-Fixed-3"), read off the PNG by eye (+-0.02; SpecDecode-Bench/
# specdecode-bench.github.io assets/img/fig1.png at 514270c6).
# The acceptance comes from the same study's per-position traces (SpecDecode-Bench/simulator,
# data/llama3.1-8B/combined_<dataset>.jsonl at 59fc3d78, field acc_ngram.acc_len: tokens a step at
# that position would yield with unlimited proposals). Walking each request with k = 3 (a step yields
# min(acc_len, 4) tokens) gives the mean tokens per step; prompt and output means from the same files.
SPECBENCH_BATCHES = (1, 16, 64, 128)
SPECBENCH_ROWS: dict[str, tuple[float, int, int, tuple[float, ...]]] = {
    # dataset: (tokens per step at k=3, mean prompt, mean output, published speedups at the batches)
    "GSM8K": (1.165, 94, 166, (1.17, 1.15, 1.10, 1.05)),
    "CNN/DailyMail": (1.334, 838, 323, (1.34, 1.28, 1.18, 1.12)),
    "ShareGPT": (1.396, 355, 728, (1.27, 1.25, 1.19, 1.11)),
    "InstructCoder": (2.036, 171, 262, (1.89, 1.73, 1.47, 1.30)),
}


def specbench_outcomes() -> list[tuple[str, float, int, float, float]]:
    """(dataset, a, batch, published, simulated) for Llama-3.1-8B n-gram k=3 on one H100."""
    from server.specdecode import SpecConfig, SpecModel, acceptance_from_length

    pm = PerfModel.build("llama-3.1-8b", "h100", tp=1)
    out = []
    for name, (length, prompt, output, published) in SPECBENCH_ROWS.items():
        a = acceptance_from_length(3, length)
        spec = SpecModel.build(pm, SpecConfig(3, a))
        for batch, pub in zip(SPECBENCH_BATCHES, published, strict=True):
            out.append((name, a, batch, pub, spec.point(batch, prompt + output // 2).speedup))
    return out


def implied_acceptance(speedup: float, batch: int = 1) -> float:
    """The n-gram acceptance rate at which the model gives `speedup` for Llama-3.1-70B TP4 (bisection)."""
    from server.specdecode import SpecConfig, SpecModel

    pm = PerfModel.build("llama-3.1-70b", "h100", tp=4)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        got = SpecModel.build(pm, SpecConfig(SPEC_K, mid)).point(batch, SPEC_CONTEXT).speedup
        lo, hi = (mid, hi) if got < speedup else (lo, mid)
    return lo


def render_levers() -> list[str]:
    """Speculative decoding and expert parallelism: what was published, and what can be checked."""
    from server.specdecode import SpecConfig, SpecModel

    pm = PerfModel.build("llama-3.1-70b", "h100", tp=4)
    a = implied_acceptance(2.8)
    spec = SpecModel.build(pm, SpecConfig(SPEC_K, a))
    batches = (1, 16, 64, 128, 256, 512)
    speedups = ", ".join(f"B={b}: x{spec.point(b, SPEC_CONTEXT).speedup:.2f}" for b in batches)
    rows = specbench_outcomes()
    errs = [sim / pub - 1 for _, _, _, pub, sim in rows]
    by_batch = {b: [sim / pub - 1 for _, _, bb, pub, sim in rows if bb == b] for b in SPECBENCH_BATCHES}
    lines = [
        "",
        "## Speculative decoding and expert parallelism (issue 13)",
        "",
        "**Speculative decoding: SpecDecode-Bench** (Liu et al., 'Speculative Decoding: Performance or "
        "Illusion?', arXiv 2601.11580): vLLM 0.10.1, Llama-3.1-8B-Instruct on one H100, n-gram with "
        "k = 3; published = throughput speedup read off its Figure 1 (+-0.02). The acceptance is not "
        "fitted: it comes from the study's own per-position acceptance traces (mean tokens per step "
        "with k = 3, turned into the model's a by `acceptance_from_length`); context = mean prompt + "
        "half the mean output. `server/specdecode.py` prices the verify pass with the perf model.",
        "",
        "| dataset | tokens/step (k=3) | a | batch | published | simulated | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a, batch, pub, sim in rows:
        length = SPECBENCH_ROWS[name][0]
        lines.append(f"| {name} | {length:.3f} | {a:.3f} | {batch} | x{pub:.2f} | x{sim:.2f} | "
                     f"**{sim / pub - 1:+.0%}** |")
    lines += [
        "",
        f"**Median absolute error {statistics.median(abs(e) for e in errs):.1%}; by batch: "
        + ", ".join(f"{b}: {statistics.median(abs(e) for e in v):.0%}" for b, v in by_batch.items())
        + f"; {sum(abs(e) > 0.30 for e in errs)} of {len(errs)} over 30%.** At batch 1 the model "
        "is within 1% on GSM8K and CNN/DailyMail (the speedup is about the tokens per step, as a "
        "memory-bound step costs the same for 1 or 4 tokens) and 8-10% high on InstructCoder and "
        "ShareGPT. It gets the *shape* wrong: measured speedups fall steadily from "
        "batch 1, while the roofline's max(compute, memory) keeps the verify pass free until it turns "
        "compute-bound near 50 sequences x 4 tokens and then drops it hard (GSM8K at batch 128: x0.74 "
        "against x1.05). Two reasons in the model: its knee is sharper than a real GPU's (GEMMs slow "
        "down gradually with M), and it charges every sequence k + 1 tokens of verification, while "
        "vLLM's n-gram proposer drafts nothing when no n-gram matches (likely most GSM8K steps, at "
        "1.165 tokens per step), so those sequences verify one token. Both make the "
        "speculative-decoding table in serving.md optimistic at batch 16-64 and too pessimistic "
        "near the knee.",
        "",

        "Earlier published speedups in vLLM (blog 2024-10-17, Llama3-70B on 4 x H100, "
        "speedup of the latency metric the blog plots):",
        "",
        "| published point | method | speedup | can the model be checked against it? |",
        "|---|---|---|---|",
    ]
    for label, method, value in SPEC_PUBLISHED:
        why = ("no: the acceptance rate, k and batch are not published; used below to *infer* the "
               "acceptance rate" if value > 1 and method == "ngram" else
               "no: the draft (Qwama-0.5B) is not in the catalog, and the acceptance rate is not published"
               if method == "draft" else
               "no: the batch size at 'high QPS' is not published")
        lines.append(f"| {label} | {method} | x{value:.2f} | {why} |")
    lines += [
        "",
        f"**No error can be computed for these.** What the model can say: with k = {SPEC_K} (the "
        f"blog's own n-gram example) and {SPEC_CONTEXT} tokens of context, Llama-3.1-70B bf16 on "
        f"TP4 H100 gives x2.8 at batch 1 for an acceptance rate of **{a:.2f}** (a fit, "
        f"`implied_acceptance`). With that rate the model's speedup falls with batch: {speedups}. "
        "The published high-QPS slowdown (x0.56) is what the model gives near batch 512; the blog "
        "does not say what batch its high QPS reached, so this is consistency of shape, not a "
        "check. vLLM's V0 speculative decoding of that time also had CPU overheads the V1 profile "
        "does not carry (the docs warned it was 'not yet optimized'), which a fitted acceptance "
        "rate would absorb.",
        "",
        "SpecDecode-Bench's draft-model and EAGLE curves are not rows: EAGLE is not modelled, and its "
        "draft pairings (the paper's Table 5) were not read.",
        "",
        "Expert parallelism: **no published vLLM measurement of Mixtral (8x7B or 8x22B) with "
        "`--enable-expert-parallel` against tensor parallelism was found.** vLLM PR #2090 (Dec 2023, "
        "'Mixtral expert parallelism') reports 4-5x lower end-to-end latency on A100-40GB TP8, but "
        "against vLLM's previous MoE implementation, not against today's fused-MoE TP. The vLLM blog "
        "2025-12-17 reports 2.2k tokens/s per H200 for DeepSeek-V3 with wide EP across nodes (DP "
        "attention, DeepEP all-to-all, dual-batch overlap, EPLB): a different model (MLA attention, "
        "256 experts), not in the catalog. So `server/expertpar.py` has no fidelity row; its "
        "all-to-all latency (30 us) is an assumption and its hottest-GPU load a normal approximation.",
        "",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("docs/results/fidelity.md"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    outcomes = evaluate(args.seeds)
    replays = replay_lambdalabs()
    text = render(outcomes, replays, args.seeds, time.perf_counter() - t0)
    print(text)
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # Keep the hand-written analysis below the generated part.
        marker = "<!-- analysis -->"
        tail = ""
        if args.out.exists() and marker in args.out.read_text():
            tail = args.out.read_text().split(marker, 1)[1]
        args.out.write_text(text + "\n" + marker + tail)


if __name__ == "__main__":
    main()
