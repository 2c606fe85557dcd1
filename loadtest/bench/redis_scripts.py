"""Redis CPU per proxied request (admit.lua + settle.lua), to size Redis: one node, Sentinel or Cluster.

    .venv/bin/python -m loadtest.bench.redis_scripts --duration 10 --tenants 1,100

Starts a redis-server on 127.0.0.1 (AOF on, `appendfsync everysec`, as deployed) and drives the
gateway's own Limiter (the same scripts over the same pipelined connection) with `--concurrency`
loops of admit -> settle, each request reserving and settling 300 tokens, spread over
`--tenants` tenants. Redis's own `used_cpu_user + used_cpu_sys` (INFO cpu) divided by the
requests gives its CPU per request; 1 / that is what one Redis core could sustain if nothing else
limited it. Redis runs its commands on one thread, so that is the ceiling of one node, and of
one Cluster shard for one tenant (a tenant's keys share a hash slot). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from gateway.config import EffectivePlan
from gateway.ratelimit import Limiter, SettleRecord
from gateway.scriptconn import ScriptConnection
from servelab.redisproc import start_redis

PLAN = EffectivePlan(
    name="bench", requests_per_minute=10**9, tokens_per_minute=10**12, tokens_per_month=10**15,
    max_concurrent_requests=10**6, fair_share_weight=1.0, default_max_tokens=256,
)  # fmt: skip


async def drive(url: str, tenants: int, concurrency: int, duration_s: float) -> int:
    conn = ScriptConnection(url, connect_timeout_s=2, command_timeout_s=10)
    limiter = Limiter(conn, lease_ttl_s=120, settled_ttl_s=3600, stream_maxlen=100_000, replica_id="bench")
    await limiter.load()
    done = 0
    stop = time.monotonic() + duration_s

    async def loop(w: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < stop:
            i += 1
            tenant = f"t{(w + i) % tenants}"
            lease = f"{w}-{i}"
            d = await limiter.admit(tenant, PLAN, 300, lease, request_id=f"r{w}-{i}", model="m")
            await limiter.settle(SettleRecord(
                tenant=tenant, tokens_per_minute=PLAN.tokens_per_minute,
                tokens_per_month=PLAN.tokens_per_month,
                lease_id=lease, reserved=300, prompt_tokens=200, completion_tokens=100, served=True,
                month=d.month, model="m", cost_micro=1, request_id=f"r{w}-{i}", key_id="k", latency_ms=1.0,
                status=200,
            ))  # fmt: skip
            done += 1

    await asyncio.gather(*(loop(w) for w in range(concurrency)))
    await conn.close()
    return done


def cpu_s(r: redis.Redis) -> float:
    info: Any = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--tenants", default="1,100", help="comma-separated tenant counts, one run each")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.tenants.split(",")):
            server = start_redis(Path(tmp) / f"r{n}", appendonly=True)
            try:
                r = redis.Redis.from_url(server.url)
                c0, t0 = cpu_s(r), time.monotonic()
                done = asyncio.run(drive(server.url, n, args.concurrency, args.duration))
                c1, t1 = cpu_s(r), time.monotonic()
                r.close()
            finally:
                server.stop()
            per_req_us = (c1 - c0) / done * 1e6
            rows.append((n, done, done / (t1 - t0), per_req_us, 1e6 / per_req_us))
    print(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.uname().nodename} "
          f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end), "
          f"{args.duration:g} s per run, concurrency {args.concurrency}, AOF everysec.\n")  # fmt: skip
    print(
        "| tenants | requests | achieved req/s (client-bound) | Redis CPU per request "
        "| one Redis core's ceiling |"
    )
    print("|---|---|---|---|---|")
    for n, done, rate, us, ceiling in rows:
        print(f"| {n} | {done} | {rate:,.0f} | {us:.1f} µs | {ceiling:,.0f} req/s |")


if __name__ == "__main__":
    main()
