from __future__ import annotations

from gwkit import plan


def test_chat_roundtrip(fast_upstream, write_config, gateway) -> None:
    up = fast_upstream(tokens=5)
    gw = gateway(write_config([up], {"acme": plan()}))
    key = gw.new_key("acme")
    client = gw.client(key)
    out = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hello world!"}])
    assert out.usage.completion_tokens == 5
    chunks = list(
        client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert sum(1 for c in chunks if c.choices) == 5
    u = gw.usage("acme")
    assert u["totals"]["requests"] == 2, u
    assert u["totals"]["completion_tokens"] == 10
