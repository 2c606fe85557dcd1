"""The spend and quota metrics agree with what Redis metered (the numbers `servelab usage` shows)."""

from __future__ import annotations

import httpx
import openai
import pytest
import redis
from gwkit import plan
from prometheus_client.parser import text_string_to_metric_families

PROMPT = "count to twenty please"  # 22 bytes -> 6 prompt tokens at the upstream and in our estimate
QUOTA = 300


def scraped(url: str, name: str, **labels: str) -> float:
    """The value of one sample of the gateway's /metrics."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not exported")


def test_cost_counter_and_quota_gauge_equal_the_metered_usage(
    fast_upstream, write_config, gateway, redis_url
) -> None:
    gw = gateway(write_config([fast_upstream(tokens=50)], {"acme": plan(tokens_per_month=QUOTA)}))
    client = gw.client(gw.new_key("acme"))
    msgs = [{"role": "user", "content": PROMPT}]

    client.chat.completions.create(model="fast", messages=msgs, max_tokens=5)  # 6 + 5 tokens
    for _ in client.chat.completions.create(model="fast", messages=msgs, max_tokens=7, stream=True):
        pass  # 6 + 7; settled before the stream's end reaches the client
    for _ in range(2):  # a replayed request id: the quota charges both, cost is metered once
        client.chat.completions.create(
            model="fast", messages=msgs, max_tokens=3, extra_headers={"x-request-id": "replay-1"}
        )  # 6 + 3 each
    client.chat.completions.create(model="fast", messages=msgs)  # 6 + default_max_tokens 16
    used = 11 + 13 + 2 * 9 + 22

    metered = gw.usage("acme")
    assert metered["totals"]["requests"] == 4
    cost_micro = metered["totals"]["cost_micro_usd"]
    assert cost_micro > 0
    cost = scraped(gw.url, "servelab_gateway_cost_usd_total", tenant="acme", model="fast")
    assert round(cost * 1_000_000) == cost_micro
    assert metered["quota"]["tokens_used"] == used
    remaining = scraped(gw.url, "servelab_gateway_quota_remaining_tokens", tenant="acme")
    assert remaining == QUOTA - used

    # Straight from Redis: the usage hash's cost fields and the month's quota counter.
    with redis.Redis.from_url(redis_url) as r:
        micro = sum(int(v) for f, v in r.hgetall("usage:{acme}").items() if f.endswith(b"|cost_micro_usd"))
        (quota_used,) = r.hvals("quota:{acme}")
    assert micro == cost_micro and QUOTA - int(quota_used) == remaining

    # A denied admission updates the gauge too (to the same number: nothing was reserved) and
    # meters no cost.
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="fast", messages=msgs, max_tokens=QUOTA)
    assert info.value.body["code"] == "insufficient_quota"
    assert scraped(gw.url, "servelab_gateway_quota_remaining_tokens", tenant="acme") == QUOTA - used
    assert scraped(gw.url, "servelab_gateway_cost_usd_total", tenant="acme", model="fast") == cost
