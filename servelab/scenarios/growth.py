"""cold-start and scale-out: a replica joins a model that is serving load.

scale-out: more clients than the running replicas have batch slots (closed loop, so the queue is
real and bounded), then a spare replica is started. Expected: requests waited in the engines'
queues before and barely after; p95 end-to-end latency and the engines' p95 TTFT both drop.

cold-start: the spare is started as a freshly launched vLLM 0.5.x would be, with its fused-MoE
Triton kernels compiled on first use (`servelab serve --cold-start`, server/sim/coldstart.py):
every prefill step of a size class it has not met yet stalls the whole engine for the compile.
Expected: its TTFT p95 in its first seconds is far above the warm replicas' over the same time,
and falls once the kernels it needs are compiled. Both stop the spare again at the end.
"""

from __future__ import annotations

import asyncio
import math

from servelab import promparse as pp
from servelab.scenarios.base import Check, Context, Precondition, pct
from servelab.scenarios.load import Load, closed_loop

TENANT = "acme"
TTFT = "vllm:time_to_first_token_seconds"
GW = "servelab_gateway_"


def _spare(ctx: Context) -> tuple[str, str]:
    spares = ctx.spare_backends()
    if not spares:
        raise Precondition("it needs a spare replica (servelab up --spare-backends 1)")
    return spares[0], ctx.backend_names()[spares[0]]


def _max_num_seqs(ctx: Context, name: str) -> int:
    argv = ctx.info["children"][name]["argv"]
    for i, a in enumerate(argv):
        if a.startswith("--max-num-seqs="):
            return int(a.split("=", 1)[1])
        if a == "--max-num-seqs":
            return int(argv[i + 1])
    return 1024


def _scrape_all(urls: list[str]) -> dict[str, pp.Snapshot]:
    return {u: pp.scrape(u + "/metrics") for u in urls}


def _ttft_p95(a: dict[str, pp.Snapshot], b: dict[str, pp.Snapshot], urls: list[str]) -> tuple[float, float]:
    """p95 TTFT over the urls' bucket increases between two scrapes, and how many requests it covers."""
    merged: dict[float, float] = {}
    for u in urls:
        if a[u].ok and b[u].ok:
            for le, n in pp.bucket_increase(a[u], b[u], TTFT):
                merged[le] = merged.get(le, 0.0) + n
    count = max(merged.values(), default=0.0)
    return pp.histogram_quantile(0.95, merged.items()), count


def _gw_wait_p95(a: list[pp.Snapshot], b: list[pp.Snapshot]) -> float:
    merged: dict[float, float] = {}
    for x, y in zip(a, b, strict=True):
        if x.ok and y.ok:
            for le, n in pp.bucket_increase(x, y, GW + "queue_wait_seconds"):
                merged[le] = merged.get(le, 0.0) + n
    q = pp.histogram_quantile(0.95, merged.items())
    return 0.0 if math.isnan(q) else q


def _max(a: float, b: float) -> float:
    return max(x for x in (a, b, 0.0) if not math.isnan(x))


