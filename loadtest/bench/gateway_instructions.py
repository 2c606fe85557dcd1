"""Instructions the gateway executes per request, counted by valgrind: the same on a busy machine.

    git worktree add /tmp/gw-before 949a299
    .venv/bin/python -m loadtest.bench.gateway_instructions /tmp/gw-before . \
        --out docs/results/gateway-instructions.md                                   # needs valgrind

Why this exists: CPU per request in gateway_overhead.py is process CPU time over a rate step, and
on a shared 2-core VM one row moves by 20-30 points between runs, so a 10 % target cannot be
judged from one run, and a change of a few percent cannot be seen at all. Valgrind's callgrind
counts the instructions the process executes (Ir, user space), which does not depend on what
else runs on the machine. It misses what the kernel does for the process (socket calls: the
same number per request here, 2 Redis round trips and one upstream call) and cache misses.

For each checkout, one gateway runs under callgrind (about 50 times slower, so the rate is low
and start-up takes a minute) against the same real Redis and fast upstream as the overhead
benchmark. After a warm-up it zeroes the counters and takes two dumps: `--idle-s` seconds with
no traffic (what the process does by itself: heartbeat loop, scrapes, pub/sub), then
`--requests` requests at `--rate`. Per request = (Ir under load - idle Ir per second x load
seconds) / requests. Idle work is reported apart as Ir per second, since it does not grow
with traffic. Run-to-run spread is small but not zero (the event loop batches reads
differently): `--repeat` runs each checkout again and the report gives each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import yaml

from loadtest.bench.gateway_overhead import ADMIN, bench_config, gateway_env, open_loop, start_upstream
from servelab.procs import free_port, start, wait_http_ok
from servelab.redisproc import start_redis


@dataclass(frozen=True)
class Count:
    checkout: str
    commit: str
    stream: bool
    requests: int
    load_s: float
    idle_ir_per_s: float
    ir_per_request: float


def _total_ir(path: Path) -> int:
    """The `summary:` (or `totals:`) line of a callgrind dump: all instructions it counted."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {path}")


def commit_of(checkout: Path) -> str:
    """The checkout's short HEAD, with "+changes" when its gateway/ has uncommitted edits."""
    out = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "--", "gateway"], capture_output=True, text=True
    ).stdout.strip()
    return out.stdout.strip() + ("+changes" if dirty else "")


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


