"""Metering that loses nothing that can be kept: settles spooled through a Redis outage, and the
requests of a replica killed with -9 settled by a survivor from their last checkpoint.

The backend is `truth_upstream.py`, which records what it really generated per request id, so
every assertion compares metered usage with the backend's own numbers.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import redis
from gwkit import GatewayHandle, plan

from servelab.redisproc import start_redis

MSGS = [{"role": "user", "content": "count to twenty please"}]


def truth(up: str) -> dict[str, Any]:
    return dict(httpx.get(f"{up}/truth").json())


def metric(gw: GatewayHandle, name: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)


def poll(what: str, check: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_settles_during_a_redis_outage_are_metered_once_after_it(
    tmp_path: Path, truth_upstream, write_config, gateway
) -> None:
    data = tmp_path / "redis"
    own = start_redis(data, appendonly=True)
    try:
        up = truth_upstream()
        cfg = write_config([up], {"acme": plan()})
        spool = tmp_path / "spool"
        gw = gateway(cfg, redis_url=own.url, spool_dir=spool, recovery_interval_s=0.2, lease_ttl_s=3.0)
        client = gw.client(gw.new_key("acme"), timeout=30)
        rids = [f"outage-{i}" for i in range(3)]
        done: list[str] = []

        def stream(rid: str) -> None:  # 20 tokens 100 ms apart: they end while Redis is down
            chunks = client.chat.completions.create(
                model="fast",
                messages=MSGS,
                max_tokens=20,
                stream=True,
                extra_body={"x_itl_ms": 100},
                extra_headers={"x-request-id": rid},
            )
            if sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 20:
                done.append(rid)

        threads = [threading.Thread(target=stream, args=(rid,)) for rid in rids]
        for t in threads:
            t.start()
        poll("three streams at the backend", lambda: truth(up)["in_flight"] == 3)
        own.stop()
        for t in threads:
            t.join(timeout=30)
        assert sorted(done) == rids  # the clients got every token, Redis or not
        assert metric(gw, "servelab_gateway_settles_spooled_total") == 3
        # One file, or more if a replay attempt rotated it between two settles.
        lines = b"".join(p.read_bytes() for p in sorted(spool.iterdir()))
        assert lines.count(b"\n") == 3

        own = start_redis(data, port=own.port, appendonly=True)
        report = poll("the spool replay", lambda: (u := gw.usage("acme"))["totals"]["requests"] == 3 and u)
        backend = truth(up)["requests"]
        assert report["totals"]["prompt_tokens"] == sum(backend[r]["prompt_tokens"] for r in rids)
        assert (
            report["totals"]["completion_tokens"] == sum(backend[r]["completion_tokens"] for r in rids) == 60
        )
        used = report["totals"]["prompt_tokens"] + report["totals"]["completion_tokens"]
        assert report["quota"]["tokens_used"] == used  # every reservation trued up, none left behind
        poll("the spool emptied", lambda: not any(p.stat().st_size for p in spool.iterdir()))

        # Replayed again (as if a dead replica had left the same file): metered once all the same.
        (spool / "spool-deadbeef.jsonl").write_bytes(lines)
        poll("the second replay", lambda: not (spool / "spool-deadbeef.jsonl").exists())
        again = gw.usage("acme")
        assert again["totals"] == report["totals"] and again["quota"] == report["quota"]
        with redis.Redis.from_url(own.url) as r:
            ids = [e[b"request_id"].decode() for _, e in r.xrange("events:{acme}")]
            assert sorted(ids) == rids
            assert r.zcard("lease:{acme}") == 0 and r.hlen("inflight:{acme}") == 0
    finally:
        own.stop()


def test_a_replica_killed_mid_stream_is_metered_by_a_survivor(
    truth_upstream, write_config, gateway, gateway_proc, redis_url
) -> None:
    up = truth_upstream()
    cfg = write_config([up], {"acme": plan()}, continuous_usage_stats=True)
    doomed, child = gateway_proc(cfg, lease_ttl_s=1.5, SERVELAB_RECOVERY_INTERVAL_S="0.3")
    survivor = gateway(cfg, lease_ttl_s=1.5, recovery_interval_s=0.3)
    client = doomed.client(doomed.new_key("acme"), timeout=30)
    stream = client.chat.completions.create(
        model="fast",
        messages=MSGS,
        max_tokens=200,
        stream=True,
        extra_body={"x_itl_ms": 50},  # 10 s if it ran to the end; a heartbeat every 0.5 s
        extra_headers={"x-request-id": "killed-1"},
    )
    received = 0
    try:
        for chunk in stream:
            received += sum(1 for c in chunk.choices if c.delta.content)
            if received == 40:  # 2 s in: about four heartbeats checkpointed
                child.kill9()
    except (openai.APIError, httpx.HTTPError):
        pass  # the stream breaks with its gateway
    backend = poll(
        "the backend to lose the stream", lambda: (t := truth(up)["requests"]["killed-1"])["aborted"] and t
    )
    report = poll(
        "the survivor's recovery", lambda: (u := survivor.usage("acme"))["totals"]["requests"] == 1 and u
    )
    metered = report["totals"]["completion_tokens"]
    # Up to the last checkpoint: at most one heartbeat interval (0.5 s = 10 tokens) behind the
    # backend, plus the chunks in flight when the process died.
    assert backend["completion_tokens"] - 10 - 3 <= metered <= backend["completion_tokens"]
    assert report["totals"]["prompt_tokens"] == backend["prompt_tokens"]  # running usage is the backend's
    assert report["quota"]["tokens_used"] == metered + backend["prompt_tokens"]  # no orphan reservation
    with redis.Redis.from_url(redis_url) as r:
        ((_, event),) = r.xrange("events:{acme}")
        assert event[b"recovered"] == b"1" and event[b"request_id"] == b"killed-1"
        assert r.zcard("lease:{acme}") == 0 and r.hlen("inflight:{acme}") == 0
    assert received >= 40
