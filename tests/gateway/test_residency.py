"""Data residency: a tenant's requests are served only by backends in its regions, and when none
of them is healthy the answer is a clear 503 (`no_backend_in_region`), never another region.
Real gateway, real Redis, real upstream processes, the openai SDK."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest
import yaml
from gwkit import GatewayHandle, plan

from servelab.procs import Child, free_port, python_module, wait_http_ok


def _upstream(spawn: Callable[..., Child]) -> tuple[str, Child]:
    port = free_port()
    child = spawn(
        f"upstream-{port}", python_module("loadtest.bench.upstream", "--port", str(port), "--model", "fast")
    )
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(url + "/health", timeout_s=20, proc=child.popen)
    return url, child


def _served(url: str) -> int:
    import httpx

    text = httpx.get(url + "/metrics", timeout=5).text
    return int(
        next(line.split()[1] for line in text.splitlines() if line.startswith("upstream_requests_total"))
    )


def test_residency_holds_when_the_only_in_region_backend_is_down(
    tmp_path: Path, spawn: Callable[..., Child], gateway: Callable[..., GatewayHandle]
) -> None:
    eu, eu_child = _upstream(spawn)
    us, _ = _upstream(spawn)
    cfg = {
        "plans": {"p": plan()},
        "tenants": {
            "eu-bank": {"plan": "p", "regions": ["eu-west"]},
            "globex": {"plan": "p"},
            "apac-co": {"plan": "p", "regions": ["apac"]},
        },
        "models": {"fast": {"backends": [eu, us]}},
        "regions": {"eu-west": [eu], "us-east": [us], "apac": []},
    }
    path = tmp_path / "residency.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = gateway(path)
    bank = gw.client(gw.new_key("eu-bank"))
    globex = gw.client(gw.new_key("globex"))
    msg = [{"role": "user", "content": "hello"}]

    for _ in range(10):
        bank.chat.completions.create(model="fast", messages=msg, max_tokens=4)
    assert (_served(eu), _served(us)) == (10, 0)
    for _ in range(10):
        globex.chat.completions.create(model="fast", messages=msg, max_tokens=4)
    us_before = _served(us)

    eu_child.stop()
    for _ in range(5):
        with pytest.raises(openai.APIStatusError) as err:
            bank.chat.completions.create(model="fast", messages=msg, max_tokens=4)
        assert err.value.status_code == 503
        body = err.value.response.json()["error"]
        assert body["code"] == "no_backend_in_region"
        assert "eu-west" in body["message"] and "not sent to another region" in body["message"]
    assert _served(us) == us_before  # nothing of eu-bank's went to us-east
    # The unrestricted tenant fails over to the healthy region as before.
    globex.chat.completions.create(model="fast", messages=msg, max_tokens=4)
    assert _served(us) == us_before + 1

    apac = gw.client(gw.new_key("apac-co"))
    with pytest.raises(openai.APIStatusError) as err:
        apac.chat.completions.create(model="fast", messages=msg, max_tokens=4)
    assert err.value.status_code == 503
    assert err.value.response.json()["error"]["code"] == "no_backend_in_region"

    events = gw.usage("eu-bank")["recent_events"]
    served = [e for e in events if e["status"] == "200"]
    assert served and {e["region"] for e in served} == {"eu-west"}
    assert {e["version"] for e in events} == {"default"}
    assert {e["region"] for e in events if e["status"] == "503"} == {""}
