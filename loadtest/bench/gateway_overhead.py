"""How much latency and CPU the gateway adds over calling its upstream directly.

    .venv/bin/python -m loadtest.bench.gateway_overhead --duration 10 \
        --out docs/results/gateway-overhead.md

Starts on 127.0.0.1 a real redis-server, the fast upstream (`loadtest.bench.upstream`, 16 tokens,
no artificial delay) and one gateway worker (`python -m gateway`, uvloop + httptools), then
sends open-loop traffic (requests start on a fixed schedule whatever the answers do) at each
rate, first straight to the upstream and then through the gateway, non-streaming and streaming.
It reports, per rate: p50/p95/p99 end-to-end latency both ways and their difference (the added
latency), the achieved rate, errors, gateway CPU per request (utime+stime of its process from
/proc), and Redis commands per request from `INFO commandstats` (EVALSHA calls are the round
trips; commands run inside the scripts are listed apart). It then raises the rate until the
gateway falls behind (achieved < 97% of offered, errors, or p99 over 100 ms) to find the
highest rate it sustains. The load generator runs in this process on the same machine, so
every number includes sharing the CPUs with it.

With `--baseline DIR` (a checkout of an older commit, e.g. `git worktree add /tmp/gw-before
<commit>`) that commit's gateway runs too, against the same Redis and upstream, at the same
fixed rates, interleaved with the current one, so a change is judged within one run:

    git worktree add /tmp/gw-before 949a299
    .venv/bin/python -m loadtest.bench.gateway_overhead --duration 10 --rates 200 --ramp '' \
        --baseline /tmp/gw-before --out docs/results/gateway-overhead.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import redis
import yaml
from fastapi import FastAPI, Request, Response

from servelab.procs import Child, free_port, python_module, start, wait_http_ok, wait_port
from servelab.redisproc import start_redis

MODEL = "fast"
ADMIN = "bench-admin-token"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class RunResult:
    target: str
    stream: bool
    rate: float
    sent: int
    ok: int
    errors: int
    achieved_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    lag_p99_ms: float  # how late the generator started requests (its own saturation)
    cpu_ms_per_req: float | None
    redis_per_req: dict[str, float] | None
    cpu_user_ms_per_req: float | None = None  # the user-space part of cpu_ms_per_req
    rep: int = 0  # which pass of --repeat (fixed rates are run in interleaved passes)


LEAN_SCRIPT = "local n = redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], 60); return n"


def serve_lean(port: int, upstream: str, redis_url: str) -> None:
    """The calibration point from the issue: FastAPI + aiohttp + one EVALSHA, no metering, no metrics."""
    import contextlib

    import uvicorn
    from redis.asyncio import BlockingConnectionPool, Redis

    state: dict[str, object] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        r = Redis(connection_pool=BlockingConnectionPool.from_url(redis_url, max_connections=256))
        state["script"] = r.register_script(LEAN_SCRIPT)
        state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await state["session"].close()  # type: ignore[attr-defined]
        await r.aclose(close_connection_pool=True)

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.body()
        await state["script"](keys=["{lean}:n"], args=[])  # type: ignore[operator]
        session: aiohttp.ClientSession = state["session"]  # type: ignore[assignment]
        async with session.post(
            f"{upstream}/v1/chat/completions", data=body, headers={"content-type": "application/json"}
        ) as resp:
            data = await resp.read()
        return Response(data, status_code=resp.status, media_type="application/json")

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


def start_upstream(work: Path) -> tuple[Child, str]:
    """The fast upstream every overhead benchmark uses (16 tokens, no delay), ready; and its URL."""
    port = free_port()
    up = start(
        "upstream",
        python_module("loadtest.bench.upstream", "--port", str(port), "--tokens", "16", "--model", MODEL),
        log_path=work / "upstream.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/health", 20, up.popen)
    return up, url


def gateway_env(redis_url: str, work: Path) -> dict[str, str]:
    """Environment of a benchmarked gateway process: its Redis, admin token and spool."""
    return {
        "REDIS_URL": redis_url,
        "SERVELAB_ADMIN_TOKEN": ADMIN,
        "SERVELAB_LOG_LEVEL": "warning",
        "SERVELAB_SPOOL_DIR": str(work / "spool"),
    }


def bench_config(upstream_url: str, fairness: bool = False) -> dict[str, object]:
    """The gateway config every overhead benchmark uses: one tenant whose limits never bind.

    `fairness` adds the model's fair queue with engine slots the load never fills (a saturation
    detector that scrapes the upstream, a queue that never engages): the hot path of a fair but
    unsaturated model."""
    model: dict[str, object] = {
        "backends": [upstream_url],
        "input_price_per_million_usd": 0.5,
        "output_price_per_million_usd": 1.5,
    }
    if fairness:
        model["fairness"] = {"max_num_seqs": 100_000}
    return {
        "plans": {
            "bench": {
                "requests_per_minute": 10_000_000,
                "tokens_per_minute": 1_000_000_000,
                "tokens_per_month": 10**15,
                "max_concurrent_requests": 100_000,
                "default_max_tokens": 16,
            }
        },
        "tenants": {"bench": {"plan": "bench"}},
        "models": {MODEL: model},
    }


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user + system, user) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK, int(fields[11]) / TICK


def commandstats(r: redis.Redis) -> dict[str, int]:
    info = r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


async def one(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], stream: bool
) -> bool:
    async with session.post(url, data=body, headers=headers) as resp:
        if stream:
            async for _ in resp.content.iter_any():
                pass
        else:
            await resp.read()
        return resp.status == 200


async def open_loop(
    url: str, key: str | None, rate: float, duration_s: float, stream: bool
) -> tuple[list[float], list[float], int, int, float]:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
            "max_tokens": 16,
            "stream": stream,
        }
    ).encode()
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    n = int(rate * duration_s)
    lat: list[float] = []
    lag: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as session:
        # warm the connection pool and the gateway's key cache
        await asyncio.gather(*(one(session, url, body, headers, stream) for _ in range(20)))
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05

        async def fire(i: int) -> None:
            nonlocal errors
            due = t0 + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            start_t = loop.time()
            lag.append(start_t - due)
            try:
                ok = await one(session, url, body, headers, stream)
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                lat.append(loop.time() - start_t)
            else:
                errors += 1

        await asyncio.gather(*(fire(i) for i in range(n)))
        elapsed = loop.time() - t0
    return lat, lag, n, errors, elapsed


def run(
    target: str,
    url: str,
    key: str | None,
    rate: float,
    duration_s: float,
    stream: bool,
    gw_pid: int | None,
    r: redis.Redis,
    rep: int = 0,
) -> RunResult:
    cpu0, user0 = cpu_seconds(gw_pid) if gw_pid else (0.0, 0.0)
    cs0 = commandstats(r)
    lat, lag, n, errors, elapsed = asyncio.run(open_loop(url, key, rate, duration_s, stream))
    cpu1, user1 = cpu_seconds(gw_pid) if gw_pid else (0.0, 0.0)
    cpu = (cpu1 - cpu0) if gw_pid else None
    cs1 = commandstats(r)
    total = n + 20  # the warm-up requests count too
    redis_per = None
    if gw_pid:
        redis_per = {
            k: round((cs1.get(k, 0) - cs0.get(k, 0)) / total, 3)
            for k in cs1
            if cs1.get(k, 0) - cs0.get(k, 0) > 0 and k not in ("info",)
        }
    ms = [x * 1000 for x in lat]
    return RunResult(
        target=target,
        stream=stream,
        rate=rate,
        sent=n,
        ok=len(lat),
        errors=errors,
        achieved_rps=len(lat) / elapsed if elapsed > 0 else 0.0,
        p50_ms=pct(ms, 0.50),
        p95_ms=pct(ms, 0.95),
        p99_ms=pct(ms, 0.99),
        lag_p99_ms=pct([x * 1000 for x in lag], 0.99),
        cpu_ms_per_req=(cpu * 1000 / total) if cpu is not None else None,
        redis_per_req=redis_per,
        cpu_user_ms_per_req=((user1 - user0) * 1000 / total) if gw_pid else None,
        rep=rep,
    )


def sustained(res: RunResult) -> bool:
    return res.errors == 0 and res.achieved_rps >= 0.97 * res.rate and res.p99_ms <= 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per rate step")
    ap.add_argument("--rates", default="50,200,500", help="fixed rates compared with the direct path")
    ap.add_argument("--ramp", default="600,800,1000,1200,1500,2000", help="rates tried for the maximum")
    ap.add_argument("--modes", default="nonstream,stream")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    ap.add_argument("--json", type=Path, default=None, help="write raw results as JSON here")
    ap.add_argument(
        "--lean",
        action="store_true",
        help="also measure the issue's calibration point (FastAPI + aiohttp + one EVALSHA), non-streaming",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="checkout of an older commit whose gateway is measured too (target 'before')",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="passes over the fixed rates, every target interleaved in each pass; tables show medians "
        "and the before/after CPU comparison uses the median of the per-pass ratios",
    )
    ap.add_argument(
        "--fairness",
        action="store_true",
        help="give the model a fair queue that never saturates (the baseline must understand it too)",
    )
    ap.add_argument("--report-from", type=Path, default=None, help="re-render the report from --json output")
    ap.add_argument(
        "--serve-lean", nargs=3, metavar=("PORT", "UPSTREAM", "REDIS_URL"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.serve_lean:
        serve_lean(int(args.serve_lean[0]), args.serve_lean[1], args.serve_lean[2])
        return
    if args.report_from:
        results: list[RunResult] = [RunResult(**x) for x in json.loads(args.report_from.read_text())]
        text = report(results, args, args.report_from.stat().st_mtime)
        if args.out:
            args.out.write_text(text)
        print(text)
        return

    args.load_at_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    children: list[Child] = []
    rs = start_redis(work / "redis")
    try:
        gw_port = free_port()
        up, up_url = start_upstream(work)
        children.append(up)
        cfg = bench_config(up_url, fairness=args.fairness)
        (work / "gateway.yaml").write_text(yaml.safe_dump(cfg))
        gw_env = gateway_env(rs.url, work)
        gw = start(
            "gateway",
            python_module("gateway", "--config", str(work / "gateway.yaml"), "--port", str(gw_port)),
            env=gw_env,
            log_path=work / "gateway.log",
        )
        children.append(gw)
        gw_url = f"http://127.0.0.1:{gw_port}"
        wait_http_ok(f"{gw_url}/readyz", 20, gw.popen)
        targets = [("direct", up_url, None), ("gateway", gw_url, gw)]
        if args.baseline:
            # `python -m` puts the working directory first on sys.path: run it from the checkout.
            base_port = free_port()
            base = start(
                "before",
                python_module("gateway", "--config", str(work / "gateway.yaml"), "--port", str(base_port)),
                env={**gw_env, "PYTHONPATH": str(args.baseline.resolve())},
                log_path=work / "before.log",
                cwd=args.baseline.resolve(),
            )
            children.append(base)
            wait_http_ok(f"http://127.0.0.1:{base_port}/readyz", 20, base.popen)
            targets.insert(1, ("before", f"http://127.0.0.1:{base_port}", base))
        key = httpx.post(
            f"{gw_url}/admin/v1/tenants/bench/keys", headers={"authorization": f"Bearer {ADMIN}"}, json={}
        ).json()["key"]
        r = redis.Redis.from_url(rs.url)
        results = []
        if args.lean:
            lean_port = free_port()
            lean = start(
                "lean",
                python_module(
                    "loadtest.bench.gateway_overhead", "--serve-lean", str(lean_port), up_url, rs.url
                ),
                log_path=work / "lean.log",
            )
            children.append(lean)
            lean_url = f"http://127.0.0.1:{lean_port}"
            wait_port("127.0.0.1", lean_port, 20)
            for rate in [float(x) for x in args.rates.split(",")]:
                res = run(
                    "lean", f"{lean_url}/v1/chat/completions", None, rate, args.duration, False, lean.pid, r
                )
                results.append(res)
                print(json.dumps(res.__dict__), flush=True)
            lean.stop()
        for mode in args.modes.split(","):
            stream = mode == "stream"
            for rate in [float(x) for x in args.rates.split(",")]:
                for rep in range(args.repeat):
                    for target, url, child in targets:
                        k = key if child else None
                        pid = child.pid if child else None
                        res = run(
                            target, f"{url}/v1/chat/completions", k, rate, args.duration, stream, pid, r, rep
                        )
                        results.append(res)
                        print(json.dumps(res.__dict__), flush=True)
            for rate in [float(x) for x in args.ramp.split(",") if x]:
                res = run(
                    "gateway", f"{gw_url}/v1/chat/completions", key, rate, args.duration, stream, gw.pid, r
                )
                results.append(res)
                print(json.dumps(res.__dict__), flush=True)
                if not sustained(res):
                    break
        if args.json:
            args.json.write_text(json.dumps([x.__dict__ for x in results], indent=2))
        if args.out:
            args.out.write_text(report(results, args))
            print(f"wrote {args.out}")
    finally:
        for c in reversed(children):
            c.stop()
        rs.stop()


def _commit() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def collapse(results: list[RunResult]) -> list[RunResult]:
    """One row per (target, mode, rate): the median of each figure over the --repeat passes."""
    groups: dict[tuple[str, bool, float], list[RunResult]] = {}
    for x in results:
        groups.setdefault((x.target, x.stream, x.rate), []).append(x)
    out = []
    for xs in groups.values():
        if len(xs) == 1:
            out.append(xs[0])
            continue

        def med(name: str, xs: list[RunResult] = xs) -> float | None:
            vals = [v for v in (getattr(x, name) for x in xs) if v is not None]
            return statistics.median(vals) if vals else None

        fields: dict[str, Any] = {
            name: med(name)
            for name in (
                "achieved_rps",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "lag_p99_ms",
                "cpu_ms_per_req",
                "cpu_user_ms_per_req",
            )
        }
        fields.update(
            sent=sum(x.sent for x in xs), ok=sum(x.ok for x in xs), errors=sum(x.errors for x in xs)
        )
        out.append(replace(xs[0], **fields))
    return out


def pass_ratios(results: list[RunResult]) -> dict[tuple[bool, float], list[tuple[RunResult, RunResult]]]:
    """(before, after) pairs of the same pass, per (mode, rate): run back to back, so each pair
    shares the machine's state of that moment and their ratio is steadier than either figure."""
    out: dict[tuple[bool, float], list[tuple[RunResult, RunResult]]] = {}
    for b in (x for x in results if x.target == "before" and x.cpu_ms_per_req):
        g = next(
            (
                x
                for x in results
                if (x.target, x.stream, x.rate, x.rep) == ("gateway", b.stream, b.rate, b.rep)
                and x.cpu_ms_per_req
            ),
            None,
        )
        if g is not None:
            out.setdefault((b.stream, b.rate), []).append((b, g))
    return out


