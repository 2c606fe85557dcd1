"""Fair share under contention: FCFS vs the pre-issue-10 gateway queue vs the VTC policy.

    .venv/bin/python -m loadtest.bench.fairness                  # writes docs/results/fairness.md + plots
    .venv/bin/python -m loadtest.bench.fairness --duration 120 --out /tmp/fairness.md

The offline part plays each workload through server/sim/tenantfront.py: the gateway replicas'
front (`fcfs`: straight into the engine; `sfq`: the per-replica start-time fair queue the gateway
had before issue 10, capped at max_num_seqs per replica; `vtc`: gateway/fairness.py with global
counters and a global view of free slots refreshed every 0.5 s) in front of simulated vLLM
engines (two backends, each Mixtral-8x7B bf16 on 2x H100, max_num_seqs 16, the catalog's roofline). The same
fairness figures (loadtest/fairstats.py) are computed for every run.

Workloads (C = the backend's measured capacity in requests/s at these lengths):
- A, latency protection: three steady tenants at 0.2 C each, one noisy tenant at 1.4 C (2 C
  offered); lengths uniform 256-768 in, 32-224 out.
- B, token weighting: two backlogged tenants (32 outstanding each), one sending 1024 in / 256 out,
  the other 128 in / 32 out (8x smaller), weights 1:1 and 2:1.
- P, priority under overload at 2 C: interactive 0.5 C, standard 0.5 C, batch 1.0 C, with the
  batch tier queued (max 30 s) or sheddable, tiers passed to the engine as `priority`.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.fairstats import FairnessReport, analyse
from server.sim.offline import build_cost_model
from server.sim.tenantfront import FRONTS, FrontConfig, TenantWorkload, run

ROOT = Path(__file__).resolve().parents[2]
MODEL: dict[str, Any] = {"model": "mixtral-8x7b", "gpu": "h100", "tp": 2}
MAX_NUM_SEQS = 16
A_IN, A_OUT = "uniform:256:768", "uniform:32:224"
BACKENDS = 2
CLIENT_TIMEOUT_S = 60.0  # a request without a first token by then counts as never served
BURST = 8192.0  # weighted tokens a returning tenant may stay below the lowest active counter
FRONT_NAMES = {
    "fcfs": "FCFS (no gateway queue)",
    "sfq": "pre-issue-10 queue (SFQ per replica)",
    "vtc": "VTC policy (global)",
}
FRONT_LABELS = {
    **FRONT_NAMES,
    "vtc": "VTC, paper's lift (burst 0)",
    "vtc-burst": f"VTC, burst allowance {BURST:,.0f}",
}


@dataclass
class Backend:
    cost: Any
    blocks: int

    @classmethod
    def build(cls) -> Backend:
        cost, blocks, _ = build_cost_model(MODEL["model"], MODEL["gpu"], tp=int(MODEL["tp"]))
        return cls(cost, blocks)


def capacity_rps(backend: Backend, duration_s: float) -> float:
    """Requests/s the backend completes with one backlogged tenant at workload A's lengths."""
    wl = TenantWorkload.from_dict(
        {
            "duration_s": duration_s,
            "tenants": {"solo": {"backlogged": 64, "input_len": A_IN, "output_len": A_OUT}},
        }
    )
    res = run(wl, FrontConfig(front="fcfs"), backend.cost, backend.blocks, max_num_seqs=MAX_NUM_SEQS)
    done = [r for r in res.records if r.finish_s <= duration_s and r.finish_s >= duration_s * 0.2]
    return len(done) / (duration_s * 0.8)


def workload_a(cap: float, duration_s: float, seed: int = 0, solo: bool = False) -> TenantWorkload:
    tenants: dict[str, Any] = {
        f"steady{i}": {"rate": 0.2 * cap, "input_len": A_IN, "output_len": A_OUT} for i in (1, 2, 3)
    }
    if solo:
        tenants = {"steady1": tenants["steady1"]}
    else:
        tenants["noisy"] = {"rate": 1.4 * cap, "input_len": A_IN, "output_len": A_OUT}
    return TenantWorkload.from_dict({"duration_s": duration_s, "seed": seed, "tenants": tenants})


