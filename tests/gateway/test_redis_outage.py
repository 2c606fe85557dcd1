"""Redis stopped and started again mid-run: the configured failure mode, then recovery by itself."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest
from gwkit import GatewayHandle, plan

from servelab.redisproc import start_redis

MSG = [{"role": "user", "content": "hi"}]


def metric(gw: GatewayHandle, name: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_outage_then_recovery(mode: str, tmp_path: Path, fast_upstream, write_config, gateway) -> None:
    data = tmp_path / "redis"
    own = start_redis(data, appendonly=True)  # AOF: keys survive the restart, as in production
    try:
        gw = gateway(
            write_config([fast_upstream(tokens=3)], {"acme": plan()}),
            redis_url=own.url,
            redis_failure_mode=mode,
        )
        client = gw.client(gw.new_key("acme"))
        client.chat.completions.create(model="fast", messages=MSG)

        own.stop()
        if mode == "closed":
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="fast", messages=MSG)
            assert info.value.status_code == 503 and info.value.body["code"] == "redis_unavailable"
            assert info.value.body["type"] == "service_unavailable"
        else:
            out = client.chat.completions.create(model="fast", messages=MSG)  # served, unlimited, unmetered
            assert out.usage.completion_tokens == 3
            assert metric(gw, "servelab_gateway_fail_open_requests_total") >= 1
        assert metric(gw, "servelab_gateway_redis_up") == 0
        r = httpx.get(f"{gw.url}/readyz")
        assert r.status_code == 503 and r.json()["checks"]["redis"].startswith("error")

        own = start_redis(data, port=own.port, appendonly=True)
        # Served so far: the request before the outage, plus (open mode) the one during it. Until the
        # hot-path connection is back, a request in open mode is served fail-open and unmetered, so
        # poll until the gateway says Redis is up and a request was metered again; then every
        # served request must be metered except the fail-open ones (a count, not a race).
        served = 1 if mode == "closed" else 2
        deadline = time.monotonic() + 10
        while True:
            try:
                client.chat.completions.create(model="fast", messages=MSG)
                served += 1
                up = metric(gw, "servelab_gateway_redis_up") == 1
                if up and gw.usage("acme")["totals"]["requests"] >= 2:
                    break
            except openai.InternalServerError:
                pass
            assert time.monotonic() < deadline, "gateway did not recover after Redis came back"
            time.sleep(0.05)
        assert httpx.get(f"{gw.url}/readyz").status_code == 200
        fail_open = metric(gw, "servelab_gateway_fail_open_requests_total") if mode == "open" else 0
        assert mode == "closed" or fail_open >= 1
        # before and after are metered; the outage one (503 or fail-open) is not
        assert gw.usage("acme")["totals"]["requests"] == served - fail_open
    finally:
        own.stop()