def cpu_change(pairs: list[tuple[RunResult, RunResult]]) -> float:
    """Median over passes of after/before CPU per request, minus 1."""
    return statistics.median(g.cpu_ms_per_req / b.cpu_ms_per_req for b, g in pairs) - 1  # type: ignore[operator]


def summary(
    results: list[RunResult],
    ramped: bool = True,
    pairs: dict[tuple[bool, float], list[tuple[RunResult, RunResult]]] | None = None,
) -> list[str]:
    """The issue's targets next to what this run measured (`results` one row per target and rate)."""

    def find(target: str, stream: bool, rate: float) -> RunResult | None:
        return next((x for x in results if (x.target, x.stream, x.rate) == (target, stream, rate)), None)

    out = ["## Against the targets", "", "| target | measured | met |", "|---|---|---|"]
    gw, d = find("gateway", False, 200.0), find("direct", False, 200.0)
    if gw and d:
        p50, p99 = gw.p50_ms - d.p50_ms, gw.p99_ms - d.p99_ms
        out.append(
            f"| p50 added ≤ 2 ms at 200 req/s, non-streaming | {p50:.2f} ms | {'yes' if p50 <= 2 else 'no'} |"
        )
        out.append(
            f"| p99 added ≤ 5 ms at 200 req/s, non-streaming | {p99:.2f} ms | {'yes' if p99 <= 5 else 'no'} |"
        )
    for stream, goal in ((False, 800), (True, 500)) if ramped else ():
        best = max(
            (x.rate for x in results if x.target == "gateway" and x.stream == stream and sustained(x)),
            default=0.0,
        )
        kind = "streaming" if stream else "non-streaming"
        out.append(
            f"| sustains ≥ {goal} req/s {kind} | {best:.0f} req/s | {'yes' if best >= goal else 'no'} |"
        )
    cpus = [
        (x.rate, x.stream, x.cpu_ms_per_req) for x in results if x.target == "gateway" and x.cpu_ms_per_req
    ]
    if cpus:
        cells = ", ".join(f"{c:.2f} @ {r:.0f}{' s' if s else ''}" for r, s, c in cpus)
        parts = []
        for stream in (False, True):
            rates = [r for r, st, c in cpus if st == stream and c <= 0.8]
            kind = "streaming" if stream else "non-streaming"
            parts.append(f"{kind} at ≥ {min(rates):.0f} req/s" if rates else f"{kind}: no")
        ok = "; ".join(parts)
        out.append(f"| gateway CPU ≤ 0.8 ms/request | {cells} (ms @ req/s, s = streaming) | {ok} |")
    rt = [x.redis_per_req.get("evalsha", 0) for x in results if x.target == "gateway" and x.redis_per_req]
    if rt:
        out.append(
            f"| exactly 2 Redis round trips per request | {min(rt):.3f}–{max(rt):.3f} EVALSHA/request | "
            f"{'yes' if all(abs(v - 2) < 0.01 for v in rt) else 'no'} |"
        )
    for x in (x for x in results if x.target == "before"):
        g, d = find("gateway", x.stream, x.rate), find("direct", x.stream, x.rate)
        if g and d and g.cpu_ms_per_req and x.cpu_ms_per_req:
            kind = "streaming" if x.stream else "non-streaming"
            passes = (pairs or {}).get((x.stream, x.rate), [])
            change = cpu_change(passes) if passes else g.cpu_ms_per_req / x.cpu_ms_per_req - 1
            how = f"median of {len(passes)} paired passes" if len(passes) > 1 else "one pass"
            out.append(
                f"| (before → after) {kind}, {x.rate:.0f} req/s: added p50, added p99, CPU/request "
                f"| {x.p50_ms - d.p50_ms:.2f} → {g.p50_ms - d.p50_ms:.2f} ms, "
                f"{x.p99_ms - d.p99_ms:.2f} → {g.p99_ms - d.p99_ms:.2f} ms, "
                f"{x.cpu_ms_per_req:.3f} → {g.cpu_ms_per_req:.3f} ms "
                f"({change * 100:+.1f} %, {how}) "
                f"| CPU within 10 %: {'yes' if change <= 0.10 else 'no'} |"
            )
    lean = [x for x in results if x.target == "lean"]
    for x in lean:
        g = find("gateway", False, x.rate)
        if g and g.cpu_ms_per_req and x.cpu_ms_per_req:
            out.append(
                f"| (calibration) lean proxy CPU, {x.rate:.0f} req/s | {x.cpu_ms_per_req:.2f} ms vs gateway "
                f"{g.cpu_ms_per_req:.2f} ms | – |"
            )
    return [*out, ""]


