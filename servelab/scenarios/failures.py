"""backend-down and redis-down: a part of the stack dies under load, and comes back.

backend-down: tenant `acme` streams at a steady rate; one simulated replica is killed with
SIGKILL (a crash: no drain, no goodbye) and restarted later. Expected: the streams it was serving
end with an error the client can see (not a hang); every request that starts after the kill is
served by the survivors (routing drains the dead replica); each cut stream is metered for at least
the tokens its client received; the replica serves again once it is back.

redis-down: the same tenant sends requests while Redis is stopped and started again (SIGTERM, so
Redis's own append-only file is complete and the test is of the gateway, not of Redis's fsync
policy). Expected: fail-closed, i.e. every request that arrives while Redis is away is refused at
once with a 503 in the OpenAI error shape and nothing is served unmetered; requests succeed again
soon after Redis returns; and the usage Redis holds in the end equals what was served, settles that
were in flight during the outage included (they are spooled by the gateway and replayed).
"""

from __future__ import annotations

import asyncio
import time

from servelab import promparse as pp
from servelab.scenarios.base import Check, Context, Precondition, pct
from servelab.scenarios.load import Load, Record

TENANT = "acme"


def _success(url: str) -> float:
    snap = pp.scrape(url + "/metrics")
    return snap.value("vllm:request_success_total") if snap.ok else float("nan")


def backend_down(ctx: Context) -> list[Check]:
    running = ctx.running_backends()
    if len(running) < 2:
        raise Precondition(f"backend-down needs 2 running replicas; this stack runs {len(running)}")
    names = ctx.backend_names()
    victim = running[-1]
    name = names[victim]
    key = ctx.key(TENANT)
    kill_at, down_for, tail = (4.0, 3.0, 6.0) if ctx.short else (10.0, 10.0, 15.0)
    rate = 4.0 if ctx.short else 6.0
    ctx.watch(f"backends: {victim} goes DOWN then up; events log both; acme's req/s holds")
    ctx.say(
        f"streaming as {TENANT!r} at {rate} req/s; killing {name} at {kill_at:.0f} s, restarting it "
        f"{down_for:.0f} s later, then {tail:.0f} s more load"
    )
    load = Load(ctx.gateway, ctx.model, ctx.t0)
    marks: dict[str, float] = {}
    stop = asyncio.Event()

    async def chaos() -> None:
        await asyncio.sleep(kill_at)
        await asyncio.to_thread(ctx.stack.request, "kill", name)
        marks["kill"] = load.now()  # after the supervisor's answer: the process is gone by now
        ctx.say(f"killed {name} (SIGKILL)")
        await asyncio.sleep(down_for)
        await asyncio.to_thread(ctx.stack.request, "start", name)
        marks["back"] = load.now()
        marks["success_at_back"] = await asyncio.to_thread(_success, victim)
        ctx.say(f"{name} is back")
        await asyncio.sleep(tail)
        stop.set()

    async def go() -> list[Record]:
        try:
            recs, _ = await asyncio.gather(
                load.open_loop(rate, 600, TENANT, key, stop, words=32, max_tokens=200, stream=True), chaos()
            )
            return recs
        finally:
            await load.close()

    recs = asyncio.run(go())
    served_after = _success(victim) - marks.get("success_at_back", float("nan"))
    tk = marks["kill"]
    cut = [r for r in recs if not r.ok and r.start < tk <= r.end + 0.05]
    later_fail = [r for r in recs if not r.ok and r.start >= tk]
    later = [r for r in recs if r.start >= tk]
    events = ctx.usage_events(TENANT)
    metered = [(r, events.get(r.rid)) for r in cut]
    fair = [r for r, e in metered if e is not None and int(e["completion_tokens"]) >= r.chunks]
    detail = ", ".join(f"{r.chunks}->{e['completion_tokens'] if e else 'none'}" for r, e in metered[:6])
    hang = [r for r in cut if r.end - tk > 10]
    ctx.say(f"{len(recs)} requests; {len(cut)} cut by the kill; {len(later_fail)} failures after it")
    return [
        Check(
            "streams in flight on the killed replica end with an error",
            ">= 1 cut, none hanging",
            f"{len(cut)} cut ({', '.join(sorted({r.error for r in cut})) or '-'}), {len(hang)} hanging",
            len(cut) >= 1 and not hang,
        ),
        Check(
            "routing drains it: requests after the kill succeed",
            f"{len(later)} of {len(later)}",
            f"{len(later) - len(later_fail)} of {len(later)}"
            + (
                f" ({', '.join(sorted({r.error or str(r.status) for r in later_fail}))})"
                if later_fail
                else ""
            ),
            not later_fail and len(later) > 0,
        ),
        Check(
            "cut streams metered for what was generated",
            "usage event with completion >= tokens received",
            f"{len(fair)} of {len(cut)} (received->metered: {detail})",
            len(fair) == len(cut) and cut != [],
        ),
        Check(
            "the replica serves again after restart",
            "> 0 requests finished on it",
            f"{served_after:.0f}",
            served_after > 0,
        ),
    ]