def workload_b(duration_s: float, w_big: float) -> TenantWorkload:
    return TenantWorkload.from_dict(
        {
            "duration_s": duration_s,
            "tenants": {
                "big": {"backlogged": 32, "input_len": 1024, "output_len": 256, "weight": w_big},
                "small": {"backlogged": 32, "input_len": 128, "output_len": 32, "weight": 1.0},
            },
        }
    )


def workload_p(cap: float, duration_s: float, shed: bool) -> TenantWorkload:
    return TenantWorkload.from_dict(
        {
            "duration_s": duration_s,
            "tenants": {
                "chat": {"rate": 0.5 * cap, "input_len": A_IN, "output_len": A_OUT, "tier": "interactive"},
                "api": {"rate": 0.5 * cap, "input_len": A_IN, "output_len": A_OUT, "tier": "standard"},
                "bulk": {
                    "rate": 1.0 * cap,
                    "input_len": A_IN,
                    "output_len": A_OUT,
                    "tier": "batch",
                    "sheddable": shed,
                },
            },
        }
    )


def offline(
    backend: Backend,
    wl: TenantWorkload,
    front: FrontConfig,
    warmup_s: float,
    backlogged: tuple[str, ...] = (),
) -> tuple[FairnessReport, float]:
    res = run(wl, front, backend.cost, backend.blocks, max_num_seqs=MAX_NUM_SEQS)
    weights = {t.name: t.weight for t in wl.tenants}
    rep = analyse(
        res.records,
        weights=weights,
        end_s=wl.duration_s,
        warmup_s=warmup_s,
        backlogged=backlogged,
        client_timeout_s=CLIENT_TIMEOUT_S,
    )
    return rep, res.wall_s


def _s(x: float) -> str:
    if math.isinf(x):
        return "never"
    return f"{x:.2f}"


def table_a(rows: list[tuple[str, FairnessReport]], solo_p95: float, fcfs_tput: float) -> list[str]:
    tenants = sorted(rows[0][1].tenants)
    head = "| front | gateways | " + " | ".join(f"{t} p50 / p95 TTFT s" for t in tenants)
    out = [
        head + " | steady unserved | noisy share of service | Jain (max-min) | tokens/s | vs FCFS |",
        "|" + "---|" * (len(tenants) + 7),
    ]
    for label, rep in rows:
        steady = [rep.tenants[t] for t in tenants if t.startswith("steady")]
        total = sum(s.service_rate for s in rep.tenants.values())
        noisy = rep.tenants["noisy"].service_rate / total if total else math.nan
        cells = " | ".join(
            f"{_s(rep.tenants[t].ttft_p50_s)} / {_s(rep.tenants[t].ttft_p95_s)}" for t in tenants
        )
        unserved = np.mean([s.unserved for s in steady])
        out.append(
            f"| {label} | {cells} | {unserved:.0%} | {noisy:.0%} | {rep.jain:.3f} | "
            f"{rep.throughput_tokens_per_s:,.0f} | {rep.throughput_tokens_per_s / fcfs_tput - 1:+.1%} |"
        )
    out.append(f"\nSolo baseline (steady1 alone, same rate): p95 TTFT {solo_p95:.2f} s.")
    return out


