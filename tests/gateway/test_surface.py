"""The OpenAI-compatible surface and the admin CLI, against a real gateway."""

from __future__ import annotations

import contextlib
import json

import httpx
from gwkit import ADMIN_TOKEN, plan
from typer.testing import CliRunner

from servelab.cli import app as cli_app


def test_models_usage_and_completions(fast_upstream, write_config, gateway) -> None:
    cfg = write_config([fast_upstream(tokens=4)], {"acme": plan(), "other": plan()})
    gw = gateway(cfg)
    client = gw.client(gw.new_key("acme"))
    assert [m.id for m in client.models.list()] == ["fast"]  # 'other' model exists but is not allowed

    out = client.completions.create(model="fast", prompt="abcdefgh", max_tokens=2)
    assert out.usage.completion_tokens == 2 and out.choices[0].text
    chunks = list(
        client.completions.create(
            model="fast", prompt="abcdefgh", max_tokens=3, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage.completion_tokens == 3

    other = gw.client(gw.new_key("other"))
    other.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    mine = httpx.get(f"{gw.url}/v1/usage", headers={"authorization": f"Bearer {client.api_key}"}).json()
    assert mine["tenant"] == "acme" and mine["totals"]["requests"] == 2  # own tenant only
    assert mine["totals"]["completion_tokens"] == 5 and mine["data"][0]["model"] == "fast"


def test_health_ready_metrics(fast_upstream, write_config, gateway) -> None:
    gw = gateway(write_config([fast_upstream()], {"acme": plan(requests_per_minute=1)}))
    assert httpx.get(f"{gw.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["redis"] == "ok"
    client = gw.client(gw.new_key("acme"))
    msgs = [{"role": "user", "content": "x"}]
    list(client.chat.completions.create(model="fast", messages=msgs, stream=True))
    with contextlib.suppress(Exception):
        client.chat.completions.create(model="fast", messages=msgs)
    text = httpx.get(f"{gw.url}/metrics").text
    for needle in (
        'servelab_gateway_requests_total{model="fast",status="200",tenant="acme"} 1.0',
        'servelab_gateway_requests_total{model="fast",status="429",tenant="acme"} 1.0',
        'servelab_gateway_rate_limited_total{limit="requests",tenant="acme"} 1.0',
        'servelab_gateway_completion_tokens_total{model="fast",tenant="acme"} 16.0',
        "servelab_gateway_admission_seconds_count 2.0",
        'servelab_gateway_time_to_first_token_seconds_count{model="fast"} 1.0',
        'servelab_gateway_time_per_output_token_seconds_count{model="fast"} 1.0',
        'servelab_gateway_request_duration_seconds_count{model="fast"} 1.0',
        "servelab_gateway_in_flight_requests 0.0",
        "servelab_gateway_redis_up 1.0",
    ):
        assert needle in text, needle


def test_cli_keys_tenants_usage(fast_upstream, write_config, gateway) -> None:
    gw = gateway(write_config([fast_upstream(tokens=2)], {"acme": plan()}))
    runner = CliRunner()
    common = ["--url", gw.url, "--admin-token", ADMIN_TOKEN]

    res = runner.invoke(cli_app, ["keys", "create", "acme", "--name", "ci", "--json", *common])
    assert res.exit_code == 0, res.output
    created = json.loads(res.output)
    assert created["key"].startswith("sk-") and created["tenant"] == "acme"
    gw.client(created["key"]).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "x"}]
    )

    res = runner.invoke(cli_app, ["keys", "list", "acme", "--json", *common])
    listed = json.loads(res.output)
    assert [k["key_id"] for k in listed] == [created["key_id"]]
    assert created["key"] not in res.output  # only the digest is stored, the key is never shown again

    res = runner.invoke(cli_app, ["tenants", "list", "--json", *common])
    assert json.loads(res.output)[0]["tenant"] == "acme"

    res = runner.invoke(cli_app, ["tenants", "set-limits", "acme", "--requests-per-minute", "7", *common])
    assert res.exit_code == 0 and json.loads(res.output)["plan"]["requests_per_minute"] == 7, res.output
    res = runner.invoke(cli_app, ["tenants", "reset-limits", "acme", *common])
    assert json.loads(res.output)["runtime_overrides"] == {}

    res = runner.invoke(cli_app, ["usage", "acme", *common])
    assert res.exit_code == 0 and "1 requests" in res.output, res.output

    res = runner.invoke(cli_app, ["keys", "revoke", created["key_id"], *common])
    assert res.exit_code == 0 and "revoked" in res.output
    res = runner.invoke(cli_app, ["keys", "list", "acme", "--json", *common])
    assert json.loads(res.output)[0]["revoked_at"] is not None

    res = runner.invoke(cli_app, ["keys", "create", "acme", "--url", gw.url, "--admin-token", "bad"])
    assert res.exit_code == 1
