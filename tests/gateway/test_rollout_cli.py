"""`servelab rollout` end to end against a real gateway (the commands run in-process through
Typer's runner: they are HTTP clients of the admin API, so nothing is lost and seconds are saved).

`start --watch` follows a rollout while traffic flows and exits 3 when the SLO gate rolls a slow
canary back, printing the decision; `weights`, `status`, `audit` and `abort` read the same state;
no admin token is a clear error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
from gwkit import ADMIN_TOKEN, GatewayHandle
from test_rollout import versions_config
from typer.testing import CliRunner

from servelab.cli import app


def test_cli_watch_exits_3_when_the_gate_rolls_back_and_shows_why(
    tmp_path: Path, fast_upstream: Callable[..., str], gateway: Callable[..., GatewayHandle]
) -> None:
    good, slow = fast_upstream(tokens=8), fast_upstream(tokens=8, ttft_ms=200)
    gw = gateway(versions_config(tmp_path, [good], [slow]))
    client = gw.client(gw.new_key("acme"))
    runner = CliRunner(env={"SERVELAB_ADMIN_TOKEN": ADMIN_TOKEN})

    def run(*args: str) -> Any:
        return runner.invoke(app, ["rollout", *args, "--url", gw.url])

    shown = run("weights", "fast")
    assert shown.exit_code == 0, shown.output
    assert "v1" in shown.output and "weight=100" in shown.output

    result: list[Any] = []
    start = ["start", "fast", "v2", "--steps", "20,50", "--window-s", "1", "--min-requests", "5", "--watch"]
    watcher = threading.Thread(target=lambda: result.append(run(*start)), daemon=True)
    watcher.start()
    deadline = time.monotonic() + 90
    i = 0
    while watcher.is_alive() and time.monotonic() < deadline:
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
    watcher.join(timeout=30)
    assert result, "rollout start --watch did not finish"
    out = result[0].output
    assert result[0].exit_code == 3, out
    assert "abort" in out and "slo-gate" in out and "p95 TTFT" in out
    assert "rollout aborted" in out

    with gw.admin() as c:
        abort = c.get("/admin/v1/audit", params={"model": "fast"}).json()["data"][0]
    assert (abort["action"], abort["actor"]) == ("abort", "slo-gate")
    window = abort["detail"]["window"]
    assert window["canary"]["p95_ttft_s"] > window["baseline"]["p95_ttft_s"] + 0.05
    assert abort["detail"]["weights"] == {"v1": 100.0, "v2": 0.0}

    status = run("status", "fast")
    assert status.exit_code == 0 and "aborted" in status.output
    audit = run("audit", "--model", "fast")
    assert audit.output.index("start") < audit.output.index("abort")
    again = run("abort", "fast")
    assert again.exit_code == 1 and "No rollout is running" in again.output
    no_token = CliRunner(env={"SERVELAB_ADMIN_TOKEN": ""}).invoke(
        app, ["rollout", "status", "fast", "--url", gw.url]
    )
    assert no_token.exit_code != 0 and "admin token" in no_token.output