def plot_service(rep: FairnessReport, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    for t, series in rep.service_by_window.items():
        ax1.plot(rep.windows, series, label=t)
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("service, weighted tokens/s (in + 2 x out)")
    ax1.set_title(f"{title}: service per tenant")
    ax1.legend(fontsize=8)
    for t, tt in rep.ttfts.items():
        if tt:
            ax2.plot(tt, np.arange(1, len(tt) + 1) / len(tt), label=t)
    ax2.set_xscale("log")
    ax2.set_xlabel("TTFT (s), served requests")
    ax2.set_ylabel("fraction")
    ax2.set_title(f"{title}: TTFT CDF")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=300.0, help="offline seconds of offered load per run")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds left out of the figures")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/fairness.md")
    ap.add_argument("--live-duration", type=float, default=45.0, help="seconds of load per live run")
    ap.add_argument("--live-warmup", type=float, default=10.0)
    ap.add_argument("--no-live", action="store_true", help="offline only (no processes started)")
    args = ap.parse_args()
    plots = args.out.parent / "fairness"
    plots.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    backend = Backend.build()
    cap = capacity_rps(backend, 200.0)
    print(f"capacity {cap:.2f} req/s", flush=True)
    d, w = args.duration, args.warmup

    c2 = cap * BACKENDS
    solo, _ = offline(backend, workload_a(c2, d, solo=True), FrontConfig(front="fcfs", backends=BACKENDS), w)
    rows_a: list[tuple[str, FairnessReport]] = []
    reps: dict[str, FairnessReport] = {}
    for label, front, burst in (
        ("fcfs", "fcfs", 0.0),
        ("sfq", "sfq", 0.0),
        ("vtc", "vtc", 0.0),
        ("vtc-burst", "vtc", BURST),
    ):
        for gws in (1, 2):
            cfg = FrontConfig(front=front, gateways=gws, backends=BACKENDS, burst_allowance=burst)  # type: ignore[arg-type]
            rep, _ = offline(backend, workload_a(c2, d), cfg, w, ("noisy",))
            reps[f"{label}-{gws}"] = rep
            rows_a.append((f"{FRONT_LABELS[label]} | {gws}", rep))
            print(f"A {label} x{gws}: jain {rep.jain:.3f}", flush=True)
    for key in ("fcfs-2", "sfq-2", "vtc-burst-2"):
        plot_service(reps[key], f"A, {key}", plots / f"offline-a-{key}.png")

    rows_b = []
    for w_big in (1.0, 2.0):
        for front in FRONTS:
            cfg = FrontConfig(front=front, backends=BACKENDS, burst_allowance=BURST)
            rep, _ = offline(backend, workload_b(d, w_big), cfg, w, ("big", "small"))
            rows_b.append((w_big, front, rep))
            if front == "vtc":
                plot_service(rep, f"B {w_big:g}:1, vtc", plots / f"offline-b-{w_big:g}.png")

    rows_p = []
    for label, front, shed, prio in (
        ("FCFS", "fcfs", False, False),
        ("VTC + tiers, batch queued (30 s)", "vtc", False, True),
        ("VTC + tiers, batch sheddable", "vtc", True, True),
    ):
        wl = workload_p(c2, d, shed)
        cfg = FrontConfig(front=front, engine_priority=prio, backends=BACKENDS, burst_allowance=BURST)  # type: ignore[arg-type]
        res = run(wl, cfg, backend.cost, backend.blocks, max_num_seqs=MAX_NUM_SEQS)
        rep = analyse(
            res.records,
            weights={t.name: 1.0 for t in wl.tenants},
            end_s=d,
            warmup_s=w,
            client_timeout_s=CLIENT_TIMEOUT_S,
        )
        rows_p.append((label, rep, res))

    # 100 tenants at cluster scale: the what-if the offline front makes computable
    big_cap = cap * 32
    many = TenantWorkload.from_dict(
        {
            "duration_s": 60.0,
            "tenants": {
                f"t{i:03d}": {
                    "rate": (6.0 if i < 5 else 1.2) * big_cap / 100 * 1.0,
                    "input_len": A_IN,
                    "output_len": A_OUT,
                    "weight": 1.0,
                }
                for i in range(100)
            },
        }
    )
    t_many = time.perf_counter()
    res_many = run(
        many,
        FrontConfig(front="vtc", gateways=4, backends=32, burst_allowance=BURST),
        backend.cost,
        backend.blocks,
        max_num_seqs=MAX_NUM_SEQS,
    )
    wall_many = time.perf_counter() - t_many
    rep_many = analyse(
        res_many.records, weights={t.name: 1.0 for t in many.tenants}, end_s=60.0, warmup_s=10.0
    )

    live: list[str] = []
    if not args.no_live:
        import tempfile

        ld, lw = args.live_duration, args.live_warmup
        sim_same = {}
        for front in ("fcfs", "vtc"):
            cfg = FrontConfig(front=front, gateways=2, backends=BACKENDS, burst_allowance=BURST)  # type: ignore[arg-type]
            sim_same[front] = offline(backend, workload_a(cap * BACKENDS, ld), cfg, lw, ("noisy",))[0]
        with tempfile.TemporaryDirectory(prefix="fairness-") as tmp:
            reps_live = live_runs(ld, lw, cap, Path(tmp))
        for front, rep in reps_live.items():
            plot_service(rep, f"live A, {front}", plots / f"live-a-{front}.png")
        live = live_section(reps_live, sim_same, ld, lw)
    write_report(
        args.out,
        cap,
        solo,
        rows_a,
        rows_b,
        rows_p,
        (res_many, rep_many, wall_many),
        d,
        w,
        time.perf_counter() - t0,
        live,
    )
    print(f"wrote {args.out}")


