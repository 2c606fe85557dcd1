"""A `servelab up` process with the options every scenario needs, for the scenario tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servelab.procs import free_port

UP_ARGS = ("--backends", "2", "--gateways", "2", "--max-num-seqs", "8")


@contextmanager
def scenario_stack(state: Path, spare: bool = False) -> Iterator[Path]:
    """`servelab up` with 2 replicas, 2 gateways and the fair queue; `spare` adds a replica that is
    in the gateway's config but not started (scale-out and cold-start start it).

    No spare for backend-down: a dead spare in the config is a second refused backend, and the
    gateway retries a refused connection once only, so a request can meet both.
    """
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    log = (state.parent / "up.log").open("wb")
    argv = [
        sys.executable,
        "-m",
        "servelab.cli",
        "up",
        "--state-dir",
        str(state),
        "--gateway-port",
        str(free_port()),
        "--backend-port",
        "0",
        *UP_ARGS,
        *(["--spare-backends", "1"] if spare else []),
    ]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (state / "stack.json").exists():
            assert proc.poll() is None, (state.parent / "up.log").read_text()
            assert time.monotonic() < deadline, "servelab up not ready after 120 s"
            time.sleep(0.1)
        assert json.loads((state / "stack.json").read_text())["keys"]
        yield state
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def run_scenario(state: Path, name: str, out: Path, timeout_s: float = 240) -> tuple[int, dict, str]:
    """`servelab scenario NAME --short`; returns (exit code, verdict JSON, output)."""
    verdict = out / f"{name}.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "servelab.cli",
            "scenario",
            name,
            "--short",
            "--state-dir",
            str(state),
            "--json",
            str(verdict),
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "COLUMNS": "160"},
    )
    text = proc.stdout + proc.stderr
    return proc.returncode, json.loads(verdict.read_text()) if verdict.exists() else {}, text
