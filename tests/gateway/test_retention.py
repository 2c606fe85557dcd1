"""The per-tenant opt-in to keep prompt text: only that tenant's text is kept, under its
retention (trimmed on write, key expiring), readable and erasable through the admin API."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import redis
import yaml
from gwkit import GatewayHandle, plan


def test_opted_in_tenant_text_is_kept_with_retention_and_erasable(
    tmp_path: Path, redis_url: str, fast_upstream: Callable[..., str], gateway: Callable[..., GatewayHandle]
) -> None:
    url = fast_upstream()
    cfg = {
        "plans": {"p": plan()},
        "tenants": {
            "keeper": {"plan": "p", "prompt_logging": {"enabled": True, "retention_days": 0.5}},
            "default": {"plan": "p"},
        },
        "models": {"fast": {"backends": [url]}},
    }
    path = tmp_path / "retention.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = gateway(path)
    keeper, other = gw.client(gw.new_key("keeper")), gw.client(gw.new_key("default"))
    marker = "MARKER-" + uuid.uuid4().hex
    msg = [{"role": "user", "content": marker}]
    answer = keeper.chat.completions.create(model="fast", messages=msg, max_tokens=4)
    streamed = ""
    for chunk in keeper.chat.completions.create(model="fast", messages=msg, max_tokens=4, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            streamed += chunk.choices[0].delta.content
    other.chat.completions.create(model="fast", messages=msg, max_tokens=4)

    with gw.admin() as c:
        kept = c.get("/admin/v1/tenants/keeper/prompts").json()
        assert kept["policy"] == {"enabled": True, "retention_days": 0.5}
        assert len(kept["data"]) == 2
        assert all(marker in e["request"] for e in kept["data"])
        non_stream = kept["data"][1]
        assert answer.choices[0].message.content in non_stream["output"]
        assert streamed and kept["data"][0]["output"] == streamed  # the streamed answer, assembled
        assert c.get("/admin/v1/tenants/default/prompts").json()["data"] == []

    store = redis.Redis.from_url(redis_url)
    ttl_ms = store.pttl("prompts:{keeper}")
    assert 0 < ttl_ms <= 43_200_000  # half a day
    # Only the opted-in tenant's text exists anywhere in Redis.
    holders = [k for k in store.scan_iter() if any(marker.encode() in v for v in _values(store, k))]
    assert holders == [b"prompts:{keeper}"]

    with gw.admin() as c:
        assert c.delete("/admin/v1/tenants/keeper/prompts").json()["deleted"] == 2
        assert c.get("/admin/v1/tenants/keeper/prompts").json()["data"] == []
        audit = c.get("/admin/v1/audit").json()["data"][0]
    assert audit["action"] == "erase-prompts" and audit["detail"] == {"tenant": "keeper", "deleted": 2}
    assert store.exists("prompts:{keeper}") == 0


def _values(store: redis.Redis, key: bytes) -> list[bytes]:
    kind = store.type(key).decode()
    if kind == "string":
        return [store.get(key) or b""]
    if kind == "hash":
        return list(store.hgetall(key).values())
    if kind == "stream":
        return [v for _, f in store.xrange(key) for v in f.values()]
    return [store.dump(key) or b""]


async def test_each_write_trims_entries_older_than_the_retention(redis_url: str) -> None:
    """An entry older than the retention (here one from 1970) is gone after the next write."""
    from redis.asyncio import Redis

    from gateway import retention
    from gateway.config import PromptLogging

    client = Redis.from_url(redis_url)
    try:
        key = retention.prompts_key("t")
        await client.xadd(key, {"request": "ancient"}, id="1-0")
        policy = PromptLogging(enabled=True, retention_days=1)
        await retention.keep(
            client,
            policy,
            tenant="t",
            request_id="r1",
            model="m",
            version="v1",
            request_body=b"{}",
            output=b"x",
        )
        kept = await retention.read(client, "t")
        assert [e["request_id"] for e in kept] == ["r1"]
        # Off by default: nothing is written at all.
        await retention.keep(
            client,
            PromptLogging(),
            tenant="u",
            request_id="r2",
            model="m",
            version="",
            request_body=b"{}",
            output=None,
        )
        assert await client.exists(retention.prompts_key("u")) == 0
    finally:
        await client.aclose()
