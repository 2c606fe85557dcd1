"""Every bad input of the issue's item 7 gets its status and an OpenAI error body; nothing is metered."""

from __future__ import annotations

import httpx
import openai
import pytest
import redis
from gwkit import plan

from servelab.procs import free_port

MSG = [{"role": "user", "content": "hi"}]


def check(exc: openai.APIStatusError, status: int, code: str, param: str | None = None) -> None:
    assert exc.status_code == status, (exc.status_code, exc.body)
    body = exc.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["param"] == param
    assert body["error"]["message"]


def test_client_errors(fast_upstream, write_config, gateway, redis_url) -> None:
    cfg = write_config([fast_upstream()], {"acme": plan()})
    gw = gateway(cfg, max_body_bytes=2048)
    key = gw.new_key("acme")
    good = gw.client(key)

    with pytest.raises(openai.AuthenticationError) as info:
        gw.client("sk-not-a-key").chat.completions.create(model="fast", messages=MSG)
    check(info.value, 401, "invalid_api_key")
    with pytest.raises(openai.PermissionDeniedError) as info:
        good.chat.completions.create(model="other", messages=MSG)
    check(info.value, 403, "model_not_allowed", "model")
    with pytest.raises(openai.NotFoundError) as info:
        good.chat.completions.create(model="gpt-9", messages=MSG)
    check(info.value, 404, "model_not_found", "model")
    with pytest.raises(openai.UnprocessableEntityError) as info:
        good.chat.completions.create(model="fast", messages=MSG, max_tokens=-3)
    check(info.value, 422, "invalid_value", "max_tokens")
    with pytest.raises(openai.BadRequestError) as info:
        good.completions.create(model="fast", prompt=None)  # type: ignore[arg-type]
    check(info.value, 400, "missing_required_parameter", "prompt")
    with pytest.raises(openai.APIStatusError) as info:
        good.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x" * 5000}])
    check(info.value, 413, "request_too_large")

    raw = httpx.post(
        f"{gw.url}/v1/chat/completions",
        content=b"{oops",
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    assert raw.headers["x-request-id"].startswith("req_")

    with redis.Redis.from_url(redis_url) as r:
        assert r.zcard("lease:{acme}") == 0
    assert gw.usage("acme")["totals"]["requests"] == 0


def test_empty_messages_is_422(fast_upstream, write_config, gateway) -> None:
    gw = gateway(write_config([fast_upstream()], {"acme": plan()}))
    with pytest.raises(openai.UnprocessableEntityError) as info:
        gw.client(gw.new_key("acme")).chat.completions.create(model="fast", messages=[])
    check(info.value, 422, "invalid_value", "messages")


def test_backend_failures(fast_upstream, write_config, gateway, redis_url) -> None:
    up = fast_upstream()
    dead = f"http://127.0.0.1:{free_port()}"
    gw_ok = gateway(write_config([up], {"acme": plan()}), upstream_read_timeout_s=0.3)
    client = gw_ok.client(gw_ok.new_key("acme"))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fast", messages=MSG, extra_body={"x_fail": 500})
    check(info.value, 502, "bad_gateway")
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fast", messages=MSG, extra_body={"x_fail": 503})
    check(info.value, 503, "backend_unavailable")
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fast", messages=MSG, extra_body={"x_ttft_ms": 2000})
    check(info.value, 504, "backend_timeout")

    gw_dead = gateway(write_config([dead], {"acme": plan()}))
    with pytest.raises(openai.InternalServerError) as info:
        gw_dead.client(gw_dead.new_key("acme")).chat.completions.create(model="fast", messages=MSG)
    check(info.value, 503, "backend_unavailable")

    assert gw_ok.usage("acme")["totals"]["requests"] == 0  # nothing metered that was not served
    with redis.Redis.from_url(redis_url) as r:
        assert r.zcard("lease:{acme}") == 0
        statuses = [e[1][b"status"] for e in r.xrange("events:{acme}")]
    assert statuses == [b"502", b"503", b"504", b"503"]


def test_second_backend_takes_over_when_one_refuses(fast_upstream, write_config, gateway) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway(write_config([dead, fast_upstream(tokens=3)], {"acme": plan()}))
    client = gw.client(gw.new_key("acme"))
    for _ in range(4):
        assert client.chat.completions.create(model="fast", messages=MSG).usage.completion_tokens == 3


def test_every_refusing_backend_is_skipped_before_a_503(fast_upstream, write_config, gateway) -> None:
    # Two of three replicas refuse (a killed one and a spare that never started), listed first, and
    # their down marks expire before the next request: each request must still reach the live one.
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    gw = gateway(write_config([*dead, fast_upstream(tokens=3)], {"acme": plan()}), backend_down_s=0.001)
    client = gw.client(gw.new_key("acme"))
    for _ in range(6):
        assert client.chat.completions.create(model="fast", messages=MSG).usage.completion_tokens == 3
    assert gw.usage("acme")["totals"]["requests"] == 6


def test_admin_api_needs_the_admin_token(fast_upstream, write_config, gateway) -> None:
    gw = gateway(write_config([fast_upstream()], {"acme": plan()}))
    r = httpx.post(f"{gw.url}/admin/v1/tenants/acme/keys", headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token"
    with gw.admin() as admin:
        assert admin.post("/admin/v1/tenants/nobody/keys").status_code == 404
        assert admin.delete("/admin/v1/keys/key_nope").status_code == 404
        r = admin.post("/admin/v1/tenants/acme/keys", json={"name": 5})
        assert r.status_code == 422 and r.json()["error"]["param"] == "name"


def test_unknown_routes_and_methods_get_openai_errors(fast_upstream, write_config, gateway) -> None:
    gw = gateway(write_config([fast_upstream()], {"acme": plan()}))
    r = httpx.get(f"{gw.url}/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.delete(f"{gw.url}/v1/models")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_backend_4xx_passes_through_unmetered(fast_upstream, write_config, gateway) -> None:
    gw = gateway(write_config([fast_upstream()], {"acme": plan()}))
    client = gw.client(gw.new_key("acme"))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fast", messages=MSG, extra_body={"x_fail": 400})
    check(info.value, 400, "upstream_rejected")
    assert "injected failure 400" in info.value.body["message"]
    assert gw.usage("acme")["totals"]["requests"] == 0
