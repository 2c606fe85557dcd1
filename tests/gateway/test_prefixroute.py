"""Prefix-affinity routing with a load bound (gateway/prefixroute.py), pure logic and through a gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from gwkit import GatewayHandle

from gateway.prefixroute import PrefixAffinity, block_hashes, prompt_text

SYSTEM = "You are the support assistant of Acme Corp. " * 40  # ~1,800 bytes: 28 full 64-byte blocks


@dataclass
class _B:
    url: str
    outstanding: int = 0


def _chat(system: str, question: str) -> bytes:
    import json

    body = {"model": "fast", "messages": [{"role": "system", "content": system},
                                          {"role": "user", "content": question}]}
    return json.dumps(body).encode()


def test_blocks_are_a_chain_over_full_blocks_of_the_prompt_text() -> None:
    text = prompt_text(_chat("abc", "de"))
    assert text == b"<system>abc<user>de"
    assert block_hashes(b"x" * 130, block_chars=64) == block_hashes(b"x" * 128 + b"yz", block_chars=64)
    a, b = block_hashes(b"a" * 64 + b"b" * 64), block_hashes(b"c" * 64 + b"b" * 64)
    assert len(a) == 2 and a[1] != b[1]  # same second block, different first: no match
    assert prompt_text(b"not json") == b"" and prompt_text(b'{"prompt": "hi"}') == b"hi"


def test_same_prefix_goes_to_the_same_backend_until_the_load_bound() -> None:
    aff = PrefixAffinity(load_bound=2)
    backends = [_B("http://a"), _B("http://b")]
    first = aff.choose(backends, aff.blocks(_chat(SYSTEM, "q1")))
    assert first.url == "http://a"  # nothing remembered: least loaded, first on ties
    first.outstanding += 1
    # Least-loaded alone would now pick b; the remembered prefix keeps it on a.
    assert aff.choose(backends, aff.blocks(_chat(SYSTEM, "q2"))).url == "http://a"
    first.outstanding = 2  # 2 above b: still within the bound
    assert aff.choose(backends, aff.blocks(_chat(SYSTEM, "q3"))).url == "http://a"
    first.outstanding = 3  # 3 above b: past the bound, least loaded wins
    assert aff.choose(backends, aff.blocks(_chat(SYSTEM, "q4"))).url == "http://b"
    # A different system prompt has no match anywhere: least loaded.
    assert aff.choose(backends, aff.blocks(_chat("Other. " * 300, "q"))).url == "http://b"


def test_the_index_forgets_the_least_recently_routed_blocks() -> None:
    aff = PrefixAffinity(blocks_per_backend=4, block_chars=4)
    aff.record("u", block_hashes(b"aaaabbbbcccc", 4))
    aff.record("u", block_hashes(b"ddddeeee", 4))  # 5 blocks for room 4: "aaaa" is forgotten
    assert aff.match("u", block_hashes(b"aaaabbbb", 4)) == 0
    assert aff.match("u", block_hashes(b"ddddeeee", 4)) == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        PrefixAffinity(load_bound=-1)


def _served(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    line = next(ln for ln in text.splitlines() if ln.startswith("upstream_requests_total"))
    return int(line.split()[1])


def test_gateway_keeps_a_shared_system_prompt_on_one_backend_within_the_bound(
    fast_upstream: Callable[..., str], write_config: Callable[..., Path],
    gateway: Callable[..., GatewayHandle],
) -> None:
    # Slow first tokens keep all 8 requests of a burst outstanding while the later ones are routed.
    ups = [fast_upstream(tokens=2, ttft_ms=1200), fast_upstream(tokens=2, ttft_ms=1200)]
    cfg = write_config(ups)

    async def burst(gw: GatewayHandle, key: str) -> None:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=30)

        async def one(i: int) -> None:
            await client.chat.completions.create(model="fast", max_tokens=2, messages=[
                {"role": "system", "content": SYSTEM}, {"role": "user", "content": f"question {i}"}])

        tasks = []
        for i in range(8):  # one by one, so each routing decision sees the earlier ones outstanding
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
        await client.close()

    served: dict[int | None, list[int]] = {}
    for bound in (None, 1000, 4):
        gw = gateway(cfg, prefix_affinity_load_bound=bound)
        before = [_served(u) for u in ups]
        asyncio.run(burst(gw, gw.new_key("acme")))
        served[bound] = sorted(_served(u) - b for u, b in zip(ups, before, strict=True))
    # least-loaded alternates (4/4); unbounded affinity follows the prompt (0/8). A bound of 4 keeps
    # the prompt on a until a is 5 to 0 ahead; the 6th goes to b, which now holds the prefix too, so
    # the last two go to whichever of the two holders is less loaded (b): a x5, b x3.
    assert served == {None: [4, 4], 1000: [0, 8], 4: [3, 5]}
