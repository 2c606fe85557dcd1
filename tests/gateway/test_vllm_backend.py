"""Against the simulator (a vLLM-like backend with continuous usage stats and a real tokenizer)."""

from __future__ import annotations

import time

import pytest
from gwkit import plan


@pytest.fixture
def sim(sim_server) -> str:
    return sim_server("--served-model-name", "fast")


def test_running_usage_is_stripped_and_meters_a_disconnect_exactly(sim, write_config, gateway) -> None:
    gw = gateway(write_config([sim], {"acme": plan()}, continuous_usage_stats=True))
    client = gw.client(gw.new_key("acme"))
    msgs = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
    extra = {"ignore_eos": True}

    full = client.chat.completions.create(model="fast", messages=msgs, max_tokens=6, extra_body=extra)
    prompt_tokens = full.usage.prompt_tokens  # the simulator's real tokenizer, not our estimate

    chunks = list(
        client.chat.completions.create(
            model="fast", messages=msgs, max_tokens=6, stream=True, extra_body=extra
        )
    )
    assert all(c.usage is None for c in chunks)  # running usage asked upstream, stripped for the client
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 6

    stream = client.chat.completions.create(
        model="fast",
        messages=msgs,
        max_tokens=400,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    last_usage = None
    for chunk in stream:
        last_usage = chunk.usage or last_usage
        if last_usage is not None and last_usage.completion_tokens >= 5:
            break
    stream.close()

    deadline = time.monotonic() + 10
    while (report := gw.usage("acme"))["totals"]["requests"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    events = {e["status"]: e for e in report["recent_events"]}
    aborted = events["499"]
    assert int(aborted["prompt_tokens"]) == prompt_tokens  # exact, from the running usage
    assert 5 <= int(aborted["completion_tokens"]) < 400  # what was generated before the close
    totals = report["totals"]
    assert totals["prompt_tokens"] == 3 * prompt_tokens
    assert totals["completion_tokens"] == 6 + 6 + int(aborted["completion_tokens"])
