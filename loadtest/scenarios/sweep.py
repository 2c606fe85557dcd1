"""Locustfile `sweep`: one open-loop schedule made of steps of rising rates.

Each arrival carries its step index, so the report computes p95 TTFT/TPOT and goodput per step
and the knee (the highest rate whose p95s meet the SLO). With `--users` instead of rates, the
steps are user counts driven by a LoadTestShape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from locust import LoadTestShape

from loadtest.runconfig import RUN_DIR_ENV
from loadtest.users import LlmUser

__all__ = ["LlmUser"]


def _user_steps() -> list[tuple[float, int]]:
    """[(end_s, users)] from the run folder's user_steps.json (closed-loop sweeps only)."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    path = Path(run_dir) / "user_steps.json" if run_dir else None
    if path is None or not path.exists():
        return []
    return [(float(e), int(u)) for e, u in json.loads(path.read_text())]


_STEPS = _user_steps()

if _STEPS:

    class UserSteps(LoadTestShape):
        """Closed-loop steps: hold each user count until its end time, then stop."""

        def tick(self) -> tuple[int, float] | None:
            t = self.get_run_time()
            for end_s, users in _STEPS:
                if t < end_s:
                    return users, float(users)
            return None
