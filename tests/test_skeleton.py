"""The shared fixtures themselves: a real redis-server and a real upstream answer."""

from __future__ import annotations

import openai
import redis


def test_redis_server_is_real(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    seconds, _micros = client.time()
    assert seconds > 1_700_000_000
    assert client.eval("return redis.call('INCR', KEYS[1])", 1, "{t}:n") == 1
    client.close()


def test_fast_upstream_speaks_openai(fast_upstream) -> None:
    base = fast_upstream(tokens=5)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
    out = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hello"}])
    assert out.usage is not None and out.usage.completion_tokens == 5
    chunks = list(
        client.chat.completions.create(
            model="fast",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert sum(1 for c in chunks if c.choices) == 5
