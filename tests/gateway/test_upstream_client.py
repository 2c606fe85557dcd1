"""The lean backend client under the failures it must survive: restarts and silent backends."""

from __future__ import annotations

import time

import httpx
import redis
from gwkit import plan

from servelab.procs import free_port, python_module, wait_http_ok

MSG = [{"role": "user", "content": "hi"}]


def test_pooled_connection_to_a_restarted_backend_is_not_reused(spawn, write_config, gateway) -> None:
    port = free_port()
    argv = python_module("loadtest.bench.upstream", "--port", str(port), "--tokens", "2")
    first = spawn("up-1", argv)
    wait_http_ok(f"http://127.0.0.1:{port}/health", timeout_s=20, proc=first.popen)
    gw = gateway(write_config([f"http://127.0.0.1:{port}"], {"acme": plan()}))
    client = gw.client(gw.new_key("acme"))
    assert client.chat.completions.create(model="fast", messages=MSG).usage.completion_tokens == 2
    first.stop()  # the gateway's idle keep-alive connection dies with it
    second = spawn("up-2", argv)
    wait_http_ok(f"http://127.0.0.1:{port}/health", timeout_s=20, proc=second.popen)
    for _ in range(3):
        assert client.chat.completions.create(model="fast", messages=MSG).usage.completion_tokens == 2


def test_silent_backend_mid_stream_ends_the_stream_and_meters_what_came(
    fast_upstream, write_config, gateway, redis_url
) -> None:
    up = fast_upstream(tokens=3, itl_ms=1500)
    gw = gateway(write_config([up], {"acme": plan()}), upstream_read_timeout_s=0.5)
    client = gw.client(gw.new_key("acme"))
    chunks = list(client.chat.completions.create(model="fast", messages=MSG, stream=True))
    assert sum(1 for c in chunks if c.choices) == 1  # the first token, then 1.5 s of silence
    deadline = time.monotonic() + 5
    while gw.usage("acme")["totals"]["requests"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with redis.Redis.from_url(redis_url) as r:
        ((_, event),) = r.xrange("events:{acme}")
        assert event[b"status"] == b"502" and event[b"completion_tokens"] == b"1"
        assert r.zcard("lease:{acme}") == 0
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert f'servelab_gateway_backend_errors_total{{backend="{up}",kind="stream"}} 1.0' in metrics
