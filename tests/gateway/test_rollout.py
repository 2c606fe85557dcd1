"""Model versions and rollouts through the admin API, against real gateways and a real Redis.

Weights set on one replica reach another replica without a restart; a rollout's steps,
promotion and aborts are driven by the SLO gate from live traffic and written to the audit log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from gwkit import GatewayHandle, plan

from servelab.procs import free_port


def versions_config(tmp_path: Path, v1: list[str], v2: list[str], **tenant: Any) -> Path:
    data = {
        "plans": {"p": plan()},
        "tenants": {"acme": {"plan": "p", **tenant}},
        "models": {
            "fast": {
                "versions": {
                    "v1": {"backends": v1, "weight": 100},
                    "v2": {"backends": v2, "weight": 0},
                }
            }
        },
    }
    path = tmp_path / f"versions-{free_port()}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def weights_of(gw: GatewayHandle) -> dict[str, float]:
    with gw.admin() as c:
        r = c.get("/admin/v1/models/fast/versions")
        assert r.status_code == 200, r.text
        return {v["version"]: v["weight"] for v in r.json()["versions"]}


def test_weights_set_on_one_replica_reach_the_other_without_restart(
    tmp_path: Path, fast_upstream: Callable[..., str], gateway: Callable[..., GatewayHandle]
) -> None:
    url = fast_upstream()
    cfg = versions_config(tmp_path, [url], [url])
    a, b = gateway(cfg), gateway(cfg)
    assert weights_of(b) == {"v1": 100.0, "v2": 0.0}
    with a.admin() as c:
        r = c.put(
            "/admin/v1/models/fast/weights", json={"weights": {"v1": 70, "v2": 30}, "reason": "by hand"}
        )
        assert r.status_code == 200, r.text
    wait_for(lambda: weights_of(b) == {"v1": 70.0, "v2": 30.0}, 10, "replica b to apply the new weights")
    with b.admin() as c:
        bad = c.put("/admin/v1/models/fast/weights", json={"weights": {"v9": 1}})
        assert bad.status_code == 400
        assert "no version 'v9'" in bad.json()["error"]["message"]
        entries = c.get("/admin/v1/audit", params={"model": "fast"}).json()["data"]
    assert entries[0]["action"] == "set-weights"
    assert entries[0]["reason"] == "by hand"
    assert entries[0]["detail"]["weights"] == {"v1": 70.0, "v2": 30.0}


def test_operator_abort_restores_the_baseline_and_is_audited(
    tmp_path: Path, fast_upstream: Callable[..., str], gateway: Callable[..., GatewayHandle]
) -> None:
    url = fast_upstream()
    gw = gateway(versions_config(tmp_path, [url], [url]))
    with gw.admin() as c:
        r = c.post(
            "/admin/v1/rollouts", json={"model": "fast", "canary": "v2", "steps": [10, 50], "window_s": 600}
        )
        assert r.status_code == 201, r.text
        assert r.json()["baseline"] == "v1"
        assert weights_of(gw) == {"v1": 90.0, "v2": 10.0}
        again = c.post("/admin/v1/rollouts", json={"model": "fast", "canary": "v2"})
        assert again.status_code == 400 and again.json()["error"]["code"] == "rollout_conflict"
        r = c.post("/admin/v1/rollouts/fast/abort", json={"reason": "pager went off"})
        assert r.status_code == 200 and r.json()["status"] == "aborted"
        assert weights_of(gw) == {"v1": 100.0, "v2": 0.0}
        st = c.get("/admin/v1/rollouts/fast").json()
    assert [e["action"] for e in st["audit"][:2]] == ["abort", "start"]
    assert st["audit"][0]["reason"] == "pager went off"
    assert st["audit"][0]["actor"] == "admin"


@pytest.mark.parametrize("bad", [{"steps": [50, 10]}, {"steps": [100]}, {"canary": "v9"}, {"baseline": "v2"}])
def test_bad_rollout_requests_are_refused_with_a_reason(
    tmp_path: Path,
    fast_upstream: Callable[..., str],
    gateway: Callable[..., GatewayHandle],
    bad: dict[str, Any],
) -> None:
    url = fast_upstream()
    gw = gateway(versions_config(tmp_path, [url], [url]))
    with gw.admin() as c:
        r = c.post("/admin/v1/rollouts", json={"model": "fast", "canary": "v2", **bad})
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["message"]
