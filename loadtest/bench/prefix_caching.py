"""What prefix caching and prefix-aware routing buy, against the shared-prefix working set.

    .venv/bin/python -m loadtest.bench.prefix_caching          # writes docs/results/prefix-caching.{md,png}
    .venv/bin/python -m loadtest.bench.prefix_caching --quick --out /tmp/pc.md

The cluster is llm-d's benchmark shape, scaled to the catalog: 8 replicas (Llama-3.1-8B, bf16, one
H100 each, vLLM defaults: chunked prefill 8192, max 1024 seqs), prefix caching on in every replica
(vLLM V1's default). Each request is one of P shared 6,000-token contexts (uniform popularity, as
llm-d's 150 customers) plus its own 100-300-token question, and asks for 50-150 output tokens.
P sets the shared-prefix working set, P x 6,000 tokens; the x axis is that working set divided by
one replica's KV capacity. For each x and each of two Poisson loads (40 req/s, about what the
cluster can serve with no cache hit at all, and 100 req/s, which it can serve only with hits) the same
120 s of traffic is played through each router (TTFT over requests sent after the first 30 s).
The gain is least-loaded's p90 TTFT (and throughput) against the prefix-aware router's. One more
run per load without prefix caching shows what the cache alone gives.

Published points placed on the curve (docs/results/prefix-caching.md explains them): llm-d's
precise prefix-cache scorer at a KV demand of 73% of the cluster (x = 0.73 x 8 = 5.84): p90 TTFT
0.54 s against 31 s for its approximate scorer (57x) and ~93 s for load-only routing (~172x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from server.sim.offline import Workload, build_cost_model, simulate
from server.sim.prefixwork import Conversations, SharedContexts
from server.sim.routing import RouterKind

MODEL, GPU, TP, REPLICAS = "llama-3.1-8b", "h100", 1, 8
CONTEXT_LEN = 6000
QUESTION, ANSWER = "uniform:100:300", "uniform:50:150"
ROUTERS: tuple[RouterKind, ...] = ("least-loaded", "prefix-affinity", "combined")
LLMD_X = 0.73 * 8
LLMD = {"vs approximate scorer": 31 / 0.54, "vs load-only": 93 / 0.54}


def run_one(contexts: int | None, rate: float, seconds: float, router: RouterKind, caching: bool,
            warmup_s: float) -> dict[str, Any]:
    """One run; TTFT percentiles over requests sent after `warmup_s` (the caches fill first)."""
    n = round(rate * seconds)
    prefix = SharedContexts(contexts or 1, CONTEXT_LEN)  # without caching the contexts do not matter
    wl = Workload(num_requests=n, input_len=QUESTION, output_len=ANSWER, rate=rate, seed=0, prefix=prefix)
    res = simulate(wl, model=MODEL, gpu=GPU, tp=TP, replicas=REPLICAS, prefix_caching=caching,
                   router=router)
    s = res.summary()
    send = wl.prepare()[0]
    ttft = res.ttft[send >= warmup_s]
    p50, p90, p99 = (float(v) for v in np.percentile(ttft, (50, 90, 99)))
    return {
        "contexts": contexts, "rate": rate, "router": router, "prefix_caching": caching,
        "measured_requests": int(ttft.size), "ttft_p50_s": p50, "ttft_p90_s": p90, "ttft_p99_s": p99,
        "tpot_p50_s": s["tpot_p50_s"],
        "total_token_throughput": s["total_token_throughput"], "output_throughput": s["output_throughput"],
        "hit_rate": res.prefix_hit_rate if caching else 0.0, "preemptions": s["preemptions"],
        "duration_s": s["duration_s"], "wall_s": s["wall_s"],
    }


def sweep(contexts: list[int], rates: list[float], seconds: float, warmup_s: float) -> list[dict[str, Any]]:
    rows = []
    for rate in rates:
        # No caching: every request computes its whole context.
        rows.append(run_one(None, rate, seconds, "least-loaded", False, warmup_s))
        for p in contexts:
            for router in ROUTERS:
                row = run_one(p, rate, seconds, router, True, warmup_s)
                rows.append(row)
                print(f"rate {rate:g} P {p} {router}: p90 TTFT {row['ttft_p90_s']:.3f} s,"
                      f" hit {row['hit_rate']:.2f}, {row['wall_s']:.1f} s wall", file=sys.stderr)
    return rows


CHAT_RATE, CHAT_TURNS, CHAT_SYSTEM, CHAT_GAP_S = 40.0, 6, 2000, 20.0


def conversations(seconds: float, warmup_s: float) -> list[dict[str, Any]]:
    """Multi-turn chats: 6 turns 20 s apart, a shared 2,000-token system prompt, 200-600-token user
    turns, 100-300-token answers, 40 req/s on the same 8 replicas; each router, and caching off."""
    rows = []
    spec = Conversations(turns=CHAT_TURNS, system_len=CHAT_SYSTEM, turn_gap_s=CHAT_GAP_S)
    wl = Workload(num_requests=round(CHAT_RATE * seconds), input_len="uniform:200:600",
                  output_len="uniform:100:300", rate=CHAT_RATE, seed=0, prefix=spec)
    send = wl.prepare()[0]
    chat_routers: tuple[RouterKind, ...] = (*ROUTERS, "affinity-bounded")
    for router, caching in (("least-loaded", False), *((r, True) for r in chat_routers)):
        res = simulate(wl, model=MODEL, gpu=GPU, tp=TP, replicas=REPLICAS, prefix_caching=caching,
                       router=router)
        s = res.summary()
        ttft = res.ttft[send >= warmup_s]
        rows.append({"router": router, "prefix_caching": caching, "mean_input_len": s["mean_input_len"],
                     "ttft_p50_s": float(np.percentile(ttft, 50)),
                     "ttft_p90_s": float(np.percentile(ttft, 90)),
                     "tpot_p50_s": s["tpot_p50_s"], "total_token_throughput": s["total_token_throughput"],
                     "hit_rate": res.prefix_hit_rate if caching else 0.0})
        print(f"chat {router} caching={caching}: p90 TTFT {rows[-1]['ttft_p90_s']:.3f} s", file=sys.stderr)
    return rows


def _find(rows: list[dict[str, Any]], rate: float, contexts: int | None, router: str,
          caching: bool = True) -> dict[str, Any]:
    return next(r for r in rows if r["rate"] == rate and r["contexts"] == contexts
                and r["router"] == router and r["prefix_caching"] == caching)


def _gain(rows: list[dict[str, Any]], rate: float, p: int, router: str, key: str = "ttft_p90_s") -> float:
    base, r = _find(rows, rate, p, "least-loaded"), _find(rows, rate, p, router)
    if key == "ttft_p90_s":
        return float(base[key] / r[key])
    return float(r[key] / base[key])


def plot(rows: list[dict[str, Any]], rates: list[float], contexts: list[int], capacity: int,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.8))
    xs = [p * CONTEXT_LEN / capacity for p in contexts]
    for rate, style in zip(rates, ("-o", "-s"), strict=False):
        for router, color in (("prefix-affinity", "tab:blue"), ("combined", "tab:green")):
            ax1.plot(xs, [_gain(rows, rate, p, router) for p in contexts], style, color=color,
                     label=f"{router}, {rate:g} req/s")
            ax2.plot(xs, [_gain(rows, rate, p, router, "total_token_throughput") for p in contexts], style,
                     color=color, label=f"{router}, {rate:g} req/s")
        for router, color in (("least-loaded", "tab:gray"), ("prefix-affinity", "tab:blue")):
            ax3.plot(xs, [_find(rows, rate, p, router)["hit_rate"] for p in contexts], style, color=color,
                     label=f"{router}, {rate:g} req/s")
    for label, g in LLMD.items():
        ax1.plot([LLMD_X], [g], "r*", markersize=12)
        ax1.annotate(f"llm-d {label}: {g:.0f}x", (LLMD_X, g), textcoords="offset points",
                     xytext=(-150, 4), fontsize=8, color="r")
    ax2.plot([LLMD_X], [8730 / 4429], "r*", markersize=12)
    ax2.annotate("llm-d vs load-only: 1.97x", (LLMD_X, 8730 / 4429), textcoords="offset points",
                 xytext=(-120, 6), fontsize=8, color="r")
    ax1.axhline(1.03, color="orange", linestyle="--", linewidth=1)
    ax1.annotate("4-replica study: +3% at p50 (its x is not published)", (xs[0], 1.03),
                 textcoords="offset points", xytext=(0, 5), fontsize=8, color="orange")
    ax1.set_yscale("log")
    ax1.set_ylabel("p90 TTFT, least-loaded / prefix-aware")
    ax1.set_title(f"p90 TTFT gain over least-loaded ({REPLICAS} replicas, caching on)")
    ax2.set_ylabel("tok/s, prefix-aware / least-loaded")
    ax2.set_title("Throughput gain")
    ax3.set_ylabel("prefix cache hit rate (prompt tokens)")
    ax3.set_title("Hit rate")
    ticks = [t for t in (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16) if xs[0] * 0.9 <= t <= xs[-1] * 1.1]
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.axvline(1.0, color="k", linewidth=0.5)
        ax.axvline(REPLICAS, color="k", linewidth=0.5, linestyle=":")
        ax.set_xlabel("shared-prefix working set / one replica's KV capacity")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(rows: list[dict[str, Any]], rates: list[float], contexts: list[int], capacity: int,
           argv: str, load: str, png: str, cpu_s: float, warmup_s: float,
           chat: list[dict[str, Any]], rows_note: str = "") -> str:
    lines = [
        "# Prefix caching and prefix-aware routing: what-if",
        "",
        f"Produced by `{argv}` (loadtest/bench/prefix_caching.py; setup in its docstring) on"
        f" {os.cpu_count()} cores, Python {platform.python_version()}, load average before the run {load};"
        f" {cpu_s:.0f} s of CPU{rows_note}. Simulated, not measured on GPUs: the roofline"
        " step-time model of [fidelity.md](fidelity.md), with vLLM's automatic prefix caching modelled"
        " block by block (server/sim/prefixcache.py).",
        "",
        f"Cluster: {REPLICAS} x {MODEL} on one {GPU.upper()} each, {capacity:,} KV tokens per replica."
        f" Requests: one of P shared {CONTEXT_LEN:,}-token contexts + a 100-300-token question, 50-150"
        f" output tokens, Poisson. TTFT percentiles count requests sent after the first {warmup_s:g} s"
        " (the caches fill first); throughput counts the whole run. Routers (server/sim/routing.py):"
        " least-loaded (fewest outstanding requests),"
        " prefix-affinity (longest cached prefix, read from the replicas' caches like llm-d's precise"
        " scorer; misses and ties to the least loaded), combined (2 x cached fraction + 1 x queue score"
        " + 1 x free KV).",
        "",
        "![gain against working set](" + png + ")",
        "",
    ]
    for rate in rates:
        off = _find(rows, rate, None, "least-loaded", caching=False)
        lines += [
            f"## {rate:g} req/s",
            "",
            f"Without prefix caching: p90 TTFT {off['ttft_p90_s']:.3f} s,"
            f" {off['total_token_throughput']:,.0f} tok/s.",
            "",
            "| P contexts | working set / one replica's KV | router | hit rate | TTFT p50 s | TTFT p90 s"
            " | TPOT p50 ms | tok/s | p90 gain vs least-loaded | tok/s gain |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in contexts:
            base = _find(rows, rate, p, "least-loaded")
            for router in ROUTERS:
                r = _find(rows, rate, p, router)
                lines.append(
                    f"| {p} | {p * CONTEXT_LEN / capacity:.2f} | {router} | {r['hit_rate']:.1%} |"
                    f" {r['ttft_p50_s']:.3f} | {r['ttft_p90_s']:.3f} | {r['tpot_p50_s'] * 1000:.1f} |"
                    f" {r['total_token_throughput']:,.0f} | {base['ttft_p90_s'] / r['ttft_p90_s']:.2f}x |"
                    f" {r['total_token_throughput'] / base['total_token_throughput']:.2f}x |")
        lines.append("")
    lines += [
        "## Multi-turn conversations",
        "",
        f"{CHAT_TURNS} turns {CHAT_GAP_S:g} s apart; every chat opens with the same {CHAT_SYSTEM:,}-token"
        " system prompt; 200-600-token user turns, 100-300-token answers; each turn's prompt carries the"
        f" whole history. {CHAT_RATE:g} req/s, same cluster, TTFT after the first {warmup_s:g} s."
        " affinity-bounded is prefix-affinity that falls back to least-loaded when the chosen replica has"
        " more than 8 outstanding requests above the least loaded (the gateway's option).",
        "",
        "| router | prefix caching | mean prompt tokens | hit rate | TTFT p50 s | TTFT p90 s | TPOT p50 ms"
        " | tok/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in chat:
        on = "on" if r["prefix_caching"] else "off"
        lines.append(f"| {r['router']} | {on} | {r['mean_input_len']:,.0f} |"
                     f" {r['hit_rate']:.1%} | {r['ttft_p50_s']:.3f} | {r['ttft_p90_s']:.3f} |"
                     f" {r['tpot_p50_s'] * 1000:.1f} | {r['total_token_throughput']:,.0f} |")
    lines += ["", *reading(rows, rates, contexts, capacity), ""]
    lines += ["Raw rows:", "", "```json", json.dumps({"sweep": rows, "chat": chat}, indent=1), "```", ""]
    return "\n".join(lines)


def reading(rows: list[dict[str, Any]], rates: list[float], contexts: list[int], capacity: int) -> list[str]:
    """The curve in words, from the numbers."""
    out = ["## Reading the curve", ""]
    xs = {p: p * CONTEXT_LEN / capacity for p in contexts}
    for rate in rates:
        gains = {p: _gain(rows, rate, p, "prefix-affinity") for p in contexts}
        peak = max(gains, key=lambda p: gains[p])
        small = [p for p in contexts if xs[p] <= 0.25]
        near = min(contexts, key=lambda p: abs(xs[p] - LLMD_X))
        tput = _gain(rows, rate, near, "prefix-affinity", "total_token_throughput")
        out.append(
            f"- {rate:g} req/s: prefix-affinity's p90 TTFT gain over least-loaded peaks at"
            f" {gains[peak]:.1f}x at x = {xs[peak]:.2f}; at x <= 0.25 it is"
            f" {min(gains[p] for p in small):.2f}-{max(gains[p] for p in small):.2f}x; at llm-d's"
            f" x = {LLMD_X:.2f} (nearest point"
            f" x = {xs[near]:.2f}) it is {gains[near]:.1f}x in p90 TTFT and {tput:.2f}x in throughput.")
    out += [
        "- Below x = 1 every replica can hold the whole working set, so least-loaded routing also finds the"
        " prefix cached almost everywhere after the first request per replica, and affinity adds nothing;"
        " at the smallest x it costs a little (p90 up to 1/0.77 = 1.3x worse at 40 req/s), because it"
        " crowds a few contexts onto a few replicas. The 4-replica study's +3% is what this regime looks"
        " like (its working set is not published, so it is drawn as a line, not placed at an x).",
        "- Between x = 1 and x = replicas (8) one replica cannot hold the working set but the cluster can:"
        " least-loaded makes every replica cache every context and thrash (hit rate falls from ~80% to"
        " ~15%), affinity partitions the contexts and keeps ~90%. The gain grows with x until the"
        " partition itself stops fitting at x = 8, then falls.",
        "- The size of the gain is set by the load as much as by x. At 40 req/s (about the cluster's"
        " capacity with no hits) it is a latency gain, 8-27x in p90 TTFT, with the same throughput. At"
        " 100 req/s least-loaded falls behind from x = 1.5 on, its queue grows for the whole run, and the"
        " ratio (hundreds to thousands) measures how long the run is as much as the routing; the throughput"
        " gain (up to 2.2x at llm-d's x, against llm-d's 1.97x) is the steadier number. llm-d's 57x and"
        " ~172x compare against baselines that were overloaded in the same way.",
        "- Pure prefix-affinity has a failure mode the sweep does not show: when one prefix is shared by"
        " everything (the chats' common system prompt), the replica that cached it first matches every new"
        " conversation best and takes all of them (see its TTFT in the conversation table). A load bound"
        " (affinity-bounded) or a combined score fixes it without giving up hits.",
        "- These are simulated with a different model and GPU from llm-d's (Qwen-32B on 2 x H100 per pod),"
        " so the placement compares shapes, not numbers; none of this is a fidelity check.",
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/prefix-caching.md"))
    ap.add_argument("--seconds", type=float, default=120.0, help="seconds of traffic per run")
    ap.add_argument("--warmup-s", type=float, default=30.0, help="TTFT counts requests sent after this")
    ap.add_argument("--quick", action="store_true", help="4 points, 20 s runs (a smoke test)")
    ap.add_argument("--rows", type=Path, help="re-render from an earlier sweep's rows (JSON list)")
    args = ap.parse_args()
    _, blocks, _ = build_cost_model(MODEL, GPU, TP)
    capacity = blocks * 16
    ratios = [0.05, 0.12, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.84, 8.0, 12.0]
    if args.quick:
        ratios, args.seconds, args.warmup_s = [0.25, 1.0, 4.0, 8.0], 20.0, 5.0
    contexts = sorted({max(1, round(x * capacity / CONTEXT_LEN)) for x in ratios})
    rates = [40.0, 100.0]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cpu0 = time.process_time()
    if args.rows is not None:
        rows = json.loads(args.rows.read_text())  # an earlier sweep (the "sweep" list of its raw rows)
        rates = sorted({float(r["rate"]) for r in rows})
        contexts = sorted({int(r["contexts"]) for r in rows if r["contexts"]})
    else:
        rows = sweep(contexts, rates, args.seconds, args.warmup_s)
    chat = conversations(args.seconds, args.warmup_s)
    cpu = time.process_time() - cpu0
    png = args.out.with_suffix(".png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, rates, contexts, capacity, png)
    argv = "python -m loadtest.bench.prefix_caching" + (" --quick" if args.quick else "")
    note = "" if args.rows is None else (
        " for the conversation table; the sweep's rows were re-read (`--rows`) from the run of the same"
        " command without `--rows` whose raw rows are below")
    text = render(rows, rates, contexts, capacity, argv, load, png.name, cpu, args.warmup_s, chat, note)
    args.out.write_text(text)
    print(f"wrote {args.out} and {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
