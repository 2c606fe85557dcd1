"""How much streamed load one Locust worker process generates before its own timing drifts.

Against the fast upstream (`loadtest.bench.upstream`, a fixed time-to-first-token and 16 chunks
per answer), run open-loop `chat` at rising rates with one Locust process, and for each rate
record: achieved rate, send lag behind schedule, client TTFT p50/p95 minus the TTFT measured at
the lowest rate (the upstream's own timing plus loopback, our baseline), and the Locust
process's CPU seconds per request (from getrusage of the reaped child). The sustained rate is
the highest one whose achieved rate is within 5% of the asked rate and whose TTFT p50 stays
within 1 ms of the baseline. Workers needed for a rate R is then modelled as
ceil(R * cpu_per_request / usable_core_fraction), printed with its inputs, and checked by one
run with two workers.

    .venv/bin/python -m loadtest.bench.locust_capacity --rates 25,50,100,150,200,300 \
        --duration 6 --out docs/results/loadgen-capacity.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtest import report
from loadtest.runner import Plan, execute
from loadtest.workloads import LengthDist, WorkloadSpec
from servelab.procs import free_port, python_module, start, wait_http_ok


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a running process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_rate(
    base: str, rate: float, duration_s: float, workers: int, tokens: int, work: Path, upstream_pid: int
) -> dict:
    wl = WorkloadSpec(input=LengthDist("fixed", 64), output=LengthDist("fixed", tokens), n=64)
    plan = Plan(
        scenario="chat",
        target=base,
        model="fast",
        keys={"default": "sk-bench"},
        workload=wl,
        duration_s=duration_s,
        rates={"default": [rate]},
        workers=workers,
        drain_s=10,
        metrics_urls=(f"{base}/metrics",),
    )
    run_dir = work / f"rate-{rate:g}-w{workers}"
    cpu0 = _children_cpu_s()
    up0 = _proc_cpu_s(upstream_pid)
    outcome = execute(plan, run_dir, log=print)
    cpu = _children_cpu_s() - cpu0
    up_cpu = _proc_cpu_s(upstream_pid) - up0
    s = report.build(outcome, plan)
    o = s["overall"]
    return {
        "rate": rate,
        "workers": workers,
        "achieved": s["arrivals"]["default"]["achieved_rps"],
        "sent": s["arrivals"]["default"]["sent"],
        "ok": o["ok"],
        "errors": o["errors"],
        "ttft_p50": o["ttft"]["p50"],
        "ttft_p95": o["ttft"]["p95"],
        "itl_p50": o["itl"]["p50"],
        "lag_p50": o["lag"]["p50"],
        "lag_p99": o["lag"]["p99"],
        "cpu_s": cpu,
        "cpu_per_req_ms": 1000 * cpu / max(o["requests"], 1),
        "upstream_core_share": up_cpu / max(o["span_s"], 1e-9),
        "tokens_match": s["serverside"]["tokens_match"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="25,50,100,150,200,300")
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--ttft-ms", type=float, default=10.0)
    ap.add_argument("--itl-ms", type=float, default=1.0)
    ap.add_argument("--two-worker-rate", type=float, default=0.0, help="also run this rate with 2 workers")
    ap.add_argument("--out", type=Path, default=Path("docs/results/loadgen-capacity.md"))
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="lt-capacity-"))
    up = start(
        "upstream",
        python_module(
            "loadtest.bench.upstream",
            "--port",
            str(port),
            "--tokens",
            str(args.tokens),
            "--ttft-ms",
            str(args.ttft_ms),
            "--itl-ms",
            str(args.itl_ms),
        ),
        log_path=work / "upstream.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/health", 20, up.popen)
        results = [run_rate(base, r, args.duration, 1, args.tokens, work, up.pid) for r in rates]
        two = None
        if args.two_worker_rate:
            two = run_rate(base, args.two_worker_rate, args.duration, 2, args.tokens, work, up.pid)
    finally:
        up.stop()

    baseline = results[0]["ttft_p50"]
    for r in results + ([two] if two else []):
        r["ttft_excess_ms"] = 1000 * (r["ttft_p50"] - baseline)
        r["sustained"] = (
            abs(r["achieved"] / r["rate"] - 1) <= 0.05 and r["ttft_excess_ms"] <= 1.0 and r["errors"] == 0
        )
    sustained = [r["rate"] for r in results if r["sustained"]]
    best = max(sustained) if sustained else None
    # Locust's start-up (imports, spawning) costs CPU too: the per-request cost is the slope of
    # CPU seconds against requests sent over the single-worker runs, the start-up the intercept.
    if len(results) >= 2:
        slope, intercept = np.polyfit([r["sent"] for r in results], [r["cpu_s"] for r in results], 1)
    else:
        slope, intercept = results[0]["cpu_s"] / max(results[0]["sent"], 1), 0.0
    cpu_per_req = float(slope)
    load = os.getloadavg()
    lines = [
        "# Load-generator capacity: one Locust worker process, streamed requests",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on `{platform.node()}`"
        f" ({os.cpu_count()} cores, load average at the end {load[0]:.2f}/{load[1]:.2f}). Single run;"
        " the ratios are the finding.",
        "",
        "Command:",
        "",
        "```bash",
        f".venv/bin/python -m loadtest.bench.locust_capacity --rates {args.rates}"
        f" --duration {args.duration:g}"
        f" --tokens {args.tokens} --ttft-ms {args.ttft_ms:g} --itl-ms {args.itl_ms:g}"
        + (f" --two-worker-rate {args.two_worker_rate:g}" if args.two_worker_rate else ""),
        "```",
        "",
        f"Upstream: `loadtest/bench/upstream.py`, TTFT {args.ttft_ms:g} ms, {args.tokens} chunks"
        f" {args.itl_ms:g} ms apart, on the same machine (it competes for the same 2 cores). Open loop,"
        f" Poisson arrivals, {args.duration:g} s per rate, every chunk timed and fired as a Locust ITL"
        " event.",
        f"Baseline TTFT p50 (at {rates[0]:g} req/s): {baseline * 1000:.2f} ms (upstream's {args.ttft_ms:g} ms"
        " + loopback + parsing).",
        "",
        "| asked req/s | workers | achieved req/s | TTFT p50 ms | TTFT p95 ms | p50 excess over baseline ms |"
        " send lag p99 ms | Locust CPU s (run total) | upstream CPU, cores | tokens match server |"
        " sustained |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results + ([two] if two else []):
        lines.append(
            f"| {r['rate']:g} | {r['workers']} | {r['achieved']:.2f} | {r['ttft_p50'] * 1000:.2f} |"
            f" {r['ttft_p95'] * 1000:.2f} | {r['ttft_excess_ms']:.2f} | {r['lag_p99'] * 1000:.2f} |"
            f" {r['cpu_s']:.2f} | {r['upstream_core_share']:.2f} | {r['tokens_match']} | {r['sustained']} |"
        )
    lines += [
        "",
        f"**Highest sustained rate, one worker: {best:g} req/s**" if best else "**No rate was sustained.**",
        " (achieved within 5% of asked, TTFT p50 within 1 ms of the baseline, no errors). Where the"
        " upstream's CPU approaches one core, the upstream, not Locust, is the limit of that row.",
        "",
        "## Workers needed for a rate",
        "",
        "Two ways to size it, both printed with their inputs:",
        "",
        f"- measured, this machine: workers = ceil(R / S) with S = {best or 0:g} req/s, the highest rate one"
        " worker sustained above (valid for this workload: 16 chunks per request);",
        f"- model, dedicated cores: workers = ceil(R × c / u), c = {cpu_per_req * 1000:.2f} ms of Locust CPU"
        f" per streamed request of {args.tokens} chunks (slope of CPU seconds against requests over the"
        f" one-worker runs; the intercept, {intercept:.2f} s, is Locust's start-up), u = 0.7 of a core usable"
        " per worker before gevent's scheduling delay shows in TTFT (an assumption, not measured here)."
        " Chunks cost most of c: scale it by your workload's chunks per request.",
        "",
        "| target req/s | workers, measured basis (this machine) | workers, CPU model (dedicated cores) |",
        "|---|---|---|",
    ]
    for target in (100, 500, 1000, 5000):
        measured = math.ceil(target / best) if best else "-"
        lines.append(f"| {target} | {measured} | {math.ceil(target * cpu_per_req / 0.7)} |")
    lines += [
        "",
        f"The gap between the two (one worker would need only {best or 0:g} × c ="
        f" {(best or 0) * cpu_per_req:.2f} of a core at its sustained rate) is scheduling:"
        " the worker shares the machine's cores with the upstream (and whatever else runs; see the load"
        " average above), so it is not always scheduled in time, which shows up as send lag and TTFT"
        " tails before its own CPU runs out.",
    ]
    if two:
        lines.append(
            f"Two-worker check at {two['rate']:g} req/s: achieved {two['achieved']:.2f},"
            f" TTFT p50 excess {two['ttft_excess_ms']:.2f} ms, sustained: {two['sustained']}."
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
