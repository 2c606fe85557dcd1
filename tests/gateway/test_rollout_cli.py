"""`servelab rollout` end to end against a real gateway.

`start --watch` (a real subprocess) follows a rollout while traffic flows and exits 3 when the
SLO gate rolls a slow canary back, printing the decision; `weights`, `status`, `audit` and
`abort` (in-process through Typer's runner, to keep the test short) read the same state.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import openai
from gwkit import ADMIN_TOKEN, GatewayHandle
from test_rollout import versions_config
from typer.testing import CliRunner

from servelab.cli import app


def _cli(gw: GatewayHandle, *args: str) -> list[str]:
    return [sys.executable, "-m", "servelab.cli", "rollout", *args, "--url", gw.url]


ENV = {"SERVELAB_ADMIN_TOKEN": ADMIN_TOKEN, "PATH": "/usr/bin:/bin"}


def test_cli_watch_exits_3_when_the_gate_rolls_back_and_shows_why(
    tmp_path: Path, fast_upstream: Callable[..., str], gateway: Callable[..., GatewayHandle]
) -> None:
    good, slow = fast_upstream(tokens=8), fast_upstream(tokens=8, ttft_ms=300)
    gw = gateway(versions_config(tmp_path, [good], [slow]))
    client = gw.client(gw.new_key("acme"))
    runner = CliRunner(env={"SERVELAB_ADMIN_TOKEN": ADMIN_TOKEN})

    def run(*args: str) -> object:
        return runner.invoke(app, ["rollout", *args, "--url", gw.url])

    shown = run("weights", "fast")
    assert shown.exit_code == 0, shown.output
    assert "v1" in shown.output and "weight=100" in shown.output

    watch = subprocess.Popen(
        _cli(
            gw, "start", "fast", "v2", "--steps", "20,50", "--window-s", "1", "--min-requests", "5", "--watch"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + 90
    i = 0
    while watch.poll() is None and time.monotonic() < deadline:
        i += 1
        try:
            for _ in client.chat.completions.create(
                model="fast",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=8,
                stream=True,
                extra_headers={"x-conversation-id": f"c{i}"},
            ):
                pass
        except openai.APIError:
            pass
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 3, out + err
    assert "abort" in out and "slo-gate" in out and "p95 TTFT" in out
    assert "rollout aborted" in out

    status = subprocess.run(_cli(gw, "status", "fast"), capture_output=True, text=True, env=ENV, timeout=60)
    assert status.returncode == 0 and "aborted" in status.stdout
    audit = subprocess.run(
        _cli(gw, "audit", "--model", "fast"), capture_output=True, text=True, env=ENV, timeout=60
    )
    assert audit.stdout.index("start") < audit.stdout.index("abort")
    again = subprocess.run(_cli(gw, "abort", "fast"), capture_output=True, text=True, env=ENV, timeout=60)
    assert again.returncode == 1 and "No rollout is running" in again.stderr
    no_token = subprocess.run(
        _cli(gw, "status", "fast"), capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60
    )
    assert no_token.returncode != 0 and "admin token" in no_token.stderr
