"""Model versions and rollouts through the admin API, against real gateways and a real Redis.

Weights set on one replica reach another replica without a restart; a rollout's steps,
promotion and aborts are driven by the SLO gate from live traffic and written to the audit log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
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


def _served(url: str) -> int:
    import httpx

    text = httpx.get(url + "/metrics", timeout=5).text
    return int(
        next(line.split()[1] for line in text.splitlines() if line.startswith("upstream_requests_total"))
    )


MSG = [{"role": "user", "content": "hello"}]


def test_live_assignment_is_sticky_per_conversation_and_routes_to_the_versions_backends(
    tmp_path: Path, fast_upstream: Callable[..., str], gateway: Callable[..., GatewayHandle]
) -> None:
    u1, u2 = fast_upstream(), fast_upstream()
    cfg = versions_config(tmp_path, [u1], [u2])
    data = yaml.safe_load(cfg.read_text())
    data["models"]["fast"]["versions"]["v1"]["weight"] = 50
    data["models"]["fast"]["versions"]["v2"]["weight"] = 50
    data["tenants"]["pinned"] = {"plan": "p", "versions": {"fast": "v1"}}
    cfg.write_text(yaml.safe_dump(data))
    gw = gateway(cfg)
    client = gw.client(gw.new_key("acme"))

    seen: dict[str, set[str]] = {}
    for _round in range(3):
        for conv in range(30):
            raw = client.chat.completions.with_raw_response.create(
                model="fast", messages=MSG, max_tokens=2, extra_headers={"x-conversation-id": f"conv-{conv}"}
            )
            seen.setdefault(f"conv-{conv}", set()).add(raw.headers["x-servelab-version"])
    assert all(len(v) == 1 for v in seen.values()), seen  # sticky
    per_version = [next(iter(v)) for v in seen.values()]
    n2 = per_version.count("v2")
    assert 0 < n2 < 30  # both versions get conversations at 50/50
    assert _served(u2) == 3 * n2 and _served(u1) == 3 * (30 - n2)  # each version on its own backends

    # The `user` field is the sticky id when there is no conversation header.
    by_user = {
        client.chat.completions.with_raw_response.create(
            model="fast", messages=MSG, max_tokens=2, user="alice"
        ).headers["x-servelab-version"]
        for _ in range(5)
    }
    assert len(by_user) == 1

    # A header picks a version for testing; an unknown one is a 400 that names the versions.
    picked = client.chat.completions.with_raw_response.create(
        model="fast", messages=MSG, max_tokens=2, extra_headers={"x-servelab-version": "v2"}
    )
    assert picked.headers["x-servelab-version"] == "v2"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="fast", messages=MSG, max_tokens=2, extra_headers={"x-servelab-version": "v7"}
        )
    resp = err.value.response
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "unknown_model_version"
    assert "versions: v1, v2" in resp.json()["error"]["message"]

    # A pinned tenant always gets its version, whatever the conversation.
    pinned = gw.client(gw.new_key("pinned"))
    got = {
        pinned.chat.completions.with_raw_response.create(
            model="fast", messages=MSG, max_tokens=2, extra_headers={"x-conversation-id": f"c{i}"}
        ).headers["x-servelab-version"]
        for i in range(10)
    }
    assert got == {"v1"}
    # The pin binds: the pinned tenant's own header cannot move it to another version.
    with pytest.raises(openai.PermissionDeniedError) as denied:
        pinned.chat.completions.create(
            model="fast", messages=MSG, max_tokens=2, extra_headers={"x-servelab-version": "v2"}
        )
    assert denied.value.response.json()["error"]["code"] == "version_pinned"
    events = gw.usage("acme")["recent_events"]
    assert {e["version"] for e in events} == {"v1", "v2"}


def _drive(client: Any, gw: GatewayHandle, timeout_s: float) -> dict[str, Any]:
    """Stream requests from many conversations until the rollout is no longer running."""
    deadline = time.monotonic() + timeout_s
    i = 0
    while time.monotonic() < deadline:
        for _ in range(10):
            i += 1
            try:
                stream = client.chat.completions.create(
                    model="fast",
                    messages=MSG,
                    max_tokens=8,
                    stream=True,
                    extra_headers={"x-conversation-id": f"conv-{i}"},
                )
                for _chunk in stream:
                    pass
            except openai.APIStatusError:
                pass  # a failing canary answers 503: that is what the gate must see
        with gw.admin() as c:
            st = c.get("/admin/v1/rollouts/fast").json()
        if st["status"] != "running":
            return dict(st)
    raise AssertionError(f"rollout still running after {timeout_s}s: {st}")


GATE = {"steps": [20, 50], "window_s": 1.0, "thresholds": {"min_requests": 5}}


# The slow canary (p95 TTFT) is covered end to end, with the CLI, in test_rollout_cli.py.
@pytest.mark.parametrize("canary", ["failing"])
def test_a_regressed_canary_is_rolled_back_by_itself_with_the_reason_audited(
    tmp_path: Path, fast_upstream: Callable[..., str], gateway: Callable[..., GatewayHandle], canary: str
) -> None:
    good = fast_upstream(tokens=8)
    bad = fast_upstream(tokens=8, ttft_ms=300) if canary == "slow" else f"http://127.0.0.1:{free_port()}"
    gw = gateway(versions_config(tmp_path, [good], [bad]))
    client = gw.client(gw.new_key("acme"))
    with gw.admin() as c:
        r = c.post("/admin/v1/rollouts", json={"model": "fast", "canary": "v2", **GATE})
        assert r.status_code == 201, r.text
    st = _drive(client, gw, timeout_s=90)
    assert st["status"] == "aborted"
    assert weights_of(gw) == {"v1": 100.0, "v2": 0.0}
    abort = st["audit"][0]
    assert (abort["action"], abort["actor"]) == ("abort", "slo-gate")
    expected = "p95 TTFT" if canary == "slow" else "error rate"
    assert expected in abort["reason"], abort
    window = abort["detail"]["window"]
    assert window["canary"]["requests"] >= 5
    if canary == "slow":
        assert window["canary"]["p95_ttft_s"] > window["baseline"]["p95_ttft_s"] + 0.05
    else:
        assert window["canary"]["error_rate"] == 1.0
    assert st["audit"][-1]["action"] == "start"


def test_a_healthy_canary_is_promoted_step_by_step(
    tmp_path: Path, fast_upstream: Callable[..., str], gateway: Callable[..., GatewayHandle]
) -> None:
    a, b = fast_upstream(tokens=8), fast_upstream(tokens=8)
    gw = gateway(versions_config(tmp_path, [a], [b]))
    client = gw.client(gw.new_key("acme"))
    with gw.admin() as c:
        assert c.post("/admin/v1/rollouts", json={"model": "fast", "canary": "v2", **GATE}).status_code == 201
    st = _drive(client, gw, timeout_s=90)
    assert st["status"] == "promoted", st
    assert weights_of(gw) == {"v1": 0.0, "v2": 100.0}
    actions = [e["action"] for e in reversed(st["audit"])]
    assert actions == ["start", "step", "promote"]
    assert [e["detail"]["canary_percent"] for e in reversed(st["audit"])] == [20.0, 50.0, 100.0]


def test_a_replica_without_the_versions_keeps_serving_during_a_rollout(
    tmp_path: Path,
    fast_upstream: Callable[..., str],
    gateway: Callable[..., GatewayHandle],
    write_config: Any,
) -> None:
    """Replicas in the middle of a config change share Redis: the old config has no v1/v2."""
    url = fast_upstream()
    new = gateway(versions_config(tmp_path, [url], [url]))
    old = gateway(write_config([url], tenants={"acme": plan()}))
    with new.admin() as c:
        assert c.post("/admin/v1/rollouts", json={"model": "fast", "canary": "v2", **GATE}).status_code == 201
    wait_for(lambda: weights_of(new) == {"v1": 80.0, "v2": 20.0}, 10, "the rollout's first step")
    client = old.client(old.new_key("acme"))
    for i in range(5):
        raw = client.chat.completions.with_raw_response.create(
            model="fast", messages=MSG, max_tokens=2, extra_headers={"x-conversation-id": str(i)}
        )
        assert raw.headers["x-servelab-version"] == "default"
    assert weights_of(old) == {"default": 100.0}


def test_the_gate_judges_the_whole_fleet_not_only_the_leader(
    tmp_path: Path, fast_upstream: Callable[..., str], gateway: Callable[..., GatewayHandle]
) -> None:
    """Canary traffic reaches only replica A and baseline traffic only replica B, so no single
    replica's own metrics can ever show both sides: only the fleet-wide window can decide."""
    good, slow = fast_upstream(tokens=8), fast_upstream(tokens=8, ttft_ms=200)
    cfg = versions_config(tmp_path, [good], [slow])
    a, b = gateway(cfg), gateway(cfg)
    key = a.new_key("acme")
    to_a, to_b = a.client(key), b.client(key)
    with a.admin() as c:
        assert c.post("/admin/v1/rollouts", json={"model": "fast", "canary": "v2", **GATE}).status_code == 201
    deadline = time.monotonic() + 90
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for client, version in ((to_a, "v2"), (to_b, "v1"), (to_b, "v1")):
            for _ in client.chat.completions.create(
                model="fast",
                messages=MSG,
                max_tokens=8,
                stream=True,
                extra_headers={"x-servelab-version": version},
            ):
                pass
        with b.admin() as c:
            st = c.get("/admin/v1/rollouts/fast").json()
        if st["status"] != "running":
            break
    assert st["status"] == "aborted", st
    window = st["audit"][0]["detail"]["window"]
    assert window["replicas"] == 2
    assert "p95 TTFT" in st["audit"][0]["reason"]
