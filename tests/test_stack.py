"""`servelab up` as a user runs it: a real process tree that answers, then stops without orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from servelab.procs import free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat it as gone (its parent just has not reaped it yet).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _poll(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.mark.slow
def test_up_serves_then_stops_everything_on_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["COLUMNS"] = "80"  # the table must show whole keys on an 80-column terminal
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "servelab.cli",
            "up",
            "--state-dir",
            str(state),
            "--gateway-port",
            str(free_port()),
            "--backend-port",
            str(free_port()),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        stack_json = state / "stack.json"
        _poll(lambda: stack_json.exists() or proc.poll() is not None, 90, "stack.json")
        assert proc.poll() is None, (tmp_path / "up.log").read_text()
        info = json.loads(stack_json.read_text())
        assert {"acme", "tiny"} <= set(info["keys"])
        assert all(key.startswith("sk-") for key in info["keys"].values())
        _poll(lambda: "ready" in (tmp_path / "up.log").read_text(), 30, "the `up` table")
        shown = (tmp_path / "up.log").read_text()
        for key in info["keys"].values():
            assert key in shown, f"key {key} not shown whole in the `up` table:\n{shown}"

        client = openai.OpenAI(base_url=info["gateway_url"] + "/v1", api_key=info["keys"]["acme"])
        out = client.chat.completions.create(
            model=info["model"], messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )
        assert out.usage is not None and out.usage.completion_tokens == 4

        pids = list(info["pids"].values())
        assert pids and all(_alive(p) for p in pids)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        _poll(lambda: not any(_alive(p) for p in pids), 10, "every child of the stack to exit")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
