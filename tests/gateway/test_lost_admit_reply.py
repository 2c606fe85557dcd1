"""An admission whose reply is lost leaves nothing charged: the gateway releases it by lease id.

admit.lua takes a request token, reserves tokens from the token bucket and the monthly quota,
and writes a lease and an in-flight record in one call. If its reply never reaches the gateway
(the connection drops after the command was written), the gateway answers 503 without knowing
whether any of that happened; recovery only settles requests of dead replicas, so before the fix
the reservation stayed in the monthly quota for good. Now the gateway sends a release for the
lease (settle.lua's `release` mode): it undoes the admission if there is one and writes nothing
otherwise, and it goes through the spool when Redis cannot be reached.

A real Redis behind a real TCP proxy (tests/gateway/redisnodes.py) that forwards the admit's
EVALSHA and cuts the connection once Redis has answered it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from gwkit import plan
from redisnodes import ReplyDroppingProxy

from gateway.config import EffectivePlan
from gateway.keyschema import tenant_keys
from gateway.ratelimit import Limiter, SettleRecord
from gateway.scriptconn import ScriptConnection

ADMIT_SHA = hashlib.sha1((Path(__file__).parents[2] / "gateway/lua/admit.lua").read_bytes()).hexdigest()
TPM = 600  # small, so that a reservation left in the bucket shows in its level
MSG = [{"role": "user", "content": "hello"}]
KEYS = tenant_keys("acme")


@pytest.fixture
def proxy(redis_server: Any, redis_url: str) -> Iterator[ReplyDroppingProxy]:
    p = ReplyDroppingProxy(redis_server.port)
    yield p
    p.close()


def _poll(what: str, cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _nothing_left(r: redis.Redis, rid: str) -> None:
    """No reservation, lease or in-flight record is left, and nothing was metered for `rid`."""
    month_used = r.hgetall(KEYS.quota)
    assert all(int(v) == 0 for v in month_used.values()), f"quota still reserved: {month_used}"
    assert r.zcard(KEYS.lease) == 0, "lease left behind"
    assert r.hlen(KEYS.inflight) == 0, "in-flight record left behind"
    # The token bucket got the reservation back: the refund fills it to its capacity exactly.
    assert float(r.hget(KEYS.tok, "t") or TPM) == TPM, r.hgetall(KEYS.tok)
    events = [f for _, f in r.xrange(KEYS.events)]
    assert not [f for f in events if f[b"request_id"] == rid.encode()], f"usage event for {rid}: {events}"
    assert r.hlen(KEYS.usage) == 0, r.hgetall(KEYS.usage)
    assert not r.exists(KEYS.done(rid))


def _admitted_and_lost(gw: Any, key: str, proxy: ReplyDroppingProxy, rid: str) -> None:
    """One request whose admission ran in Redis and whose reply the proxy dropped: a 503."""
    client = gw.client(key, timeout=30)
    proxy.drop_reply_after(ADMIT_SHA.encode())
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="fast", messages=MSG, max_tokens=50, extra_headers={"x-request-id": rid}
        )
    assert info.value.status_code == 503
    assert (info.value.body or {}).get("code") == "redis_unavailable"  # type: ignore[union-attr]
    assert proxy.dropped.is_set(), "the proxy did not see the admit"


def test_lost_admit_reply_is_released_at_once(
    proxy: ReplyDroppingProxy, redis_url: str, fast_upstream: Any, write_config: Any, gateway: Any
) -> None:
    cfg = write_config([fast_upstream()], {"acme": plan(tokens_per_minute=TPM)})
    gw = gateway(cfg, redis_url=proxy.url, redis_socket_timeout_s=1.0)
    key = gw.new_key("acme")
    r = redis.Redis.from_url(redis_url)
    _admitted_and_lost(gw, key, proxy, "lost-1")
    # Redis is reachable through the proxy again: the release ran before the 503 was sent.
    _nothing_left(r, "lost-1")
    # And the tenant is whole: the next request is admitted, served and metered as usual.
    ok = gw.client(key).chat.completions.create(
        model="fast", messages=MSG, max_tokens=50, extra_headers={"x-request-id": "after-1"}
    )
    assert ok.usage is not None
    _poll("the next request's settle", lambda: r.xlen(KEYS.events) == 1)
    assert r.zcard(KEYS.lease) == 0 and r.hlen(KEYS.inflight) == 0
    used = sum(int(v) for v in r.hgetall(KEYS.quota).values())
    assert used == ok.usage.total_tokens, (used, ok.usage)  # its own tokens only, no orphan
    r.close()


def test_lost_admit_reply_is_spooled_while_redis_is_away(
    proxy: ReplyDroppingProxy,
    redis_url: str,
    fast_upstream: Any,
    write_config: Any,
    gateway: Any,
    tmp_path: Path,
) -> None:
    """The proxy stops accepting right after it cut the admit's reply: the release cannot reach
    Redis, goes to the spool, and is replayed once Redis can be reached again."""
    cfg = write_config([fast_upstream()], {"acme": plan(tokens_per_minute=TPM)})
    spool = tmp_path / "spool"
    gw = gateway(
        cfg, redis_url=proxy.url, spool_dir=spool, recovery_interval_s=0.2, redis_socket_timeout_s=1.0
    )
    key = gw.new_key("acme")
    r = redis.Redis.from_url(redis_url)
    client = gw.client(key, timeout=30)
    proxy.drop_reply_after(ADMIT_SHA.encode(), then_refuse=True)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="fast", messages=MSG, max_tokens=50, extra_headers={"x-request-id": "lost-2"}
        )
    assert info.value.status_code == 503
    assert proxy.dropped.is_set(), "the proxy did not see the admit"
    # The admission happened and is still charged while Redis is away from the gateway...
    assert r.hlen(KEYS.inflight) == 1
    assert sum(int(v) for v in r.hgetall(KEYS.quota).values()) > 0
    _poll("the release in the spool", lambda: any(p.stat().st_size for p in spool.glob("spool-*")))
    proxy.accept()
    # ...and released by the spool's replay once it is back (the maintenance tick).
    _poll("the spooled release to replay", lambda: r.hlen(KEYS.inflight) == 0)
    _nothing_left(r, "lost-2")
    r.close()


async def test_release_without_an_admission_writes_nothing(redis_url: str) -> None:
    """settle.lua's release for a lease admit.lua never wrote: no key is created or changed."""
    r = redis.Redis.from_url(redis_url)
    conn = ScriptConnection(redis_url, connect_timeout_s=1, command_timeout_s=1)
    limiter = Limiter(conn, lease_ttl_s=5, settled_ttl_s=60, stream_maxlen=100, replica_id="r1")
    plan_ = EffectivePlan(
        name="p", requests_per_minute=60, tokens_per_minute=TPM, tokens_per_month=10_000,
        max_concurrent_requests=5, fair_share_weight=1.0, default_max_tokens=16,
    )  # fmt: skip
    rel = SettleRecord.release_of("acme", plan_, "no-such-lease", "never-admitted", "k1", "fast")
    before = r.dbsize()
    settled = await limiter.settle(rel)
    assert settled.owned is False and settled.counted == 0
    assert r.dbsize() == before == 0, r.keys("*")
    # After a real admission the same release undoes it, and a second one is again a no-op.
    decision = await limiter.admit("acme", plan_, 100, "lease-1", request_id="rid-1", model="fast")
    assert decision.allowed
    assert (
        await limiter.settle(SettleRecord.release_of("acme", plan_, "lease-1", "rid-1", "k1", "fast"))
    ).owned
    again = await limiter.settle(SettleRecord.release_of("acme", plan_, "lease-1", "rid-1", "k1", "fast"))
    assert again.owned is False
    _nothing_left(r, "rid-1")
    await conn.close()
    r.close()
