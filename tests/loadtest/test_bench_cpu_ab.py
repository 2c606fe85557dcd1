"""The side-by-side CPU benchmark runs end to end: two real gateway processes, real Redis, its CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_side_by_side_cpu_bench_reports_both_gateways_per_window(tmp_path: Path) -> None:
    out = tmp_path / "ab.md"
    cmd = [sys.executable, "-m", "loadtest.bench.gateway_cpu_ab", str(ROOT), str(ROOT), "--rates", "40"]
    cmd += [
        "--modes",
        "nonstream",
        "--windows",
        "4",
        "--duration",
        "1",
        "--min-requests",
        "20",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = out.read_text()
    assert "Errors over all windows: 0." in text
    rows = [line for line in text.splitlines() if line.startswith("| non-streaming | 40 |")]
    assert len(rows) == 5, text  # the summary row and one row per window
    summary = rows[0].split("|")
    before_ms, after_ms = float(summary[4]), float(summary[5])
    # The same checkout twice: both used CPU for their requests, within a factor of each other.
    assert 0.05 < before_ms < 50 and 0.05 < after_ms < 50, rows[0]
    assert 0.33 < after_ms / before_ms < 3, rows[0]
    # Half the windows with the processes started the other way round, and within each half the
    # two loads take turns to start first: neither order lines up with the other.
    assert [r.split("|")[4].strip() for r in rows[1:]] == ["before", "before", "after", "after"]
    assert [r.split("|")[5].strip() for r in rows[1:]] == ["before", "after", "before", "after"]
