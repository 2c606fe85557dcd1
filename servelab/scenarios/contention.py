"""noisy-neighbour and overload: tenants compete for a saturated model.

Both need the gateway's fair queue, which `servelab up --max-num-seqs N` turns on (it writes the
model's `fairness` block: the engines' batch slots, so the gateway knows when they are full).

noisy-neighbour: tenant `steady` sends at a modest rate, alone and then while tenant `noisy` keeps
twice the model's batch slots busy (closed loop, up to its plan's concurrency). Expected: steady's
p95 TTFT stays within 1 s (or 3 x what it was alone), none of its requests is refused, and noisy
still gets the capacity steady leaves (the queue is work-conserving). Without the fair queue the
steady requests wait behind noisy's in the engines' FCFS queues.

overload: the two tenants' plans are switched for the run (admin API, restored after): `steady`
becomes tier interactive, `noisy` tier batch and sheddable. Offered load is about 2 x capacity:
interactive 0.5 x, batch 1.5 x, open loop. Capacity is measured first with one closed-loop client
per batch slot, as clients / mean latency (Little's law; see `_closed_loop_rate` for why not
completions / time). Expected: the batch tier is shed with 429 `model_overloaded` and
`retry-after`, the interactive tier keeps its goodput (TTFT <= 1 s for >= 90% of its requests),
the model stays busy (completions per second over the arrival window >= 0.7 x capacity) and
nothing else fails. An interactive request that finds every slot taken by batch waits in the
gateway for the next completion (a running request is never displaced, in vLLM either); the
gateway's queue wait p95 per tier is printed beside the verdict.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

from servelab import promparse as pp
from servelab.scenarios.base import Check, Context, Precondition, pct
from servelab.scenarios.load import Load, Record, closed_loop

NOISY, STEADY = "noisy", "steady"
GW = "servelab_gateway_"


def _slots(ctx: Context) -> int:
    cfg = ctx.info["children"]
    running = ctx.running_backends()
    if not running:
        raise Precondition("no replica is running")
    seqs = 0
    for child in cfg.values():
        if child["url"] in running:
            argv = child["argv"]
            seqs += next((int(argv[i + 1]) for i, a in enumerate(argv) if a == "--max-num-seqs"), 1024)
    if seqs > 64:
        raise Precondition(
            f"the replicas have {seqs} batch slots in all and no fair queue configured: "
            "start the stack with --max-num-seqs 8"
        )
    return seqs


def _ttfts(recs: list[Record], start: float, end: float) -> list[float]:
    return [r.ttft for r in recs if r.ok and r.ttft is not None and start <= r.start < end]


def _plan(ctx: Context, tenant: str, body: dict[str, object] | None) -> None:
    req = urllib.request.Request(
        f"{ctx.gateway}/admin/v1/tenants/{tenant}/plan",
        data=json.dumps(body).encode() if body is not None else None,
        method="PUT" if body is not None else "DELETE",
        headers={"authorization": f"Bearer {ctx.info['admin_token']}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10):
        pass


def noisy_neighbour(ctx: Context) -> list[Check]:
    slots = _slots(ctx)
    users = min(2 * slots, 32)
    alone_s, flood_s = (6.0, 14.0) if ctx.short else (20.0, 40.0)
    rate = 2.0
    ctx.watch("tenants: noisy's req/s high and its queue wait growing; steady's queue p95 stays low")
    ctx.say(
        f"{STEADY!r} at {rate} req/s alone for {alone_s:.0f} s, then {NOISY!r} adds {users} closed-loop "
        f"clients ({slots} batch slots in all) for {flood_s:.0f} s"
    )
    load = Load(ctx.gateway, ctx.model, ctx.t0)
    stop_all, stop_noisy = asyncio.Event(), asyncio.Event()
    marks: dict[str, float] = {}
    before = ctx.scrape_gateways()

    async def noisy() -> None:
        await asyncio.sleep(alone_s)
        marks["flood"] = load.now()
        ctx.say(f"{NOISY!r} starts")
        task = asyncio.create_task(
            closed_loop(load, users, stop_noisy, NOISY, ctx.key(NOISY), words=64, max_tokens=64, tag="noisy")
        )
        await asyncio.sleep(flood_s)
        marks["end"] = load.now()
        stop_noisy.set()
        stop_all.set()
        await task

    async def go() -> None:
        try:
            await asyncio.gather(
                load.open_loop(rate, 600, STEADY, ctx.key(STEADY), stop_all, words=64, max_tokens=64), noisy()
            )
        finally:
            await load.close()

    asyncio.run(go())
    after = ctx.scrape_gateways()
    recs = load.records
    steady = [r for r in recs if r.tenant == STEADY]
    noisy_recs = [r for r in recs if r.tenant == NOISY]
    alone = _ttfts(steady, 1.0, marks["flood"])
    crowded = _ttfts(steady, marks["flood"] + 2.0, marks["end"])
    p_alone, p_crowded = pct(alone, 0.95), pct(crowded, 0.95)
    refused = [r for r in steady if not r.ok]
    flood_ok = [r for r in recs if r.ok and marks["flood"] <= r.start < marks["end"]]
    noisy_share = sum(1 for r in flood_ok if r.tenant == NOISY) / max(1, len(flood_ok))
    waits = {t: pp.histogram_quantile(0.95, _merged(before, after, t)) for t in (STEADY, NOISY)}
    bound = max(1.0, 3 * p_alone)
    return [
        Check(
            "steady's p95 TTFT while noisy floods",
            f"<= {bound:.2f} s (1 s or 3 x alone)",
            f"{p_alone:.2f} s alone -> {p_crowded:.2f} s ({len(crowded)} requests)",
            bool(crowded) and p_crowded <= bound,
        ),
        Check(
            "steady is never refused",
            "0 failed",
            f"{len(refused)} of {len(steady)}"
            + (f" ({', '.join(sorted({r.error or str(r.status) for r in refused}))})" if refused else ""),
            not refused,
        ),
        Check(
            "noisy gets what steady leaves (work-conserving)",
            "> 50% of requests served in the flood",
            f"{100 * noisy_share:.0f}% of {len(flood_ok)} "
            f"({len([r for r in noisy_recs if r.ok])} noisy served)",
            noisy_share > 0.5,
        ),
        Check(
            "gateway queue wait p95 (info)",
            "noisy waits, steady does not",
            f"steady {waits[STEADY]:.2f} s, noisy {waits[NOISY]:.2f} s",
            True,
        ),
    ]


def _merged(before: list[pp.Snapshot], after: list[pp.Snapshot], tenant: str) -> list[tuple[float, float]]:
    merged: dict[float, float] = {}
    for b, a in zip(before, after, strict=True):
        if a.ok and b.ok:
            for le, n in pp.bucket_increase(b, a, GW + "queue_wait_seconds", tenant=tenant):
                merged[le] = merged.get(le, 0.0) + n
    return sorted(merged.items())


def _closed_loop_rate(recs: list[Record], clients: int, since: float) -> float:
    """Requests per second a closed loop of `clients` sustained: clients / mean latency (Little's law).

    Not completions / elapsed time: equal requests started together finish together, so a window
    holds a whole number of cohorts and counting completions in it was measured to overstate the
    rate by about 20% (4 cohorts of 16 counted in 3.2 cohort periods: 15.2 req/s against the
    engines' own 16 slots / 1.26 s = 12.7 req/s).
    """
    done = [r for r in recs if r.tag == "calib" and r.ok and r.start >= since]
    latency = sum(r.e2e for r in done)
    return clients * len(done) / latency if latency > 0 else 0.0


def _completion_rate(recs: list[Record], start: float, end: float) -> float:
    """Requests served per second over [start, end): completions in the window, whenever they began
    (not the requests begun in it divided by a span that includes their drain)."""
    return len([r for r in recs if r.ok and start <= r.end < end]) / (end - start)


def overload(ctx: Context) -> list[Check]:
    slots = _slots(ctx)
    calib_s, run_s = (5.0, 14.0) if ctx.short else (10.0, 40.0)
    ctx.say(f"measuring capacity: {slots} closed-loop clients (one per batch slot) for {calib_s:.0f} s")
    load = Load(ctx.gateway, ctx.model, ctx.t0)
    stop = asyncio.Event()
    kw: dict[str, Any] = {"words": 64, "max_tokens": 64}

    async def calibrate() -> float:
        t = load.now()
        task = asyncio.create_task(closed_loop(load, slots, stop, NOISY, ctx.key(NOISY), tag="calib", **kw))
        await asyncio.sleep(calib_s)
        stop.set()
        await task
        return _closed_loop_rate(load.records, slots, since=t + 1.0)

    capacity = asyncio.run(calibrate())
    hi, lo = 0.5 * capacity, 1.5 * capacity
    ctx.say(
        f"capacity ~{capacity:.1f} req/s; now {STEADY!r} (interactive) at {hi:.1f} req/s and {NOISY!r} "
        f"(batch, sheddable) at {lo:.1f} req/s for {run_s:.0f} s: 2 x capacity"
    )
    ctx.watch("tenants: noisy's 429s by limit (model_overloaded) climb; steady's queue p95 stays low")
    _plan(ctx, STEADY, {"tier": "interactive"})
    _plan(ctx, NOISY, {"tier": "batch", "sheddable": True})
    before = ctx.scrape_gateways()
    load2 = Load(ctx.gateway, ctx.model, ctx.t0)
    try:

        async def both() -> None:
            try:
                await asyncio.gather(
                    load2.open_loop(hi, run_s, STEADY, ctx.key(STEADY), **kw),
                    load2.open_loop(lo, run_s, NOISY, ctx.key(NOISY), **kw),
                )
            finally:
                await load2.close()
                await load.close()

        asyncio.run(both())
    finally:
        _plan(ctx, STEADY, None)
        _plan(ctx, NOISY, None)
        ctx.say("plans restored")
    after = ctx.scrape_gateways()
    waits = {t: pp.histogram_quantile(0.95, _merged(before, after, t)) for t in (STEADY, NOISY)}
    first = min(r.start for r in load2.records)
    recs = [r for r in load2.records if r.start >= first + 2.0]
    inter = [r for r in recs if r.tenant == STEADY]
    batch = [r for r in recs if r.tenant == NOISY]
    good = [r for r in inter if r.ok and r.ttft is not None and r.ttft <= 1.0]
    shed = [r for r in batch if r.status == 429]
    shed_ok = [r for r in shed if "retry-after" in r.headers]
    other = [r for r in recs if not r.ok and r.status != 429]
    served = _completion_rate(load2.records, first + 2.0, first + run_s)
    p95 = pct([r.ttft for r in inter if r.ok and r.ttft is not None], 0.95)
    return [
        Check(
            "interactive tier goodput",
            ">= 90% served with TTFT <= 1 s",
            f"{100 * len(good) / max(1, len(inter)):.0f}% of {len(inter)} (p95 TTFT {p95:.2f} s)",
            bool(inter) and len(good) >= 0.9 * len(inter),
        ),
        Check(
            "batch tier is shed",
            "429 model_overloaded with retry-after",
            f"{len(shed)} of {len(batch)} shed ({', '.join(sorted({r.error for r in shed})) or '-'}); "
            f"{len(shed_ok)} with retry-after",
            bool(shed) and len(shed_ok) == len(shed),
        ),
        Check(
            "the model stays busy",
            f">= 0.7 x capacity ({0.7 * capacity:.1f} req/s) served",
            f"{served:.1f} req/s",
            served >= 0.7 * capacity,
        ),
        Check(
            "no other failures",
            "0",
            f"{len(other)}"
            + (f" ({', '.join(sorted({r.error or str(r.status) for r in other}))})" if other else ""),
            not other,
        ),
        Check(
            "gateway queue wait p95 (info)",
            "info: interactive waits for a free slot, batch is refused instead",
            f"interactive {waits[STEADY]:.2f} s, batch {waits[NOISY]:.2f} s",
            True,
        ),
    ]


SCENARIOS = {"noisy-neighbour": noisy_neighbour, "overload": overload}
