"""Python function calls per request in the gateway, this checkout against an older one.

    git worktree add /tmp/gw-before 949a299
    .venv/bin/python -m loadtest.bench.gateway_calls --baseline /tmp/gw-before --stream

CPU per request (gateway_overhead.py) moves by 20-30 points between runs on a shared VM, so a
change of a few percent cannot be seen in it. A count of Python function calls is exact and
the same on a busy machine: it says where added CPU comes from, which the timing cannot.

Each gateway runs under cProfile twice, once for `--small` requests and once for `--large`
(same rate, same fast upstream, same Redis), and the per-request figure is the difference
divided by the difference in requests, so start-up and shutdown cancel out. The report lists
the total, calls grouped by where the function lives (a gateway module, or a library), and
the functions whose per-request count changed most. Profiling makes the gateway several times
slower, so the counts are comparable and the times are not: no times are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import yaml

from loadtest.bench.gateway_overhead import ADMIN, bench_config, gateway_env, open_loop, start_upstream
from servelab.procs import free_port, start, wait_http_ok
from servelab.redisproc import start_redis

Calls = Counter[tuple[str, int, str]]

# `python -m cProfile -m gateway` loses the profile: uvicorn re-raises the SIGTERM it handled once
# it has shut down, and the default handler ends the process before cProfile writes its file.
# With a Python handler installed first, that re-raised signal becomes a SystemExit instead.
LAUNCH = """
import cProfile, runpy, signal, sys
def _exit(*_):
    raise SystemExit(0)
signal.signal(signal.SIGTERM, _exit)
out = sys.argv.pop(1)
sys.argv[0] = "gateway"
prof = cProfile.Profile()
try:
    prof.runcall(runpy.run_module, "gateway", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    prof.dump_stats(out)
"""


def profiled_calls(
    checkout: Path | None,
    cfg: Path,
    env: dict[str, str],
    requests: int,
    rate: float,
    stream: bool,
    work: Path,
) -> Calls:
    """Run one gateway under cProfile for `requests` requests; its per-function call counts."""
    port = free_port()
    out = work / f"prof-{port}.pstats"
    argv = [sys.executable, "-c", LAUNCH, str(out), "--config", str(cfg), "--port", str(port)]
    child = start(
        "gateway",
        argv,
        env={**env, **({"PYTHONPATH": str(checkout)} if checkout else {})},
        cwd=checkout,
        log_path=work / f"gateway-{port}.log",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/readyz", 60, child.popen)
        key = httpx.post(
            f"{url}/admin/v1/tenants/bench/keys", headers={"authorization": f"Bearer {ADMIN}"}, json={}
        ).json()["key"]
        _, _, sent, errors, _ = asyncio.run(
            open_loop(f"{url}/v1/chat/completions", key, rate, requests / rate, stream)
        )
        if errors:
            raise RuntimeError(f"{errors} of {sent} requests failed; see {child.log_path}")
    finally:
        child.stop(timeout_s=30)
    if not out.exists():
        raise RuntimeError(f"the gateway wrote no profile; see {child.log_path}")
    stats = pstats.Stats(str(out))
    return Counter({k: v[1] for k, v in stats.stats.items()})  # type: ignore[attr-defined]


def per_request(small: Calls, large: Calls, n: int) -> dict[tuple[str, int, str], float]:
    return {k: (large[k] - small.get(k, 0)) / n for k in large if large[k] != small.get(k, 0)}


def where(key: tuple[str, int, str], roots: list[Path]) -> str:
    """The gateway module, or the library (site-packages top level, or the stdlib module)."""
    path = key[0]
    if path == "~":
        return "builtins"
    for root in roots:
        if path.startswith(str(root) + "/"):
            return path[len(str(root)) + 1 :]
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    return "stdlib:" + Path(path).stem


def measure(
    checkout: Path | None, args: argparse.Namespace, cfg: Path, env: dict[str, str], work: Path
) -> dict[tuple[str, int, str], float]:
    small = profiled_calls(checkout, cfg, env, args.small, args.rate, args.stream, work)
    large = profiled_calls(checkout, cfg, env, args.large, args.rate, args.stream, work)
    return per_request(small, large, args.large - args.small)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, default=None, help="checkout of an older commit to compare with")
    ap.add_argument(
        "--checkout", type=Path, default=None, help="checkout measured as 'after' (default: this one)"
    )
    ap.add_argument("--stream", action="store_true", help="streaming requests (default: non-streaming)")
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second")
    ap.add_argument("--small", type=int, default=300, help="requests in the short run")
    ap.add_argument("--large", type=int, default=2300, help="requests in the long run")
    ap.add_argument("--top", type=int, default=25, help="functions listed")
    args = ap.parse_args()
    if args.large <= args.small:
        ap.error("--large must be more than --small")
    work = Path(tempfile.mkdtemp(prefix="gw-calls-"))
    rs = start_redis(work / "redis")
    up = None
    try:
        up, up_url = start_upstream(work)
        cfg = work / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(bench_config(up_url)))
        env = gateway_env(rs.url, work)
        here = (args.checkout or Path.cwd()).resolve()
        after = measure(args.checkout.resolve() if args.checkout else None, args, cfg, env, work)
        before = measure(args.baseline.resolve(), args, cfg, env, work) if args.baseline else {}
    finally:
        if up is not None:
            up.stop()
        rs.stop()
    roots = [here] + ([args.baseline.resolve()] if args.baseline else [])
    mode = "streaming" if args.stream else "non-streaming"
    span = args.large - args.small
    print(f"{mode}, {args.rate:.0f} req/s, per request = (calls at {args.large} - at {args.small}) / {span}")
    print(
        f"total calls per request: after {sum(after.values()):.1f}"
        + (f", before {sum(before.values()):.1f}" if before else "")
    )
    groups: dict[str, float] = defaultdict(float)
    for k, v in after.items():
        groups[where(k, roots)] += v
    bgroups: dict[str, float] = defaultdict(float)
    for k, v in before.items():
        bgroups[where(k, roots)] += v
    print(f"\n{'where':40} {'after':>8} {'before':>8} {'change':>8}")
    for g in sorted(
        set(groups) | set(bgroups), key=lambda g: -abs(groups[g] - bgroups[g]) if before else -groups[g]
    ):
        if max(groups[g], bgroups[g]) >= 0.5:
            print(f"{g:40} {groups[g]:8.1f} {bgroups[g]:8.1f} {groups[g] - bgroups[g]:+8.1f}")

    def label(k: tuple[str, int, str]) -> str:
        return f"{where(k, roots)}:{k[2]}"

    fa: dict[str, float] = defaultdict(float)
    fb: dict[str, float] = defaultdict(float)
    for k, v in after.items():
        fa[label(k)] += v
    for k, v in before.items():
        fb[label(k)] += v
    print(f"\n{'function':70} {'after':>8} {'before':>8}")
    keys = sorted(set(fa) | set(fb), key=lambda f: -abs(fa[f] - fb[f]) if before else -fa[f])
    for f in keys[: args.top]:
        print(f"{f[:70]:70} {fa[f]:8.2f} {fb[f]:8.2f}")


if __name__ == "__main__":
    main()
