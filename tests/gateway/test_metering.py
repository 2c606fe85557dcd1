"""Metered usage equals what the clients were told, for plain, streamed and abandoned calls."""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import redis
from gwkit import plan

PROMPT = "count to twenty please"  # 22 bytes: 6 tokens by the bytes/4 estimate


def truth(up: str) -> dict[str, Any]:
    return dict(httpx.get(f"{up}/truth").json()["requests"])


def test_usage_counters_equal_what_the_backend_counted(
    truth_upstream, write_config, gateway, redis_url
) -> None:
    # truth_upstream counts prompt tokens with its own tokenizer (9 for PROMPT's chat, where the
    # gateway's estimate is 6) and records what it wrote: metering is checked against the backend.
    up = truth_upstream()
    gw = gateway(write_config([up], {"acme": plan()}))
    client = gw.client(gw.new_key("acme"))
    msgs = [{"role": "user", "content": PROMPT}]
    estimate = math.ceil(len(PROMPT) / 4)

    def rid(name: str) -> dict[str, Any]:
        return {"extra_headers": {"x-request-id": name}}

    # non-streaming
    out = client.chat.completions.create(model="fast", messages=msgs, max_tokens=5, **rid("plain"))
    assert out.usage is not None and out.usage.prompt_tokens != estimate

    # streaming, client asks for usage: gets the usage chunk
    chunks = list(
        client.chat.completions.create(
            model="fast",
            messages=msgs,
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
            **rid("usage"),
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7

    # streaming, client did not ask: the gateway asked upstream anyway and strips the usage chunk
    chunks = list(
        client.chat.completions.create(
            model="fast", messages=msgs, max_tokens=3, stream=True, **rid("nousage")
        )
    )
    assert (
        all(c.usage is None for c in chunks)
        and sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 3
    )

    # disconnect mid-stream after 4 tokens (150 ms apart): the upstream is closed
    stream = client.chat.completions.create(
        model="fast", messages=msgs, max_tokens=20, stream=True, extra_body={"x_itl_ms": 150}, **rid("cut")
    )
    received = 0
    for chunk in stream:
        received += sum(1 for c in chunk.choices if c.delta.content)
        if received == 4:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while not truth(up)["cut"]["aborted"]:
        assert time.monotonic() < deadline, "upstream request was not closed after the client left"
        time.sleep(0.02)

    deadline = time.monotonic() + 5
    while (totals := gw.usage("acme")["totals"])["requests"] < 4:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    backend = truth(up)
    assert totals["requests"] == 4
    # The disconnected stream never got a usage block: its prompt is the gateway's estimate.
    want_prompt = sum(backend[r]["prompt_tokens"] for r in ("plain", "usage", "nousage")) + estimate
    assert totals["prompt_tokens"] == want_prompt
    assert totals["completion_tokens"] == sum(v["completion_tokens"] for v in backend.values())
    assert backend["cut"]["completion_tokens"] >= received == 4
    assert totals["cost_micro_usd"] >= round(want_prompt * 0.5 + totals["completion_tokens"] * 1.5) - 4

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
