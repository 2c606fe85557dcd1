"""Metered usage equals what the clients were told, for plain, streamed and abandoned calls."""

from __future__ import annotations

import math
import time

import httpx
import redis
from gwkit import plan

PROMPT = "count to twenty please"  # 22 bytes -> 6 prompt tokens at the upstream and in our estimate


def upstream_counter(base: str, name: str) -> int:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise AssertionError(name)


def test_usage_counters_equal_what_clients_received(fast_upstream, write_config, gateway, redis_url) -> None:
    up = fast_upstream(tokens=20, itl_ms=150)
    gw = gateway(write_config([up], {"acme": plan()}))
    client = gw.client(gw.new_key("acme"))
    msgs = [{"role": "user", "content": PROMPT}]
    seen_prompt = seen_completion = 0

    # non-streaming
    out = client.chat.completions.create(
        model="fast", messages=msgs, max_tokens=5, extra_body={"x_itl_ms": 0}
    )
    seen_prompt += out.usage.prompt_tokens
    seen_completion += out.usage.completion_tokens

    # streaming, client asks for usage: gets the usage chunk
    chunks = list(
        client.chat.completions.create(
            model="fast",
            messages=msgs,
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"x_itl_ms": 0},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    seen_prompt += chunks[-1].usage.prompt_tokens
    seen_completion += chunks[-1].usage.completion_tokens

    # streaming, client did not ask: the gateway asked upstream anyway and strips the usage chunk
    chunks = list(
        client.chat.completions.create(
            model="fast", messages=msgs, max_tokens=3, stream=True, extra_body={"x_itl_ms": 0}
        )
    )
    assert all(c.usage is None for c in chunks) and sum(1 for c in chunks if c.choices) == 3
    seen_prompt += math.ceil(len(PROMPT) / 4)
    seen_completion += 3

    # disconnect mid-stream after 4 chunks (150 ms apart): the upstream is closed, 4 tokens metered
    aborted_before = upstream_counter(up, "upstream_aborted_total")
    stream = client.chat.completions.create(model="fast", messages=msgs, max_tokens=20, stream=True)
    received = 0
    for chunk in stream:
        received += sum(1 for c in chunk.choices if c.delta.content)
        if received == 4:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while upstream_counter(up, "upstream_aborted_total") == aborted_before:
        assert time.monotonic() < deadline, "upstream request was not closed after the client left"
        time.sleep(0.02)
    seen_prompt += math.ceil(len(PROMPT) / 4)
    seen_completion += received

    deadline = time.monotonic() + 5
    while (totals := gw.usage("acme")["totals"])["requests"] < 4:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert totals["requests"] == 4
    assert totals["prompt_tokens"] == seen_prompt
    assert totals["completion_tokens"] == seen_completion
    assert totals["cost_micro_usd"] >= round(seen_prompt * 0.5 + seen_completion * 1.5) - 4

    with redis.Redis.from_url(redis_url) as r:
        events = r.xrange("events:{acme}")
        assert [e[1][b"status"] for e in events] == [b"200", b"200", b"200", b"499"]
        assert r.zcard("lease:{acme}") == 0


def test_a_request_id_is_metered_once(fast_upstream, write_config, gateway) -> None:
    gw = gateway(write_config([fast_upstream(tokens=5)], {"acme": plan()}))
    client = gw.client(gw.new_key("acme"))
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="fast",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": "retry-1"},
        )
        assert raw.headers["x-request-id"] == "retry-1"
    raw = client.chat.completions.with_raw_response.create(
        model="fast", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-request-id"].startswith("req_")
    report = gw.usage("acme")
    assert report["totals"]["requests"] == 2 and report["totals"]["completion_tokens"] == 10
    # the limits saw all four generations (1 prompt token + 5 each): replays get no free capacity
    assert report["quota"]["tokens_used"] == 4 * 6


def test_cost_is_integer_micro_dollars(fast_upstream, write_config, gateway) -> None:
    gw = gateway(write_config([fast_upstream(tokens=1000)], {"acme": plan(default_max_tokens=1000)}))
    client = gw.client(gw.new_key("acme"))
    out = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x" * 4000}])
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (1000, 1000)
    report = gw.usage("acme")
    # 1000 * $0.5/M + 1000 * $1.5/M = $0.002 = 2000 micro-dollars
    assert report["totals"]["cost_micro_usd"] == 2000 and report["totals"]["cost_usd"] == 0.002
    assert report["quota"]["tokens_used"] == 2000