def passes_table(results: list[RunResult]) -> list[str]:
    """Each --repeat pass's before and after CPU per request, user and system apart."""
    pairs = pass_ratios(results)
    if not any(len(v) > 1 for v in pairs.values()):
        return []
    out = [
        "### CPU per request, pass by pass",
        "",
        "Each pass runs before, then after, back to back at one rate; user = user-space part.",
        "",
        "| mode | rate req/s | pass | before ms (user) | after ms (user) | after / before |",
        "|---|---|---|---|---|---|",
    ]
    for (stream, rate), ps in pairs.items():
        for b, g in ps:
            out.append(
                f"| {'streaming' if stream else 'non-streaming'} | {rate:.0f} | {b.rep + 1} "
                f"| {b.cpu_ms_per_req:.3f} ({b.cpu_user_ms_per_req or 0:.3f}) "
                f"| {g.cpu_ms_per_req:.3f} ({g.cpu_user_ms_per_req or 0:.3f}) "
                f"| {g.cpu_ms_per_req / b.cpu_ms_per_req:.3f} |"  # type: ignore[operator]
            )
        out.append(
            f"| {'streaming' if stream else 'non-streaming'} | {rate:.0f} | median | | "
            f"| **{cpu_change(ps) + 1:.3f}** |"
        )
    return [*out, ""]


