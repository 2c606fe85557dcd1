"""The compose stack run for real under Docker: scripts/compose-smoke.sh, end to end (2-6 minutes).

Opt-in, because it takes minutes and a Docker engine: SERVELAB_COMPOSE_LIVE=1 (.ci/run sets it,
after `make test`). Where Docker cannot be started (no docker, not root, no Linux) the script exits
3 with the reason, and this test is skipped with that reason printed; every other exit is a failure.
SERVELAB_COMPOSE_GIT_REF=REF builds the image from a commit instead of the working tree.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from deploy_files import REPO

LIVE = os.environ.get("SERVELAB_COMPOSE_LIVE") == "1"


@pytest.mark.timeout(1200)
@pytest.mark.skipif(
    not LIVE, reason="takes minutes: SERVELAB_COMPOSE_LIVE=1 runs it (.ci/run; make compose-smoke)"
)
def test_compose_stack_runs_for_real(tmp_path: Path) -> None:
    results = tmp_path / "compose-run.md"
    argv = [str(REPO / "scripts" / "compose-smoke.sh"), "--results", str(results)]
    if os.environ.get("SERVELAB_COMPOSE_GIT_REF"):
        argv += ["--git-ref", os.environ["SERVELAB_COMPOSE_GIT_REF"]]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1100)
    print(proc.stdout[-4000:])
    if proc.returncode == 3:
        pytest.skip((proc.stderr.strip().splitlines() or ["compose-smoke: cannot run here"])[-1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    report = results.read_text()
    assert "Outcome: **passed**" in report
    # Both replicas served SDK calls through nginx.
    calls = re.search(r"## SDK calls through nginx.*?\n\n(.*?)\n\n", report, re.S)
    assert calls is not None
    assert len(set(re.findall(r"(\S+_gateway_\d)", calls.group(1)))) == 2
    # Every Prometheus target up: 2 gateways, 2 backends, Prometheus itself.
    targets = re.findall(r"^\| (gateway|backend|prometheus) \| \S+ \| (\w+) \|$", report, re.M)
    assert sorted(job for job, _ in targets) == ["backend", "backend", "gateway", "gateway", "prometheus"]
    assert {health for _, health in targets} == {"up"}
    assert "errors 0" in report
    assert "**identical**" in report
    assert "found in 0 places" in report or "nothing to check" in report
