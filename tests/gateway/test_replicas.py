"""Two gateway processes share one Redis: one global limit, leases that outlive a crash, revocation."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest
import redis
from gwkit import plan

MSG = [{"role": "user", "content": "hi"}]


async def _burst(urls: list[str], key: str, n: int) -> list[int]:
    clients = [openai.AsyncOpenAI(base_url=f"{u}/v1", api_key=key, max_retries=0, timeout=30) for u in urls]

    async def one(i: int) -> int:
        try:
            await clients[i % len(clients)].chat.completions.create(model="fast", messages=MSG, max_tokens=2)
            return 200
        except openai.RateLimitError:
            return 429

    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        for c in clients:
            await c.close()


@pytest.mark.slow
def test_two_gateway_processes_enforce_one_concurrency_limit(
    fast_upstream, write_config, gateway_proc
) -> None:
    # 160 requests at once over two processes; each holds its lease 3 s upstream, so every request
    # arrives while the first 64 are still running: exactly 64 may be admitted, across both.
    up = fast_upstream(tokens=2, ttft_ms=3000)
    cfg = write_config([up], {"acme": plan(max_concurrent_requests=64)})
    a, _ = gateway_proc(cfg, lease_ttl_s=30)
    b, _ = gateway_proc(cfg, lease_ttl_s=30)
    key = a.new_key("acme")
    peak = [0]
    stop = threading.Event()

    def watch_upstream() -> None:  # what the backend really saw at once, sampled every 20 ms
        with httpx.Client() as c:
            while not stop.is_set():
                for line in c.get(f"{up}/metrics").text.splitlines():
                    if line.startswith("upstream_in_flight "):
                        peak[0] = max(peak[0], int(float(line.split()[1])))
                stop.wait(0.02)

    watcher = threading.Thread(target=watch_upstream)
    watcher.start()
    try:
        statuses = asyncio.run(_burst([a.url, b.url], key, 160))
    finally:
        stop.set()
        watcher.join()
    assert statuses.count(200) == 64, statuses.count(200)
    assert statuses.count(429) == 96
    assert peak[0] == 64  # never more in flight than the one global limit


def test_two_replicas_share_one_request_bucket(fast_upstream, write_config, gateway) -> None:
    cfg = write_config([fast_upstream(tokens=2)], {"acme": plan(requests_per_minute=10)})
    a, b = gateway(cfg), gateway(cfg)
    statuses = asyncio.run(_burst([a.url, b.url], a.new_key("acme"), 16))
    assert statuses.count(200) == 10 and statuses.count(429) == 6


def test_lease_released_after_upstream_error(fast_upstream, write_config, gateway, redis_url) -> None:
    gw = gateway(write_config([fast_upstream()], {"acme": plan(max_concurrent_requests=1)}))
    client = gw.client(gw.new_key("acme"))
    for _ in range(3):  # with one slot, a leaked lease would turn the 2nd attempt into a 429
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="fast", messages=MSG, extra_body={"x_fail": 500})
        assert info.value.status_code == 502 and info.value.body["code"] == "bad_gateway"
    with redis.Redis.from_url(redis_url) as r:
        assert r.zcard("lease:{acme}") == 0
        assert r.hget("quota:{acme}", r.hkeys("quota:{acme}")[0]) == b"0"  # reservation given back
    assert gw.usage("acme")["totals"]["requests"] == 0  # nothing metered that was not served


@pytest.mark.slow
def test_lease_of_a_killed_gateway_expires(fast_upstream, write_config, gateway_proc, redis_url) -> None:
    cfg = write_config([fast_upstream(tokens=2, ttft_ms=4000)], {"acme": plan(max_concurrent_requests=1)})
    victim, child = gateway_proc(cfg, lease_ttl_s=2.5)
    other, _ = gateway_proc(cfg, lease_ttl_s=2.5)
    key = victim.new_key("acme")
    errors: list[BaseException] = []

    def doomed() -> None:
        try:
            victim.client(key, timeout=20).chat.completions.create(model="fast", messages=MSG)
        except openai.APIConnectionError:
            pass  # expected: the gateway dies under it
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=doomed)
    t.start()
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    while r.zcard("lease:{acme}") == 0:
        assert time.monotonic() < deadline, "the request never took its lease"
        time.sleep(0.01)
    child.kill9()
    killed_at = time.monotonic()
    fast = other.client(key)
    with pytest.raises(openai.RateLimitError) as info:  # the dead replica's lease still counts...
        fast.chat.completions.create(model="fast", messages=MSG, extra_body={"x_ttft_ms": 0})
    assert info.value.body["type"] == "concurrency"
    while True:  # ...until it expires, 2.5 s after it was taken
        try:
            fast.chat.completions.create(model="fast", messages=MSG, extra_body={"x_ttft_ms": 0})
            break
        except openai.RateLimitError:
            assert time.monotonic() - killed_at < 6, "lease of the killed gateway never expired"
            time.sleep(0.05)
    t.join(timeout=30)
    r.close()
    assert not errors


def test_revoked_key_fails_on_the_other_replica_within_1s(fast_upstream, write_config, gateway_proc) -> None:
    cfg = write_config([fast_upstream()], {"acme": plan()})
    a, _ = gateway_proc(cfg)
    b, _ = gateway_proc(cfg)
    with a.admin() as admin:
        created = admin.post("/admin/v1/tenants/acme/keys", json={"name": "doomed"}).json()
    client_b = b.client(created["key"])
    client_b.chat.completions.create(model="fast", messages=MSG)  # b has the key cached now
    with a.admin() as admin:
        assert admin.delete(f"/admin/v1/keys/{created['key_id']}").status_code == 200
    revoked_at = time.monotonic()
    while True:
        try:
            client_b.models.list()
        except openai.AuthenticationError as exc:
            assert exc.body["code"] == "invalid_api_key"
            break
        assert time.monotonic() - revoked_at < 1.0, "replica b still accepts a revoked key after 1 s"
        time.sleep(0.01)
    assert time.monotonic() - revoked_at < 1.0


def test_plan_change_at_run_time_reaches_the_other_replica(fast_upstream, write_config, gateway) -> None:
    cfg = write_config([fast_upstream(tokens=2)], {"acme": plan()})
    a, b = gateway(cfg), gateway(cfg)
    client_b = b.client(a.new_key("acme"))
    with a.admin() as admin:
        r = admin.put("/admin/v1/tenants/acme/plan", json={"requests_per_minute": 2})
        assert r.status_code == 200 and r.json()["plan"]["requests_per_minute"] == 2
        assert admin.put("/admin/v1/tenants/acme/plan", json={"burst": 1}).status_code == 422
    changed_at = time.monotonic()
    while True:  # b learns the new limit over pub/sub
        with b.admin() as admin:
            if admin.get("/admin/v1/tenants/acme").json()["plan"]["requests_per_minute"] == 2:
                break
        assert time.monotonic() - changed_at < 1.0
        time.sleep(0.01)
    client_b.chat.completions.create(model="fast", messages=MSG)
    client_b.chat.completions.create(model="fast", messages=MSG)
    with pytest.raises(openai.RateLimitError) as info:
        client_b.chat.completions.create(model="fast", messages=MSG)
    assert "limit 2," in info.value.body["message"]
    with a.admin() as admin:
        assert admin.delete("/admin/v1/tenants/acme/plan").json()["plan"]["requests_per_minute"] == 100_000
    with gateway(cfg).admin() as admin:  # a replica started later picks the state up from Redis
        assert admin.get("/admin/v1/tenants/acme").json()["runtime_overrides"] == {}
