"""`servelab scenario canary --short` end to end: a healthy update is promoted and an 8x slower
one is rolled back by the SLO gate, on a real Redis, real simulators and a real gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from servelab.redisproc import start_redis


def test_canary_scenario_promotes_the_healthy_update_and_rolls_back_the_slow_one(tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis")
    try:
        state = tmp_path / "stack"
        state.mkdir()
        # The scenario brings its own engines and gateway; from the stack it needs Redis and the token.
        (state / "stack.json").write_text(
            json.dumps(
                {"redis_url": redis.url, "admin_token": "scenario-token", "model": "mixtral-8x7b", "keys": {}}
            )
        )
        out = tmp_path / "verdict.json"
        done = subprocess.run(
            [sys.executable, "-m", "servelab.cli", "scenario", "canary", "--short", "--state-dir", str(state),
             "--json", str(out)],
            capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        verdict = json.loads(out.read_text())
        assert verdict["ok"] is True
        names = {c["name"]: c for c in verdict["checks"]}
        assert names["healthy canary promoted"]["ok"]
        assert names["regressed canary rolled back by itself"]["ok"]
        assert "p95" in names["audit log says why"]["measured"]
    finally:
        redis.stop()
