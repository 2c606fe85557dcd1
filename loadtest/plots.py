"""PNG plots of a run (matplotlib, Agg backend: no display needed).

latency_over_time.png  p50/p95 TTFT and E2E per second of send time, with requests started;
sweep.png              p95/p50 TTFT and TPOT against offered rate, SLO lines, goodput;
tenants.png            per-tenant p50/p95 TTFT and 429 counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtest.analysis import StepResult
from loadtest.stats import Slo, Summary


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_over_time(series: Sequence[Mapping[str, float]], path: Path) -> Path:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t = [p["t_s"] for p in series]
    for key, style in (("ttft_p50", "-"), ("ttft_p95", "--")):
        ax1.plot(t, [p[key] * 1000 for p in series], style, label=key.replace("_", " "))
    for key, style in (("e2e_p50", "-"), ("e2e_p95", "--")):
        ax1.plot(t, [p[key] * 1000 for p in series], style, label=key.replace("_", " "))
    ax1.set_ylabel("ms")
    ax1.set_yscale("log")
    ax1.legend(loc="upper left", fontsize=8)
    ax1.set_title("Latency percentiles per second of send time")
    ax2.bar(t, [p["started"] for p in series], width=0.9, label="started")
    ax2.bar(t, [p["ok"] for p in series], width=0.5, label="succeeded")
    ax2.set_xlabel("seconds since first send")
    ax2.set_ylabel("requests")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def sweep(steps: Sequence[StepResult], slo: Slo, path: Path) -> Path:
    plt = _plt()
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    x = [s.offered_rps for s in steps]
    ax1.plot(x, [s.summary.ttft.p95 * 1000 for s in steps], "o-", label="p95 TTFT")
    ax1.plot(x, [s.summary.ttft.p50 * 1000 for s in steps], "o--", label="p50 TTFT")
    if slo.ttft_s is not None:
        ax1.axhline(slo.ttft_s * 1000, color="red", lw=1, label="SLO")
    ax1.set_ylabel("TTFT ms")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax2.plot(x, [s.summary.tpot.p95 * 1000 for s in steps], "o-", label="p95 TPOT")
    ax2.plot(x, [s.summary.tpot.p50 * 1000 for s in steps], "o--", label="p50 TPOT")
    if slo.tpot_s is not None:
        ax2.axhline(slo.tpot_s * 1000, color="red", lw=1, label="SLO")
    ax2.set_ylabel("TPOT ms")
    ax2.legend(fontsize=8)
    ax3.plot(x, [s.achieved_rps for s in steps], "o-", label="achieved rate")
    ax3.plot(x, [s.summary.goodput_rps or 0 for s in steps], "o-", label="goodput")
    ax3.plot(x, x, ":", color="grey", label="offered")
    ax3.set_xlabel("offered rate, requests/s")
    ax3.set_ylabel("requests/s")
    ax3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tenants(per_tenant: Mapping[str, Summary], path: Path) -> Path:
    plt = _plt()
    names = list(per_tenant)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = range(len(names))
    ax1.bar([i - 0.2 for i in xs], [per_tenant[n].ttft.p50 * 1000 for n in names], width=0.4, label="p50")
    ax1.bar([i + 0.2 for i in xs], [per_tenant[n].ttft.p95 * 1000 for n in names], width=0.4, label="p95")
    ax1.set_xticks(list(xs), names)
    ax1.set_ylabel("TTFT ms")
    ax1.legend(fontsize=8)
    ax1.set_title("TTFT per tenant")
    ax2.bar(list(xs), [per_tenant[n].rate_limited for n in names], color="tab:red")
    ax2.set_xticks(list(xs), names)
    ax2.set_ylabel("HTTP 429 responses")
    ax2.yaxis.get_major_locator().set_params(integer=True)
    ax2.set_title("Rate-limited requests per tenant")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
