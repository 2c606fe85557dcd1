"""The contract between the runner (servelab CLI process) and the Locust processes it starts.

The runner writes `config.json` into the run folder; every Locust process (standalone, master or
worker) reads it, plus the API keys from the environment (`SERVELAB_LT_KEYS`, a JSON object
tenant -> key) so that secrets never land in the run folder. A `Stream` is one traffic class:
a tenant with its key, and either an open-loop schedule (steps of rates) or closed-loop users.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from loadtest.arrivals import Step

RUN_DIR_ENV = "SERVELAB_LT_RUN_DIR"
KEYS_ENV = "SERVELAB_LT_KEYS"


class StepModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate_rps: float
    duration_s: float

    def to_step(self) -> Step:
        return Step(self.rate_rps, self.duration_s)


class Stream(BaseModel):
    """One traffic class: a tenant sending open-loop (steps) or closed-loop (users, think time)."""

    model_config = ConfigDict(extra="forbid")
    tenant: str
    users: int = Field(description="greenlets for this stream in each Locust process")
    steps: list[StepModel] = Field(default_factory=list, description="open loop: rate steps; empty: closed")
    think_s: float = 0.0

    @property
    def open_loop(self) -> bool:
        return bool(self.steps)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scenario: str
    target: str
    model: str
    endpoint: Literal["chat", "completions"] = "chat"
    streams: list[Stream]
    duration_s: float
    burstiness: float = 1.0
    seed: int = 0
    workers: int = 1
    ignore_eos: bool = True
    request_timeout_s: float = 600.0
    fire_itl_events: bool = True
    user_steps: list[int] = Field(
        default_factory=list,
        description="closed-loop sweep: total users per step, each duration_s / len long",
    )

    def save(self, run_dir: Path) -> None:
        (run_dir / "config.json").write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> RunConfig:
        return cls.model_validate_json((run_dir / "config.json").read_text())


def keys_from_env() -> dict[str, str]:
    raw = os.environ.get(KEYS_ENV, "{}")
    keys = json.loads(raw)
    if not isinstance(keys, dict):
        raise ValueError(f"{KEYS_ENV} must be a JSON object tenant -> key")
    return {str(k): str(v) for k, v in keys.items()}
