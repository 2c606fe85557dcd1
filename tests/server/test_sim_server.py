"""The simulator's OpenAI server, through the `openai` SDK against a real uvicorn on a free port."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
import uvicorn
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from prometheus_client.parser import text_string_to_metric_families

from servelab.procs import free_port, wait_http_ok
from server import catalog
from server.perfmodel import BatchShape, PerfModel
from server.sim.api import create_app
from server.sim.settings import SimSettings

MODEL = "mixtral-8x7b"
MESSAGES = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "What is a mixture-of-experts model, in short?"},
]


class ThreadServer:
    """uvicorn in a background thread; stopped through `should_exit`, joined with a deadline."""

    def __init__(self, settings: SimSettings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_http_ok(self.url + "/health", timeout_s=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    # speedup 5: a Mixtral TP2 decode step (~15 ms modelled) takes ~3 ms of real time.
    with ThreadServer(SimSettings(model=MODEL, gpu="h100", tp=2, speedup=5.0)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m[(name, tuple(sorted({"model_name": MODEL, **labels}.items())))]


def wait_for(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met before the deadline")


def mistral_chat_count(messages: list[dict]) -> int:
    tok = catalog.tokenizer_for(MODEL)
    return len(tok.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens)


def test_models_lists_the_served_name(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_usage_is_exact_and_max_tokens_honoured(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=7)
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == mistral_chat_count(MESSAGES)
    assert resp.usage.completion_tokens == 7
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 7
    assert resp.choices[0].finish_reason == "length"
    assert len(resp.choices[0].message.content.split()) == 7  # one filler word per token


def test_chat_stream_with_include_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    words = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(words) == 5
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (mistral_chat_count(MESSAGES), 5)


def test_completion_stream_continuous_usage(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    text_tokenizer = catalog.tokenizer_for(MODEL).instruct_tokenizer.tokenizer
    expected_prompt = len(text_tokenizer.encode(prompt, bos=True, eos=False))
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, stream=True,
                                       stream_options={"include_usage": True, "continuous_usage_stats": True})
    chunks = list(stream)
    token_chunks = [c for c in chunks if c.choices]
    assert [c.usage.completion_tokens for c in token_chunks] == [1, 2, 3, 4]
    assert all(c.usage.prompt_tokens == expected_prompt for c in chunks)
    assert chunks[-1].usage.completion_tokens == 4


def test_completion_non_stream(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3)
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    assert resp.usage.prompt_tokens == 2  # BOS + "Hello"
    assert resp.choices[0].text.split() == ["the", "model", "is"]


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"max_tokens": 40_000}, 400, "maximum context length is 32768 tokens"),
        ({"model": "nope"}, 404, "The model `nope` does not exist."),
        ({"stream_options": {"include_usage": True}}, 400, "can only be defined when `stream=True`"),
        ({"extra_body": {"priority": 3}}, 400, "Priority scheduling is not enabled"),
        ({"messages": []}, 400, "messages"),
    ],
)
def test_bad_requests_get_openai_style_errors(client: openai.OpenAI, kwargs: dict, status: int,
                                              fragment: str) -> None:
    args = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**args)
    assert info.value.status_code == status
    assert fragment in info.value.message
    body = info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_metrics_carry_vllm_names_and_count_tokens(server: ThreadServer, client: openai.OpenAI) -> None:
    before = metrics(server.url)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6)
    after = metrics(server.url)
    names = {name for name, _ in after}
    for n in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc",
              "vllm:kv_cache_usage_perc", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
              "vllm:time_to_first_token_seconds_count", "vllm:time_per_output_token_seconds_bucket",
              "vllm:inter_token_latency_seconds_sum", "vllm:e2e_request_latency_seconds_count",
              "vllm:request_success_total", "vllm:num_preemptions_total"):
        assert n in names, n

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("vllm:prompt_tokens_total") == mistral_chat_count(MESSAGES)
    assert delta("vllm:generation_tokens_total") == 6
    assert delta("vllm:request_success_total", finished_reason="length") == 1
    assert delta("vllm:time_to_first_token_seconds_count") == 1
    assert delta("vllm:time_per_output_token_seconds_count") == 5
    assert delta("vllm:request_queue_time_seconds_count") == 1
    blocks = PerfModel.build(MODEL, "h100", tp=2).kv_blocks(16)
    assert [labels for name, labels in after if name == "vllm:cache_config_info"] == [
        (("block_size", "16"), ("num_gpu_blocks", str(blocks)))]
    assert delta("vllm:request_prompt_tokens_sum") == mistral_chat_count(MESSAGES)
    assert delta("vllm:request_generation_tokens_sum") == 6
    e2e = delta("vllm:e2e_request_latency_seconds_sum")
    parts = delta("vllm:request_queue_time_seconds_sum") + delta("vllm:request_inference_time_seconds_sum")
    assert parts == pytest.approx(e2e, abs=1e-6)  # queue + running = end to end, in engine time


def test_disconnect_aborts_and_frees_kv_blocks(server: ThreadServer, client: openai.OpenAI) -> None:
    aborted_before = value(metrics(server.url), "vllm:request_success_total", finished_reason="abort")
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20_000, stream=True)
    got = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
            if got == 3:
                break
    assert value(metrics(server.url), "vllm:kv_cache_usage_perc") > 0
    stream.close()

    def freed() -> bool:
        m = metrics(server.url)
        return (value(m, "vllm:num_requests_running") == 0 and value(m, "vllm:kv_cache_usage_perc") == 0
                and value(m, "vllm:request_success_total", finished_reason="abort") == aborted_before + 1)

    wait_for(freed)


def test_non_stream_client_that_gives_up_is_aborted(server: ThreadServer) -> None:
    aborted_before = value(metrics(server.url), "vllm:request_success_total", finished_reason="abort")
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 20_000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(5.0, read=0.3))

    def freed() -> bool:
        m = metrics(server.url)
        return (value(m, "vllm:num_requests_running") == 0 and value(m, "vllm:kv_cache_usage_perc") == 0
                and value(m, "vllm:request_success_total", finished_reason="abort") == aborted_before + 1)

    wait_for(freed)


def test_natural_lengths_ignore_eos_and_priority() -> None:
    settings = SimSettings(model=MODEL, gpu="h100", tp=2, speedup=20.0, output_len="fixed:3",
                           scheduling_policy="priority")
    with ThreadServer(settings) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        stopped = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10,
                                            extra_body={"priority": -1})
        assert (stopped.usage.completion_tokens, stopped.choices[0].finish_reason) == (3, "stop")
        forced = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10,
                                           extra_body={"ignore_eos": True})
        assert (forced.usage.completion_tokens, forced.choices[0].finish_reason) == (10, "length")


def vllm_bench_ttft(url: str, body: dict) -> tuple[float, list[tuple[float, dict]]]:
    """TTFT as `vllm bench serve` measures it (vllm/benchmarks/lib/endpoint_request_func.py).

    The clock starts before the POST and stops at the first SSE message, `:` comments and
    `[DONE]` aside, whose JSON has a non-empty `choices`, whatever its content. Returns that TTFT
    and every message with the time (since the POST) of the read that delivered it.
    """
    start = time.perf_counter()
    ttft = None
    messages: list[tuple[float, dict]] = []
    with httpx.stream("POST", url, json=body, timeout=30) as resp:
        assert resp.status_code == 200
        buffer = ""
        for text in resp.iter_text():
            arrived = time.perf_counter() - start
            buffer += text
            while "\n\n" in buffer:
                message, buffer = buffer.split("\n\n", 1)
                message = message.strip()
                if not message or message.startswith(":"):
                    continue
                payload = message.removeprefix("data: ")
                if payload == "[DONE]":
                    continue
                data = json.loads(payload)
                messages.append((arrived, data))
                if data.get("choices") and ttft is None:
                    ttft = arrived
    assert ttft is not None, "never received a chunk with choices"
    return ttft, messages


def _prefill_real_s(prompt_len: int) -> float:
    """Modelled prefill of one prompt on the module server (TP2 H100), in real seconds (speedup 5)."""
    return PerfModel.build(MODEL, "h100", tp=2).step_time_s(BatchShape(((prompt_len, 0),), ())) / 5.0


def test_stream_ttft_by_vllm_bench_rule_waits_for_the_first_token(server: ThreadServer) -> None:
    # A ~6,000-token prompt: its prefill is one engine step of ~30 ms of real time. A role chunk
    # sent on arrival (before prefill) would stop vLLM's benchmark clock that much too early.
    messages = [{"role": "user", "content": "word " * 6000}]
    prefill_s = _prefill_real_s(mistral_chat_count(messages))
    assert prefill_s > 0.02  # the check below means something only if prefill is visible
    body = {"model": MODEL, "messages": messages, "max_tokens": 3, "stream": True}
    ttft, chunks = vllm_bench_ttft(server.url + "/v1/chat/completions", body)
    first_content = next(t for t, c in chunks if c.get("choices") and c["choices"][0]["delta"].get("content"))
    assert first_content - ttft < prefill_s / 2  # the role chunk arrives with the first token
    with_choices = [c for _, c in chunks if c.get("choices")]
    # vLLM's shape: the role chunk first, then one chunk per token.
    assert with_choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in with_choices[1:]] == [" the", " model", " is"]
    assert ttft >= prefill_s  # and the clock covers prefill


def test_completion_stream_ttft_by_vllm_bench_rule(server: ThreadServer) -> None:
    prompt = "word " * 6000
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2, "stream": True}
    ttft, chunks = vllm_bench_ttft(server.url + "/v1/completions", body)
    text_tokenizer = catalog.tokenizer_for(MODEL).instruct_tokenizer.tokenizer
    assert ttft >= _prefill_real_s(len(text_tokenizer.encode(prompt, bos=True, eos=False)))
    assert [c["choices"][0]["text"] for _, c in chunks if c.get("choices")] == [" the", " model"]