# -- live stack: real redis-server, 2 simulated backends, 2 gateway processes ------------------------

ADMIN = "fairness-bench-admin"
LIVE_FRONTS: dict[str, dict[str, Any]] = {
    "fcfs": {},
    "static": {"max_in_flight_per_backend": MAX_NUM_SEQS},
    "vtc": {
        "fairness": {
            "max_num_seqs": MAX_NUM_SEQS,
            "gateway_replicas": 2,
            "burst_tokens": BURST,
            "max_waiting": 0,
            "engine_priority": True,
        }
    },
}
LIVE_LABELS = {
    "fcfs": "FCFS (no gateway queue)",
    "static": f"static cap {MAX_NUM_SEQS}/backend per replica (VTC order, no detector)",
    "vtc": "VTC + saturation detector (global)",
}


def live_runs(duration_s: float, warmup_s: float, cap: float, workdir: Path) -> dict[str, FairnessReport]:
    """Workload A on the live stack once per front; returns the reports by front."""
    import asyncio

    import httpx
    import yaml

    from loadtest.fairload import report, run_workload, workload_a
    from servelab.procs import Child, free_port, python_module, start, wait_http_ok
    from servelab.redisproc import start_redis

    children: list[Child] = []
    redis = start_redis(workdir / "redis", log_path=workdir / "redis.log")
    out: dict[str, FairnessReport] = {}
    try:
        backends = []
        for i in range(BACKENDS):
            port = free_port()
            argv = python_module(
                "servelab.cli",
                "serve",
                "--engine",
                "sim",
                "--model",
                MODEL["model"],
                "--gpu",
                MODEL["gpu"],
                "--tp",
                str(MODEL["tp"]),
                "--dtype",
                "bf16",
                "--port",
                str(port),
                "--served-model-name",
                "m",
                "--max-num-seqs",
                str(MAX_NUM_SEQS),
                "--scheduling-policy",
                "priority",
            )
            children.append(start(f"sim{i}", argv, log_path=workdir / f"sim{i}.log"))
            wait_http_ok(f"http://127.0.0.1:{port}/health", timeout_s=120, proc=children[-1].popen)
            backends.append(f"http://127.0.0.1:{port}")
        wl = workload_a(cap * BACKENDS, duration_s)
        tenants = [t.name for t in wl.tenants]
        for front, model_extra in LIVE_FRONTS.items():
            cfg = {
                "plans": {
                    "std": {
                        "requests_per_minute": 100_000,
                        "tokens_per_minute": 100_000_000,
                        "tokens_per_month": 10_000_000_000,
                        "max_concurrent_requests": 10_000,
                        "max_queue_s": 30,
                    }
                },
                "tenants": {t: {"plan": "std"} for t in tenants},
                "models": {"m": {"backends": backends, **model_extra}},
            }
            path = workdir / f"gateway-{front}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            urls, gws = [], []
            for _ in range(2):
                port = free_port()
                gw = start(
                    f"gw-{front}-{port}",
                    python_module("gateway", "--config", str(path), "--port", str(port)),
                    env={
                        "REDIS_URL": redis.url,
                        "SERVELAB_ADMIN_TOKEN": ADMIN,
                        "SERVELAB_SPOOL_DIR": str(workdir / f"spool-{port}"),
                    },
                    log_path=workdir / f"gw-{front}-{port}.log",
                )
                gws.append(gw)
                wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout_s=60, proc=gw.popen)
                urls.append(f"http://127.0.0.1:{port}")
            keys = {}
            for t in tenants:
                r = httpx.post(
                    f"{urls[0]}/admin/v1/tenants/{t}/keys",
                    json={"name": "bench"},
                    headers={"authorization": f"Bearer {ADMIN}"},
                    timeout=10,
                )
                r.raise_for_status()
                keys[t] = r.json()["key"]
            print(f"live {front}: {duration_s:.0f} s of workload A", flush=True)
            records = asyncio.run(run_workload(urls, keys, wl, "m", client_timeout_s=CLIENT_TIMEOUT_S))
            out[front] = report(
                records, wl, warmup_s, backlogged=("noisy",), client_timeout_s=CLIENT_TIMEOUT_S
            )
            for gw in gws:
                gw.stop()
    finally:
        for c in reversed(children):
            c.stop()
        redis.stop()
    return out