def report(results: list[RunResult], args: argparse.Namespace, measured_at: float | None = None) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(measured_at or time.time()))
    lines = [
        "# Gateway overhead",
        "",
        f"Measured {when} at commit {_commit()} on {platform.node()} "
        f"({os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}), with:",
        "",
        "    .venv/bin/python -m loadtest.bench.gateway_overhead "
        + " ".join(
            f"--{k} {v}"
            for k, v in (
                ("duration", args.duration),
                ("rates", args.rates),
                ("ramp", args.ramp),
                ("modes", args.modes),
            )
        )
        + (f" --repeat {args.repeat}" if getattr(args, "repeat", 1) > 1 else "")
        + (" --lean" if args.lean else "")
        + (" --fairness" if getattr(args, "fairness", False) else "")
        + (f" --baseline {args.baseline}" if getattr(args, "baseline", None) else "")
        + f" --out {args.out}",
        "",
        "One gateway worker, one fast upstream (16 tokens, no delay), one redis-server and the load "
        "generator share this machine's CPUs"
        + (
            f" (load average at the start: {args.load_at_start[0]:.2f} / {args.load_at_start[1]:.2f},"
            " 1 / 5 min)"
            if getattr(args, "load_at_start", None)
            else ""
        )
        + ". Latencies are end to end at the client (streaming: to the last "
        "byte); added = gateway minus direct at the same percentile and rate. CPU is the gateway "
        "process's utime+stime over the step (warm-up included) divided by its requests.",
        "",
        *summary(collapse(results), ramped=bool(getattr(args, "ramp", "x")), pairs=pass_ratios(results)),
        *passes_table(results),
    ]
    results = collapse(results)
    for stream in (False, True):
        rows = [x for x in results if x.stream == stream]
        if not rows:
            continue
        lines += [
            f"## {'Streaming' if stream else 'Non-streaming'}",
            "",
            "| rate req/s | path | ok | err | achieved req/s | p50 ms | p95 ms | p99 ms "
            "| added p50 | added p95 | added p99 | gw CPU ms/req |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        direct = {x.rate: x for x in rows if x.target == "direct"}
        for x in rows:
            d = direct.get(x.rate) if x.target != "direct" else None
            add = (
                f"{x.p50_ms - d.p50_ms:.2f} | {x.p95_ms - d.p95_ms:.2f} | {x.p99_ms - d.p99_ms:.2f}"
                if d
                else "– | – | –"
            )
            cpu = f"{x.cpu_ms_per_req:.3f}" if x.cpu_ms_per_req is not None else "–"
            lines.append(
                f"| {x.rate:.0f} | {x.target} | {x.ok} | {x.errors} | {x.achieved_rps:.0f} | "
                f"{x.p50_ms:.2f} | {x.p95_ms:.2f} | {x.p99_ms:.2f} | {add} | {cpu} |"
            )
        gw_rows = [x for x in rows if x.target == "gateway"]
        if any(x.target == "lean" for x in rows):
            lines += [
                "",
                "`lean` is the issue's calibration point, run on this machine in the same session: a "
                "FastAPI route + redis-py EVALSHA (one INCR) + aiohttp forward; no auth, metering, metrics.",
            ]
        best = max((x.rate for x in gw_rows if sustained(x)), default=None)
        lines += [
            "",
            f"Highest rate sustained (achieved ≥ 97% of offered, no errors, p99 ≤ 100 ms): "
            f"**{best:.0f} req/s**"
            if best
            else "No rate sustained.",
            "",
        ]
        rp = next((x.redis_per_req for x in gw_rows if x.redis_per_req), None)
        if rp:
            lines += [
                "Redis commands per request (INFO commandstats delta / requests, first gateway step; EVALSHA "
                "= round trips, the rest run inside the two scripts): "
                + ", ".join(f"{k} {v}" for k, v in sorted(rp.items())),
                "",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