def scale_out(ctx: Context) -> list[Check]:
    url, name = _spare(ctx)
    running = ctx.running_backends()
    seqs = _max_num_seqs(ctx, name)
    if seqs > 64:
        raise Precondition(
            f"replicas run --max-num-seqs {seqs}: saturating them needs thousands of clients; "
            "start the stack with --max-num-seqs 8"
        )
    users = int(1.5 * len(running) * seqs)
    phase = 8.0 if ctx.short else 20.0
    ctx.watch(f"backends: 'wait' > 0 on {len(running)} replicas, then {url} comes up and the queues drain")
    ctx.say(
        f"{users} closed-loop clients as {TENANT!r} against {len(running)} replicas of {seqs} slots each; "
        f"{phase:.0f} s before, then {name} starts, {phase:.0f} s after"
    )
    load = Load(ctx.gateway, ctx.model, ctx.t0)
    stop = asyncio.Event()
    marks: dict[str, float] = {}
    snaps: dict[str, dict[str, pp.Snapshot]] = {}
    waiting: dict[str, float] = {}
    gws: dict[str, list[pp.Snapshot]] = {}
    urls = [*running, url]

    async def script() -> None:
        await asyncio.sleep(3.0)  # reach steady state
        marks["b0"] = load.now()
        snaps["b0"] = await asyncio.to_thread(_scrape_all, running)
        gws["b0"] = await asyncio.to_thread(ctx.scrape_gateways)
        await asyncio.sleep(phase)
        snaps["b1"] = await asyncio.to_thread(_scrape_all, running)
        gws["b1"] = await asyncio.to_thread(ctx.scrape_gateways)
        waiting["before"] = sum(s.value("vllm:num_requests_waiting") for s in snaps["b1"].values())
        waiting["before_gw"] = sum(g.value(GW + "fair_queue_depth") for g in gws["b1"])
        marks["b1"] = load.now()
        await asyncio.to_thread(ctx.stack.request, "start", name)
        ctx.say(f"{name} started")
        await asyncio.sleep(3.0)
        marks["a0"] = load.now()
        snaps["a0"] = await asyncio.to_thread(_scrape_all, urls)
        gws["a0"] = await asyncio.to_thread(ctx.scrape_gateways)
        await asyncio.sleep(phase)
        snaps["a1"] = await asyncio.to_thread(_scrape_all, urls)
        gws["a1"] = await asyncio.to_thread(ctx.scrape_gateways)
        waiting["after"] = sum(s.value("vllm:num_requests_waiting") for s in snaps["a1"].values())
        marks["a1"] = load.now()
        stop.set()

    async def go() -> None:
        try:
            await asyncio.gather(
                closed_loop(
                    load, users, stop, TENANT, key=ctx.key(TENANT), words=64, max_tokens=128, stream=False
                ),
                script(),
            )
        finally:
            await load.close()

    try:
        asyncio.run(go())
    finally:
        ctx.stack.request("stop", name)
        ctx.say(f"{name} stopped again")
    recs = load.records

    def e2e(a: str, b: str) -> list[float]:
        return [r.e2e for r in recs if r.ok and r.start >= marks[a] and r.end <= marks[b]]

    before, after = e2e("b0", "b1"), e2e("a0", "a1")
    p_before, p_after = pct(before, 0.95), pct(after, 0.95)
    t_before, n_b = _ttft_p95(snaps["b0"], snaps["b1"], running)
    t_after, n_a = _ttft_p95(snaps["a0"], snaps["a1"], urls)
    # With the fair queue on, requests wait in the gateway rather than in the engines: count both.
    q_before, q_after = _gw_wait_p95(gws["b0"], gws["b1"]), _gw_wait_p95(gws["a0"], gws["a1"])
    w_before, w_after = _max(t_before, q_before), _max(t_after, q_after)
    queued = waiting["before"] + waiting["before_gw"]
    failed = [r for r in recs if not r.ok]
    return [
        Check(
            "saturated before: requests queue",
            "> 0 waiting in the engines or the gateway's fair queue",
            f"{waiting['before']:.0f} in the engines, {waiting['before_gw']:.0f} in the gateway",
            queued > 0,
        ),
        Check(
            "p95 end-to-end drops",
            "after <= 0.8 x before",
            f"{p_before:.2f} s -> {p_after:.2f} s ({len(before)} / {len(after)} requests)",
            bool(before) and bool(after) and p_after <= 0.8 * p_before,
        ),
        Check(
            "p95 time before the first token drops",
            "after <= 0.5 x before (the larger of gateway queue wait and engine TTFT)",
            f"{w_before:.2f} s -> {w_after:.2f} s (engine TTFT {t_before:.2f} -> {t_after:.2f} s over "
            f"{n_b:.0f} / {n_a:.0f} requests; gateway queue {q_before:.2f} -> {q_after:.2f} s)",
            n_b > 0 and n_a > 0 and w_after <= 0.5 * w_before,
        ),
        Check("no request failed", "0", str(len(failed)), not failed),
    ]


