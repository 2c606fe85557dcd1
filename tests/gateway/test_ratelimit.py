"""Token buckets, reservations and refunds, through the gateway, with the openai SDK as the client.

These check the bucket arithmetic with small exact numbers, so they run the `bytes_div_4` prompt
reservation (8 bytes -> 2 tokens, whatever bytes the SDK adds around the prompt); the default
`body_bytes` reservation and the hostile prompt shapes it exists for are in test_hostile_prompts.py.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
import redis
from gwkit import plan

MSG = [{"role": "user", "content": "12345678"}]  # 8 bytes -> 2 estimated prompt tokens
ESTIMATE = "bytes_div_4"


def hello(client: openai.OpenAI, **kw: object) -> object:
    return client.chat.completions.create(model="fast", messages=MSG, **kw)


def test_rpm_burst_admits_exactly_the_limit(fast_upstream, write_config, gateway) -> None:
    gw = gateway(write_config([fast_upstream(tokens=4)], {"acme": plan(requests_per_minute=10)}))
    client = gw.client(gw.new_key("acme"))
    for i in range(10):
        raw = client.chat.completions.with_raw_response.create(model="fast", messages=MSG)
        assert raw.headers["x-ratelimit-limit-requests"] == "10"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(9 - i)
        assert float(raw.headers["x-gateway-overhead-ms"]) >= 0
    with pytest.raises(openai.RateLimitError) as info:
        hello(client)
    resp = info.value.response
    assert 1 <= int(resp.headers["retry-after"]) <= 6  # one request refills every 6 s at rpm 10
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    err = info.value.body
    assert err["type"] == "requests" and err["code"] == "rate_limit_exceeded"
    assert "requests per minute" in err["message"] and "limit 10, used 10, requested 1" in err["message"]


def test_tpm_bucket_admits_until_tokens_run_out(fast_upstream, write_config, gateway) -> None:
    # each request reserves 2 + 8 = 10 tokens and really uses 2 + 8: no refund, 10 fit in 100
    gw = gateway(
        write_config([fast_upstream(tokens=8)], {"acme": plan(tokens_per_minute=100)}),
        prompt_reservation=ESTIMATE,
    )
    client = gw.client(gw.new_key("acme"))
    for _ in range(10):
        out = hello(client, max_tokens=8)
        assert out.usage.total_tokens == 10
    with pytest.raises(openai.RateLimitError) as info:
        hello(client, max_tokens=8)
    err, headers = info.value.body, info.value.response.headers
    assert err["type"] == "tokens" and "limit 100" in err["message"] and "requested 10" in err["message"]
    assert 1 <= int(headers["retry-after"]) <= 7  # 10 tokens at 100/min
    assert headers["x-ratelimit-limit-tokens"] == "100"


def test_request_larger_than_the_bucket_is_refused_outright(fast_upstream, write_config, gateway) -> None:
    gw = gateway(
        write_config([fast_upstream()], {"acme": plan(tokens_per_minute=50)}), prompt_reservation=ESTIMATE
    )
    with pytest.raises(openai.RateLimitError) as info:
        hello(gw.client(gw.new_key("acme")), max_tokens=100)
    assert "Request too large" in info.value.body["message"]


def test_monthly_quota_gives_insufficient_quota(fast_upstream, write_config, gateway) -> None:
    gw = gateway(
        write_config([fast_upstream(tokens=8)], {"acme": plan(tokens_per_month=25)}),
        prompt_reservation=ESTIMATE,
    )
    client = gw.client(gw.new_key("acme"))
    hello(client, max_tokens=8)
    hello(client, max_tokens=8)
    with pytest.raises(openai.RateLimitError) as info:
        hello(client, max_tokens=8)
    assert info.value.body["code"] == "insufficient_quota" and info.value.body["type"] == "insufficient_quota"
    assert "limit 25, used 20, requested 10" in info.value.body["message"]


async def test_concurrent_requests_cannot_overshoot_tpm(fast_upstream, write_config, gateway) -> None:
    # 20 requests at once, each reserving 10 of 100 tokens, each held 1.5 s upstream: exactly 10 admitted
    gw = gateway(
        write_config([fast_upstream(tokens=8, ttft_ms=1500)], {"acme": plan(tokens_per_minute=100)}),
        prompt_reservation=ESTIMATE,
    )
    key = gw.new_key("acme")
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)

    async def one() -> int:
        try:
            await client.chat.completions.create(model="fast", messages=MSG, max_tokens=8)
            return 200
        except openai.RateLimitError:
            return 429

    async with client:
        statuses = await asyncio.gather(*(one() for _ in range(20)))
    assert statuses.count(200) == 10 and statuses.count(429) == 10


def test_unused_reservation_is_refunded_at_settle(fast_upstream, write_config, gateway, redis_url) -> None:
    # reserve 2 + 40 = 42 of 100, use 2 + 4 = 6: without the refund only 2 requests would fit
    gw = gateway(
        write_config([fast_upstream(tokens=4)], {"acme": plan(tokens_per_minute=100)}),
        prompt_reservation=ESTIMATE,
    )
    client = gw.client(gw.new_key("acme"))
    for _ in range(8):
        assert hello(client, max_tokens=40).usage.total_tokens == 6
    with redis.Redis.from_url(redis_url) as r:
        level = float(r.hget("rl:{acme}:tok", "t"))
    assert 100 - 8 * 6 <= level <= 100 - 8 * 6 + 10  # plus what refilled (100/min) meanwhile
