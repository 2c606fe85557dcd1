"""Scenario defaults. Each scenario is a locustfile next to this module plus the defaults below.

The locustfiles are thin (they import `loadtest.users.LlmUser`); what makes a scenario is its
traffic plan (streams, rates, steps) and workload, built here from the CLI's options, and what
its report computes (report.py). This module imports no Locust: the CLI process reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loadtest.workloads import LengthDist, WorkloadSpec

ScenarioName = Literal["chat", "sweep", "multitenant", "ratelimit", "longcontext"]
SCENARIOS: tuple[ScenarioName, ...] = ("chat", "sweep", "multitenant", "ratelimit", "longcontext")


@dataclass(frozen=True)
class ScenarioDefaults:
    description: str
    workload: WorkloadSpec
    rate_rps: float


DEFAULTS: dict[str, ScenarioDefaults] = {
    "chat": ScenarioDefaults(
        "steady open-loop chat traffic (ShareGPT-like lengths, Poisson arrivals)",
        WorkloadSpec(sharegpt=True, n=256),
        2.0,
    ),
    "sweep": ScenarioDefaults(
        "rising open-loop rates until the SLO breaks; reports the knee and goodput per step",
        WorkloadSpec(input=LengthDist("fixed", 256), output=LengthDist("fixed", 128), n=256),
        1.0,
    ),
    "multitenant": ScenarioDefaults(
        "one noisy tenant floods while the others stay steady; per-tenant p50/p95 and 429s",
        WorkloadSpec(input=LengthDist("fixed", 128), output=LengthDist("fixed", 32), n=128),
        2.0,
    ),
    "ratelimit": ScenarioDefaults(
        "each tenant offered more than its limit; admitted requests/tokens per minute vs the limit",
        WorkloadSpec(input=LengthDist("fixed", 16), output=LengthDist("fixed", 4), n=64),
        20.0,
    ),
    "longcontext": ScenarioDefaults(
        "long prompts, short outputs (prefill-heavy)",
        WorkloadSpec(input=LengthDist("lognormal", 6000, sigma=0.3), output=LengthDist("fixed", 32), n=64),
        0.5,
    ),
}


def locustfile(name: str) -> Path:
    path = Path(__file__).parent / f"{name}.py"
    if not path.exists():
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return path