def cold_start(ctx: Context) -> list[Check]:
    url, name = _spare(ctx)
    running = ctx.running_backends()
    if not running:
        raise Precondition("no replica is running")
    rate = 8.0
    slice_s, limit_s = (5.0, 60.0) if ctx.short else (5.0, 120.0)
    ctx.watch(f"backends: {url} comes up; its TTFT p95 jumps past a second, then falls as it warms")
    ctx.say(
        f"streaming as {TENANT!r} at {rate} req/s; {name} joins cold; its TTFT p95 per {slice_s:.0f} s slice "
        f"against the warm replicas', until it is within 3x of theirs (at most {limit_s:.0f} s)"
    )
    load = Load(ctx.gateway, ctx.model, ctx.t0)
    stop = asyncio.Event()
    slices: list[tuple[float, float, float, float]] = []  # (end since join, cold p95, n, warm p95)
    marks: dict[str, float] = {}

    async def script() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(ctx.stack.request, "start", name, ("--cold-start",))
        marks["join"] = load.now()
        ctx.say(f"{name} started cold")
        prev = await asyncio.to_thread(_scrape_all, [*running, url])
        while load.now() - marks["join"] < limit_s:
            await asyncio.sleep(slice_s)
            cur = await asyncio.to_thread(_scrape_all, [*running, url])
            cold, n = _ttft_p95(prev, cur, [url])
            warm, _ = _ttft_p95(prev, cur, running)
            slices.append((load.now() - marks["join"], cold, n, warm))
            ctx.say(
                f"  slice to {slices[-1][0]:.0f} s: cold replica TTFT p95 {cold:.2f} s over {n:.0f} "
                f"requests; warm replicas {warm:.2f} s"
            )
            prev = cur
            if n >= 3 and cold <= 3 * warm and len(slices) > 1:
                break
        stop.set()

    async def sizes() -> None:
        # Two prompt sizes: the prefill step sizes (and so the kernels) repeat, so warming up ends.
        await asyncio.gather(
            load.open_loop(rate / 2, 600, TENANT, ctx.key(TENANT), stop, words=40, max_tokens=32),
            load.open_loop(rate / 2, 600, TENANT, ctx.key(TENANT), stop, words=400, max_tokens=32),
        )

    async def go() -> None:
        try:
            await asyncio.gather(sizes(), script())
        finally:
            await load.close()

    try:
        asyncio.run(go())
    finally:
        ctx.stack.request("stop", name)
        ctx.say(f"{name} stopped again")
    first = slices[0] if slices else (0.0, math.nan, 0.0, math.nan)
    worst = max(slices, key=lambda s: s[1] if s[2] else -1.0) if slices else first
    last = slices[-1] if slices else first
    warm_at = last[0] if slices and last[2] >= 3 and last[1] <= 3 * last[3] else math.nan
    failed = [r for r in load.records if not r.ok]
    return [
        Check(
            "TTFT spikes while kernels compile",
            "a slice with cold p95 > 1 s and > 3 x the warm replicas'",
            f"cold {worst[1]:.2f} s vs warm {worst[3]:.2f} s "
            f"(slice to {worst[0]:.0f} s, {worst[2]:.0f} requests)",
            worst[1] > 1.0 and worst[1] > 3 * worst[3],
        ),
        Check(
            "then it is warm",
            f"p95 within 3 x the warm replicas' within {limit_s:.0f} s",
            f"after {warm_at:.0f} s: {last[1]:.2f} s vs {last[3]:.2f} s"
            if not math.isnan(warm_at)
            else f"not within {last[0]:.0f} s (last slice {last[1]:.2f} s vs {last[3]:.2f} s)",
            not math.isnan(warm_at),
        ),
        Check("no request failed", "0", str(len(failed)), not failed),
    ]


SCENARIOS = {"scale-out": scale_out, "cold-start": cold_start}