def redis_down(ctx: Context) -> list[Check]:
    if "redis" not in ctx.info.get("children", {}):
        raise Precondition("the stack uses an external Redis (REDIS_URL); redis-down stops the stack's own")
    key = ctx.key(TENANT)
    stop_at, down_for, tail = (3.0, 3.0, 5.0) if ctx.short else (10.0, 10.0, 10.0)
    rate = 4.0 if ctx.short else 6.0
    before = ctx.usage_totals(TENANT)
    spooled_before = sum(g.value("servelab_gateway_settles_spooled_total") for g in ctx.scrape_gateways())
    ctx.watch(
        "gateway: Redis DOWN then up in the events log; acme's 429s stay 0; req/s drops to 0 and returns"
    )
    ctx.say(
        f"requests as {TENANT!r} at {rate} req/s; Redis stopped at {stop_at:.0f} s, started "
        f"{down_for:.0f} s later, then {tail:.0f} s more load"
    )
    load = Load(ctx.gateway, ctx.model, ctx.t0)
    marks: dict[str, float] = {}
    stop = asyncio.Event()

    async def chaos() -> None:
        await asyncio.sleep(stop_at)
        marks["stop"] = load.now()
        await asyncio.to_thread(ctx.stack.request, "stop", "redis")
        marks["stopped"] = load.now()
        ctx.say("Redis stopped")
        await asyncio.sleep(down_for)
        await asyncio.to_thread(ctx.stack.request, "start", "redis")
        marks["back"] = load.now()
        ctx.say("Redis is back")
        await asyncio.sleep(tail)
        stop.set()

    async def go() -> list[Record]:
        try:
            recs, _ = await asyncio.gather(
                load.open_loop(rate, 600, TENANT, key, stop, words=16, max_tokens=64, stream=True), chaos()
            )
            return recs
        finally:
            await load.close()

    recs = asyncio.run(go())
    down = [r for r in recs if marks["stopped"] + 0.2 < r.start < marks["back"]]
    refused = [r for r in down if r.status == 503]
    served_down = [r for r in down if r.status == 200]
    p95 = pct([r.e2e for r in refused], 0.95)
    after = sorted((r for r in recs if r.start >= marks["back"] and r.ok), key=lambda r: r.start)
    recovery = after[0].start - marks["back"] if after else float("nan")
    served = [r for r in recs if r.status == 200]
    want_req = len(served)
    want_out = sum(int((r.usage or {}).get("completion_tokens", r.chunks)) for r in served)
    got: dict[str, int] = {}
    deadline = time.monotonic() + (20 if ctx.short else 60)
    while time.monotonic() < deadline:  # spooled settles are replayed in the background
        now = ctx.usage_totals(TENANT)
        got = {k: now[k] - before.get(k, 0) for k in now}
        if got["requests"] >= want_req and got["completion_tokens"] >= want_out:
            break
        time.sleep(0.5)
    spooled = (
        sum(g.value("servelab_gateway_settles_spooled_total") for g in ctx.scrape_gateways()) - spooled_before
    )
    ctx.say(f"{len(recs)} requests; {len(down)} during the outage, {len(refused)} refused with 503")
    codes = ", ".join(sorted({r.error for r in refused})) or "-"
    return [
        Check(
            "fail-closed: requests during the outage get 503",
            f"all of {len(down)} (>= 1)",
            f"{len(refused)} 503 ({codes}), {len(served_down)} served",
            bool(down) and len(refused) == len(down),
        ),
        Check("refused at once", "p95 < 3 s", f"p95 {p95:.2f} s", bool(refused) and p95 < 3.0),
        Check("recovery after Redis returns", "first success < 5 s", f"{recovery:.2f} s", recovery < 5.0),
        Check(
            "settles spooled during the outage, then replayed (info)",
            "streams in flight when Redis went away",
            f"{spooled:.0f} spooled",
            True,
        ),
        Check(
            "metering equals served (requests)",
            f"{want_req}",
            f"{got.get('requests', 0)}",
            got.get("requests") == want_req,
        ),
        Check(
            "metering equals served (completion tokens)",
            f"{want_out}",
            f"{got.get('completion_tokens', 0)}",
            got.get("completion_tokens") == want_out,
        ),
    ]


SCENARIOS = {"backend-down": backend_down, "redis-down": redis_down}
