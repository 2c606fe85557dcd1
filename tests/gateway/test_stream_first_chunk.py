"""The simulator's first stream chunk through the gateway, timed as `vllm bench serve` times it.

vLLM's benchmark (vllm/benchmarks/lib/endpoint_request_func.py) stops its TTFT clock at the first
SSE message whose JSON has a non-empty `choices`. The simulator sends vLLM's role chunk together
with the first token, after prefill; the gateway relays both and meters only the token.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from gwkit import plan

from server.perfmodel import BatchShape, PerfModel


@pytest.fixture
def sim(sim_server) -> str:
    return sim_server("--served-model-name", "fast")  # speedup 1: modelled time is real time


def _timed_messages(url: str, key: str, body: dict) -> list[tuple[float, dict]]:
    """Every SSE data message with the time (since the POST) of the read that delivered it."""
    start = time.perf_counter()
    out: list[tuple[float, dict]] = []
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        buffer = ""
        for text in resp.iter_text():
            arrived = time.perf_counter() - start
            buffer += text
            while "\n\n" in buffer:
                message, buffer = buffer.split("\n\n", 1)
                payload = message.strip().removeprefix("data: ")
                if payload and not payload.startswith(":") and payload != "[DONE]":
                    out.append((arrived, json.loads(payload)))
    return out


def test_vllm_bench_ttft_through_the_gateway_covers_prefill(sim, write_config, gateway) -> None:
    gw = gateway(write_config([sim], {"acme": plan()}))
    key = gw.new_key("acme")
    messages = [{"role": "user", "content": "word " * 6000}]
    body = {"model": "fast", "messages": messages, "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    chunks = _timed_messages(gw.url + "/v1/chat/completions", key, body)

    with_choices = [(t, c) for t, c in chunks if c.get("choices")]
    ttft = with_choices[0][0]  # vLLM's rule
    first_token = next(t for t, c in with_choices if c["choices"][0]["delta"].get("content"))
    prompt_tokens = chunks[-1][1]["usage"]["prompt_tokens"]  # the simulator's own count
    model = PerfModel.build("mixtral-8x7b", "h100", tp=2)
    prefill_s = model.step_time_s(BatchShape(((prompt_tokens, 0),), ()))
    assert prefill_s > 0.1  # ~6,000 tokens on 2 x H100: visible against any relay delay
    assert ttft >= prefill_s  # the first chunk with choices waited for prefill
    assert first_token - ttft < prefill_s / 2  # the role chunk came with the first token
    assert with_choices[0][1]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1][1]["usage"]["completion_tokens"] == 3  # the role chunk is not a token