NOTES = Path(__file__).with_name("fairness_notes.md").read_text().splitlines()


def _steady_p95(rep: FairnessReport) -> float:
    return max(s.ttft_p95_s for t, s in rep.tenants.items() if t.startswith("steady"))


def live_section(
    live: dict[str, FairnessReport], sim: dict[str, FairnessReport], d: float, w: float
) -> list[str]:
    fcfs_tput = live["fcfs"].throughput_tokens_per_s
    lines = [
        "## Live stack: workload A on 2 gateway replicas, 2 simulated backends, real Redis",
        "",
        f"Each run: {d:.0f} s of load, figures over [{w:.0f} s, {d:.0f} s]; `loadtest/fairload.py` sends "
        "streaming chat completions with exact-length prompts round robin to the two gateway processes; "
        f"backends run `servelab serve --engine sim` (same model, max_num_seqs {MAX_NUM_SEQS}, "
        "--scheduling-policy priority).",
        "",
        *table_a([(f"{LIVE_LABELS[k]} | 2", r) for k, r in live.items()], math.nan, fcfs_tput)[:-1],
        "",
        "Live against the offline simulator on the same workload, duration and window "
        "(2 gateways, 2 backends):",
        "",
        "| front | figure | live | simulated | live / simulated - 1 |",
        "|---|---|---|---|---|",
    ]
    for front in ("fcfs", "vtc"):
        lv, sm = live[front], sim[front]
        total_l = sum(x.service_rate for x in lv.tenants.values())
        total_s = sum(x.service_rate for x in sm.tenants.values())
        for name, a, b in (
            ("worst steady p95 TTFT s", _steady_p95(lv), _steady_p95(sm)),
            (
                "noisy share of service",
                lv.tenants["noisy"].service_rate / total_l,
                sm.tenants["noisy"].service_rate / total_s,
            ),
            ("Jain (max-min)", lv.jain, sm.jain),
            ("tokens/s", lv.throughput_tokens_per_s, sm.throughput_tokens_per_s),
        ):
            rel = f"{a / b - 1:+.1%}" if math.isfinite(a) and math.isfinite(b) and b else "n/a"
            lines.append(f"| {front} | {name} | {_s(a)} | {_s(b)} | {rel} |")
    lines += ["", "![live vtc](fairness/live-a-vtc.png)", "![live fcfs](fairness/live-a-fcfs.png)", ""]
    return lines


