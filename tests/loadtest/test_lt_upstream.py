"""The load tester against the fast upstream (known timings, exact usage): real Locust, real HTTP."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest import report
from loadtest.rows import read_run
from loadtest.runner import Plan, execute
from loadtest.stats import Slo
from loadtest.workloads import LengthDist, WorkloadSpec

SMALL = WorkloadSpec(input=LengthDist("uniform", 40, low=8, high=80), output=LengthDist("fixed", 12), n=32)


def _run(plan: Plan, run_dir: Path) -> dict:
    outcome = execute(plan, run_dir, log=print)
    return report.build(outcome, plan)


@pytest.mark.slow
def test_open_loop_rows_are_consistent_rate_is_met_and_tokens_match_the_server(
    fast_upstream: Callable[..., str], tmp_path: Path
) -> None:
    base = fast_upstream(tokens=64, ttft_ms=20, itl_ms=2)
    plan = Plan(
        scenario="chat",
        target=base,
        model="fast",
        keys={"default": "sk-test"},
        workload=SMALL,
        duration_s=3.0,
        rates={"default": [20.0]},
        slo=Slo(ttft_s=0.5, tpot_s=0.05),
        metrics_urls=(f"{base}/metrics",),
        drain_s=10,
    )
    summary = _run(plan, tmp_path)
    rows = read_run(tmp_path)
    assert len(rows) == 60 and all(r.ok for r in rows)
    for r in rows:
        assert r.ttft_s <= r.e2e_s
        assert r.ttft_s >= 0.020  # the upstream waits 20 ms before the first token
        assert r.completion_tokens == 12 == r.content_chunks  # one token per chunk, max_tokens honoured
        assert len(r.gaps()) == r.content_chunks - 1
        assert r.tpot_s == pytest.approx((r.e2e_s - r.ttft_s) / 11)
    arrivals = summary["arrivals"]["default"]
    assert arrivals["achieved_rps"] == pytest.approx(20.0, rel=0.05)
    # ... and the sends really happened on schedule (the rate is not just a count).
    assert summary["overall"]["lag"]["p50"] < 0.02
    assert summary["warnings"] == []
    side = summary["serverside"]
    assert side["tokens_match"] is True
    assert side["client_prompt_tokens"] == side["server_prompt_tokens"] > 0
    assert side["client_completion_tokens"] == side["server_generation_tokens"] == 60 * 12
    for name in (
        "summary.json",
        "report.md",
        "rows.csv",
        "locust_stats.csv",
        "locust.html",
        "latency_over_time.png",
        "workload.jsonl",
    ):
        assert (tmp_path / name).exists(), name
    with (tmp_path / "locust_stats.csv").open() as f:
        kinds = {rec["Type"] for rec in csv.DictReader(f)}
    assert {"TTFT", "ITL", "TPOT", "E2E"} <= kinds
    md = (tmp_path / "report.md").read_text()
    assert "exact match" in md and "| TTFT (ms) |" in md
    assert "sk-test" not in (tmp_path / "config.json").read_text() + (tmp_path / "plan.json").read_text()


@pytest.mark.slow
def test_master_and_two_workers_share_one_schedule(fast_upstream: Callable[..., str], tmp_path: Path) -> None:
    base = fast_upstream(tokens=8, ttft_ms=5, itl_ms=1)
    plan = Plan(
        scenario="chat",
        target=base,
        model="fast",
        keys={"default": "sk-test"},
        workload=SMALL,
        duration_s=3.0,
        rates={"default": [20.0]},
        workers=2,
        endpoint="completions",  # /v1/completions with `text` chunks, while we are at it
        drain_s=3,
        metrics_urls=(f"{base}/metrics",),
    )
    summary = _run(plan, tmp_path)
    rows = read_run(tmp_path)
    assert {r.worker for r in rows} == {0, 1}
    assert len(rows) == 60
    assert summary["arrivals"]["default"]["achieved_rps"] == pytest.approx(20.0, rel=0.05)
    assert summary["serverside"]["tokens_match"] is True


@pytest.mark.slow
def test_cli_closed_loop_then_report_compare(fast_upstream: Callable[..., str], tmp_path: Path) -> None:
    base = fast_upstream(tokens=8, ttft_ms=5, itl_ms=1)
    outs = []
    for users in (1, 3):
        out = tmp_path / f"run-{users}"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "servelab.cli",
                "loadtest",
                "chat",
                "--target",
                base,
                "--api-key",
                "sk-x",
                "--model",
                "fast",
                "--users",
                str(users),
                "--duration",
                "2s",
                "--input-len",
                "32",
                "--output-len",
                "8",
                "--prompts",
                "16",
                "--out",
                str(out),
                "--drain",
                "5s",
                "--metrics-url",
                f"{base}/metrics",
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "TTFT" in proc.stdout and "p95" in proc.stdout and "output tok/s" in proc.stdout
        assert "exact match" in proc.stdout
        summary = json.loads((out / "summary.json").read_text())
        assert summary["overall"]["ok"] > 0 and summary["plan"]["users"] == users
        outs.append(out)
    cmp = subprocess.run(
        [sys.executable, "-m", "servelab.cli", "report", "compare", *map(str, outs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cmp.returncode == 0, cmp.stderr
    assert "TTFT p95 ms" in cmp.stdout and "requests/s" in cmp.stdout


@pytest.mark.slow
def test_unreachable_target_gives_failed_rows_and_a_warning_not_a_hang(tmp_path: Path) -> None:
    from servelab.procs import free_port

    plan = Plan(
        scenario="chat",
        target=f"http://127.0.0.1:{free_port()}",
        model="fast",
        keys={"default": "sk"},
        workload=SMALL,
        duration_s=1.0,
        rates={"default": [5.0]},
        drain_s=5,
    )
    summary = _run(plan, tmp_path)
    rows = read_run(tmp_path)
    assert len(rows) == 5 and all(r.status == 0 and "Connection" in r.error for r in rows)
    assert summary["overall"]["ok"] == 0 and summary["overall"]["errors"] == 5
    assert any("failed other than by rate limiting" in w for w in summary["warnings"])