def _wait_dump(out_prefix: str, pid: int, n: int, timeout_s: float = 60.0) -> Path:
    """callgrind_control returns before the dump file is complete: wait for dump number n."""
    path = Path(f"{out_prefix}.{pid}.{n}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            try:
                _total_ir(path)
                return path
            except (RuntimeError, ValueError):
                pass
        time.sleep(0.2)
    raise TimeoutError(f"callgrind dump {path} not written within {timeout_s:.0f}s")


def count(
    checkout: Path, stream: bool, args: argparse.Namespace, cfg: Path, env: dict[str, str], work: Path
) -> Count:
    port = free_port()
    prefix = str(work / f"callgrind-{port}")
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}.%p", sys.executable]
    argv += ["-m", "gateway", "--config", str(cfg), "--port", str(port)]
    child = start(
        "gateway",
        argv,
        env={**env, "PYTHONPATH": str(checkout)},
        cwd=checkout,
        log_path=work / f"gateway-{port}.log",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        print(f"  {checkout}: starting under valgrind (about a minute)", flush=True)
        wait_http_ok(f"{url}/readyz", 600, child.popen)
        key = httpx.post(
            f"{url}/admin/v1/tenants/bench/keys",
            headers={"authorization": f"Bearer {ADMIN}"},
            json={},
            timeout=60,
        ).json()["key"]
        chat = f"{url}/v1/chat/completions"
        asyncio.run(open_loop(chat, key, args.rate, 30 / args.rate, stream))  # warm-up
        _control("--zero", str(child.pid))
        t = time.monotonic()
        time.sleep(args.idle_s)
        _control("--dump=idle", str(child.pid))
        idle_s = time.monotonic() - t
        idle = _total_ir(_wait_dump(prefix, child.pid, 1))
        _control("--zero", str(child.pid))
        t = time.monotonic()
        _, _, sent, errors, _ = asyncio.run(
            open_loop(chat, key, args.rate, args.requests / args.rate, stream)
        )
        _control("--dump=load", str(child.pid))
        load_s = time.monotonic() - t
        load = _total_ir(_wait_dump(prefix, child.pid, 2))
        if errors:
            raise RuntimeError(f"{errors} of {sent} requests failed; see {child.log_path}")
    finally:
        child.stop(timeout_s=120)
    requests = sent + 20  # open_loop's own warm-up requests are inside the window too
    idle_per_s = idle / idle_s
    return Count(
        checkout=str(checkout),
        commit=commit_of(checkout),
        stream=stream,
        requests=requests,
        load_s=round(load_s, 2),
        idle_ir_per_s=round(idle_per_s),
        ir_per_request=round((load - idle_per_s * load_s) / requests),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkouts", nargs="+", type=Path, help="checkouts to count (the first is the reference)")
    ap.add_argument("--modes", default="nonstream,stream", help="nonstream, stream or both")
    ap.add_argument("--rate", type=float, default=10.0, help="requests per second (valgrind is slow)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--idle-s", type=float, default=20.0, help="seconds of idle counted apart")
    ap.add_argument("--repeat", type=int, default=1, help="runs per checkout, interleaved")
    ap.add_argument("--json", type=Path, default=None, help="append the counts here (JSON lines)")
    ap.add_argument("--out", type=Path, default=None, help="write a Markdown report here")
    ap.add_argument("--fairness", action="store_true", help="a fair queue that never saturates")
    args = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    for c in args.checkouts:
        if not (c / "gateway" / "__main__.py").exists():
            sys.exit(f"{c} is not a servelab checkout (no gateway/__main__.py)")
    load_at_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="gw-ir-"))
    rs = start_redis(work / "redis")
    up = None
    counts: list[Count] = []
    try:
        up, up_url = start_upstream(work)
        cfg = work / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(bench_config(up_url, fairness=args.fairness)))
        env = gateway_env(rs.url, work)
        for stream in [m == "stream" for m in args.modes.split(",")]:
            for _ in range(args.repeat):
                for checkout in args.checkouts:
                    c = count(checkout.resolve(), stream, args, cfg, env, work)
                    counts.append(c)
                    print(json.dumps(asdict(c)), flush=True)
                    if args.json:
                        with args.json.open("a") as f:
                            f.write(json.dumps(asdict(c)) + "\n")
    finally:
        if up is not None:
            up.stop()
        rs.stop()
    text = report(counts, args, load_at_start)
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")


def report(counts: list[Count], args: argparse.Namespace, load_at_start: tuple[float, ...]) -> str:
    first = str(args.checkouts[0].resolve())
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Gateway instructions per request",
        "",
        f"Measured {when} with (valgrind {_valgrind_version()}, CPython {platform.python_version()}):",
        "",
        "    .venv/bin/python -m loadtest.bench.gateway_instructions "
        + " ".join(str(c) for c in args.checkouts)
        + f" --modes {args.modes} --rate {args.rate:g} --requests {args.requests} --idle-s {args.idle_s:g}"
        + (f" --repeat {args.repeat}" if args.repeat > 1 else "")
        + (" --fairness" if args.fairness else "")
        + (f" --out {args.out}" if args.out else ""),
        "",
        f"Load average at the start {load_at_start[0]:.2f} and at the end {os.getloadavg()[0]:.2f} (1 min); "
        "the counts do not depend on it. Ir = instructions executed in user space by the gateway "
        "process; per request = (Ir under load - idle Ir/s x load seconds) / requests.",
        "",
        "| mode | checkout | commit | Ir per request | vs the first checkout | idle Ir per second |",
        "|---|---|---|---|---|---|",
    ]
    for stream in (False, True):
        rows = [c for c in counts if c.stream == stream]
        ref = sorted(c.ir_per_request for c in rows if c.checkout == first)
        base = ref[len(ref) // 2] if ref else None
        for c in rows:
            change = f"{100 * (c.ir_per_request / base - 1):+.1f} %" if base else "–"
            lines.append(
                f"| {'streaming' if stream else 'non-streaming'} | {c.checkout} | {c.commit} "
                f"| {c.ir_per_request:,} | {change} | {c.idle_ir_per_s:,} |"
            )
    return "\n".join(lines) + "\n"


def _valgrind_version() -> str:
    out = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)
    return out.stdout.strip().removeprefix("valgrind-")


if __name__ == "__main__":
    main()