def write_report(
    path: Path,
    cap: float,
    solo: FairnessReport,
    rows_a: list[tuple[str, FairnessReport]],
    rows_b: Sequence[tuple[float, str, FairnessReport]],
    rows_p: list[tuple[str, FairnessReport, Any]],
    many: tuple[Any, FairnessReport, float],
    d: float,
    w: float,
    wall: float,
    live: Sequence[str] = (),
) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    fcfs_tput = rows_a[0][1].throughput_tokens_per_s
    lines = [
        "# Fair share under contention",
        "",
        "Produced by `.venv/bin/python -m loadtest.bench.fairness` "
        f"(commit {commit}, {wall:.0f} s wall, load average {os.getloadavg()[0]:.1f} at the end).",
        "Definitions of every figure: loadtest/fairstats.py. Policy: gateway/fairness.py; the offline",
        "front that runs it in the simulator: server/sim/tenantfront.py.",
        "",
        f"Backend: simulated vLLM engine, {MODEL['model']} bf16 on {MODEL['tp']}x {MODEL['gpu']}, "
        f"max_num_seqs {MAX_NUM_SEQS}, {BACKENDS} backends. Measured capacity at workload A's lengths: "
        f"**{cap:.2f} req/s per backend**, C = {cap * BACKENDS:.2f} req/s for the two "
        "(one backlogged tenant, FCFS).",
        f"Offline runs: {d:.0f} s of offered load each; figures over [{w:.0f} s, {d:.0f} s]. "
        "Gateways are load-balanced round robin.",
        "",
        "## Workload A: latency protection (offline)",
        "",
        "Three steady tenants at 0.2 C, one noisy tenant at 1.4 C (2 C offered).",
        "",
        *table_a(rows_a, solo.tenants["steady1"].ttft_p95_s, fcfs_tput),
        "",
        "![A, vtc](fairness/offline-a-vtc-burst-2.png)",
        "![A, sfq](fairness/offline-a-sfq-2.png)",
        "![A, fcfs](fairness/offline-a-fcfs-2.png)",
        "",
        "## Workload B: token weighting (offline, 1 gateway)",
        "",
        "Two backlogged tenants; `big` sends requests 8x the size of `small`'s (1024/256 vs 128/32 tokens).",
        "Weighted service ratio = (service of big / weight) / (service of small / weight); 1.00 is exact.",
        "",
        "| weights big:small | front | big tokens/s | small tokens/s | service ratio big:small | "
        "ratio / weights | service diff max / mean (weighted tokens per 5 s window) |",
        "|---|---|---|---|---|---|---|",
    ]
    for w_big, front, rep in rows_b:
        b, s = rep.tenants["big"], rep.tenants["small"]
        ratio = b.service_rate / s.service_rate
        lines.append(
            f"| {w_big:g}:1 | {FRONT_NAMES[front]} | {b.tokens_per_s:,.0f} | {s.tokens_per_s:,.0f} | "
            f"{ratio:.2f} | {ratio / w_big:.3f} | "
            f"{rep.service_diff_max or 0:,.0f} / {rep.service_diff_mean or 0:,.0f} |"
        )
    lines += [
        "",
        "![B 1:1](fairness/offline-b-1.png)",
        "![B 2:1](fairness/offline-b-2.png)",
        "",
        "## Priority under overload at 2 C (offline, 1 gateway)",
        "",
        "Interactive `chat` 0.5 C, standard `api` 0.5 C, batch `bulk` 1.0 C. Goodput: requests/s "
        "served with TTFT within the tier's SLO (interactive 1 s, standard 5 s, batch 30 s).",
        "",
        "| setup | chat p95 TTFT s | api p95 TTFT s | bulk p95 TTFT s | bulk shed or timed out | "
        "goodput chat / api / bulk req/s | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    slo = {"chat": 1.0, "api": 5.0, "bulk": 30.0}
    for label, rep, res in rows_p:
        good = []
        for t in ("chat", "api", "bulk"):
            ok = [
                r
                for r in res.records
                if r.tenant == t
                and w <= r.arrival_s < d
                and r.outcome == "ok"
                and r.first_token_s - r.arrival_s <= slo[t]
            ]
            good.append(len(ok) / (d - w))
        bulk = rep.tenants["bulk"]
        lines.append(
            f"| {label} | {_s(rep.tenants['chat'].ttft_p95_s)} | {_s(rep.tenants['api'].ttft_p95_s)} | "
            f"{_s(bulk.ttft_p95_s)} | {bulk.shed + bulk.timed_out} of {bulk.requests} | "
            f"{good[0]:.2f} / {good[1]:.2f} / {good[2]:.2f} | {rep.throughput_tokens_per_s:,.0f} |"
        )
    res_many, rep_many, wall_many = many
    att = [s.attainment for s in rep_many.tenants.values()]
    lines += [
        "",
        "## Cluster-scale what-if (offline)",
        "",
        f"100 tenants (5 at 6x and 95 at 1.2x an equal share of 32 backends: {32 * cap:.0f} req/s "
        f"capacity, {len(res_many.records) / 60:.0f} req/s offered), 4 gateway replicas, VTC: "
        f"{len(res_many.records):,} requests simulated in {wall_many:.1f} s wall. Jain over share attainment "
        f"{rep_many.jain:.3f} (min {min(att):.2f}, max {max(att):.2f}).",
        "",
    ]
    lines += list(live) or ["## Live stack", "", "Not run (`--no-live`).", ""]
    lines += NOTES
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
