"""Prompts shaped to beat the reservation: a burst's true usage stays within the token bucket.

Each shape gets its own tenant (its own bucket of 6,000 tokens per minute) and a burst of 24
concurrent requests of about 1 KB of prompt. What counts is the backend's truth (truth_upstream's
own tokenizer, where digits are one token per byte and "a a a" one per two bytes), summed over the
requests the gateway admitted, against capacity + the refill during the burst + the documented
bound (one request's body bytes). With the default `body_bytes` reservation no shape gets past
that; the old `bytes_div_4` estimate is shown beaten by the same bursts (digits by more than 2x),
so the test can tell the two apart.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest
from gwkit import plan

TPM = 6000
BURST = 24
MAX_TOKENS = 16


def _fill(unit: str, target: int = 1000) -> str:
    return unit * max(1, target // len(unit.encode()))


SHAPES: dict[str, list[dict[str, Any]]] = {
    "a_a_a": [{"role": "user", "content": _fill("a ")}],
    "digits": [{"role": "user", "content": _fill("8203917465")}],
    "cjk": [{"role": "user", "content": _fill("数据中心的延迟预算")}],
    "emoji": [{"role": "user", "content": _fill("🚀🔥🧠🌍")}],
    "short_messages": [{"role": "user", "content": "hi"} for _ in range(30)],
    "long_system": [{"role": "system", "content": _fill("1 2 3 ", 1000)}, {"role": "user", "content": "ok"}],
}


async def _burst(url: str, key: str, shape: str) -> tuple[list[str], float]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)

    async def one(i: int) -> str | None:
        rid = f"{shape}-{i}"
        try:
            await client.chat.completions.create(
                model="fast",
                messages=SHAPES[shape],
                max_tokens=MAX_TOKENS,
                extra_headers={"x-request-id": rid},
            )
            return rid
        except openai.RateLimitError:
            return None

    t0 = time.monotonic()
    try:
        done = await asyncio.gather(*(one(i) for i in range(BURST)))
    finally:
        await client.close()
    return [r for r in done if r], time.monotonic() - t0


@pytest.mark.parametrize("strategy", ["body_bytes", "bytes_div_4"])
def test_a_hostile_burst_stays_within_the_bucket(
    strategy: str, truth_upstream, write_config, gateway
) -> None:
    # Each answer takes 16 x 20 ms, so no request of a burst settles (and pays its true usage)
    # before the others were admitted: what gets in is decided by the reservation alone, however
    # slowly a loaded machine sends the burst.
    up = truth_upstream(itl_ms=20)
    tenants = {shape: plan(tokens_per_minute=TPM) for shape in SHAPES}
    gw = gateway(write_config([up], tenants), prompt_reservation=strategy)
    overshoot: dict[str, float] = {}
    for shape in SHAPES:
        admitted, elapsed_s = asyncio.run(_burst(gw.url, gw.new_key(shape), shape))
        truth = httpx.get(f"{up}/truth").json()["requests"]
        used = sum(truth[r]["prompt_tokens"] + truth[r]["completion_tokens"] for r in admitted)
        # capacity + refill during the burst + the documented bound: one request's body bytes
        # (an upper bound on its reservation minus what admission waited for)
        body = json.dumps({"messages": SHAPES[shape], "model": "fast", "max_tokens": MAX_TOKENS})
        allowed = TPM + TPM / 60 * elapsed_s + len(body.encode())
        overshoot[shape] = used / allowed
        assert admitted, shape
    if strategy == "body_bytes":
        assert max(overshoot.values()) <= 1.0, overshoot
    else:  # the estimate is beaten by the shapes with fewer than 4 bytes per token
        assert overshoot["digits"] > 2.0 and overshoot["a_a_a"] > 1.3, overshoot
