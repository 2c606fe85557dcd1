"""CPU per request of two gateway checkouts measured at the same time, under the same load.

    git worktree add /tmp/gw-before 949a299
    .venv/bin/python -m loadtest.bench.gateway_cpu_ab /tmp/gw-before . --rates 50,200,500 \
        --windows 8 --min-requests 800 --strace --out docs/results/gateway-cpu-ab.md

Why this exists: `gateway_overhead.py --baseline` runs before and after one after the other, and
on a shared 2-core VM the machine changes between the two steps (another tenant's job, the
host's frequency): medians of three such pairs still moved by 10-15 points between runs, more
than the 10 % the target allows. Here both gateways run side by side against the same Redis
and the same fast upstream, and one load generator sends each the same open-loop schedule at
the same time, so whatever slows the machine in a window slows both; the verdict is the median
over windows of after / before. The two processes compete for the same CPUs, and which one the
scheduler favours is noise of its own: the same checkout on both sides read 2-6 % apart by the
order the processes were started in, so half the windows run with the two restarted the other
way round (`--swap`, on by default), and within each half the two loads take turns to start
first. The report gives every window and the spread; run the before checkout against itself to
see what the tool resolves on a given machine.

`--strace` adds one window per mode under `strace -c -f`: system calls per request of each
gateway, the kernel's share, which valgrind's instruction counts (gateway_instructions.py)
leave out.

CPU is each process's on-CPU time from /proc/<pid>/task/*/schedstat (nanoseconds, all threads,
user and kernel together), not utime+stime (10 ms ticks), divided by the requests it served in
the window (the load generator's 20 warm-up requests included). The two processes run the
same config (`gateway_overhead.bench_config`), one tenant each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from loadtest.bench.gateway_instructions import commit_of
from loadtest.bench.gateway_overhead import ADMIN, bench_config, gateway_env, open_loop, start_upstream
from servelab.procs import Child, free_port, start, wait_http_ok
from servelab.redisproc import start_redis


@dataclass(frozen=True)
class Window:
    stream: bool
    rate: float
    window: int
    first: str  # which load started first in this window: "before" or "after"
    older: str  # which gateway process was started first (see --swap)
    before_ms: float  # on-CPU ms per request
    after_ms: float
    errors: int

    @property
    def ratio(self) -> float:
        return self.after_ms / self.before_ms


def on_cpu_ns(pid: int) -> int:
    """Nanoseconds this process's threads have run on a CPU so far (schedstat's first field)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def start_gateway(
    checkout: Path, cfg: Path, env: dict[str, str], work: Path, name: str
) -> tuple[Child, str, str]:
    """One gateway process from `checkout`, ready, with a key of its own tenant."""
    port = free_port()
    child = start(
        f"gateway-{name}",
        [sys.executable, "-m", "gateway", "--config", str(cfg), "--port", str(port)],
        env={**env, "PYTHONPATH": str(checkout)},
        cwd=checkout,
        log_path=work / f"gateway-{name}-{port}.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/readyz", 60, child.popen)
    admin = {"authorization": f"Bearer {ADMIN}"}
    key = httpx.post(f"{url}/admin/v1/tenants/{name}/keys", headers=admin, json={}, timeout=30).json()["key"]
    return child, url, key


async def _both(
    targets: list[tuple[str, str]], rate: float, duration_s: float, stream: bool
) -> list[tuple[int, int]]:
    runs = [open_loop(f"{url}/v1/chat/completions", key, rate, duration_s, stream) for url, key in targets]
    out = await asyncio.gather(*runs)
    return [(sent, errors) for _, _, sent, errors, _ in out]


def measure(
    gws: dict[str, tuple[Child, str, str]],
    stream: bool,
    rate: float,
    duration_s: float,
    window: int,
    older: str = "before",
    load_first: int | None = None,
) -> Window:
    """One window; the two loads start in the order `load_first` says (0: before's first), by
    default alternating with `window`."""
    first = window % 2 if load_first is None else load_first
    order = ["before", "after"] if first == 0 else ["after", "before"]
    pids = {name: gws[name][0].pid for name in order}
    cpu0 = {name: on_cpu_ns(pid) for name, pid in pids.items()}
    results = asyncio.run(_both([(gws[n][1], gws[n][2]) for n in order], rate, duration_s, stream))
    cpu1 = {name: on_cpu_ns(pid) for name, pid in pids.items()}
    per = {}
    errors = 0
    for name, (sent, errs) in zip(order, results, strict=True):
        per[name] = (cpu1[name] - cpu0[name]) / 1e6 / (sent + 20)
        errors += errs
    return Window(stream, rate, window, order[0], older, per["before"], per["after"], errors)


def syscalls(
    gws: dict[str, tuple[Child, str, str]], stream: bool, rate: float, duration_s: float, work: Path
) -> dict[str, dict[str, float]]:
    """System calls per request of each gateway over one more window, counted by `strace -c -f`.

    Kernel time is part of CPU per request and instruction counts leave it out; equal syscall
    counts say the kernel's share did not change. strace slows the processes it traces, so this
    window's CPU is not used."""
    tracers = {}
    for name, (child, _, _) in gws.items():
        out = work / f"strace-{name}-{'s' if stream else 'n'}{rate:g}.txt"
        tracers[name] = (out, subprocess.Popen(["strace", "-c", "-f", "-p", str(child.pid), "-o", str(out)]))
    time.sleep(1.0)  # strace attaches to every thread before the window starts
    try:
        results = asyncio.run(_both([(gws[n][1], gws[n][2]) for n in gws], rate, duration_s, stream))
    finally:
        for _, proc in tracers.values():
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    per: dict[str, dict[str, float]] = {}
    for (name, (out, _)), (sent, _) in zip(tracers.items(), results, strict=True):
        counts: dict[str, float] = {}
        for line in out.read_text().splitlines():
            parts = line.split()
            # "% time  seconds  usecs/call  calls  [errors]  syscall"
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                counts[parts[-1]] = int(parts[3]) / (sent + 20)
        per[name] = counts
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path, help="checkout of the reference commit")
    ap.add_argument("after", type=Path, help="checkout measured against it (e.g. .)")
    ap.add_argument("--rates", default="50,200,500", help="requests per second sent to EACH gateway")
    ap.add_argument("--modes", default="nonstream,stream", help="nonstream, stream or both")
    ap.add_argument("--windows", type=int, default=7, help="measurement windows per rate and mode")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per window (at least)")
    ap.add_argument(
        "--min-requests",
        type=int,
        default=600,
        help="a window lasts long enough to send each gateway this many requests (low rates: "
        "a few hundred requests' CPU is within reach of the idle background's own noise)",
    )
    ap.add_argument(
        "--strace",
        action="store_true",
        help="after the windows, one more window per mode at the lowest rate under `strace -c`: "
        "system calls per request of each gateway",
    )
    ap.add_argument(
        "--swap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run half the windows with the two gateways restarted in the other order (default: on)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write a Markdown report here")
    args = ap.parse_args()
    if args.strace and shutil.which("strace") is None:
        sys.exit("--strace needs strace: apt-get install strace")
    for c in (args.before, args.after):
        if not (c / "gateway" / "__main__.py").exists():
            sys.exit(f"{c} is not a servelab checkout (no gateway/__main__.py)")
    if args.windows < 1:
        ap.error("--windows must be at least 1")
    rates = [float(r) for r in args.rates.split(",") if r]
    modes = [m == "stream" for m in args.modes.split(",") if m]
    load_at_start = os.getloadavg()
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="gw-ab-"))
    rs = start_redis(work / "redis")
    children: list[Child] = []
    windows: list[Window] = []
    traced: dict[bool, dict[str, dict[str, float]]] = {}
    try:
        up, up_url = start_upstream(work)
        children.append(up)
        cfg = work / "gateway.yaml"
        config = bench_config(up_url)
        config["tenants"] = {"before": {"plan": "bench"}, "after": {"plan": "bench"}}
        cfg.write_text(yaml.safe_dump(config))
        env = gateway_env(rs.url, work)
        checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
        # Which process starts first is a bias of its own (the same checkout on both sides read
        # 2-6 % apart at every rate in one run), so the second half restarts them the other way round.
        halves = [["before", "after"], ["after", "before"]] if args.swap else [["before", "after"]]
        total = len(modes) * len(rates) * args.windows
        for h, start_order in enumerate(halves):
            gws = {}
            for name in start_order:
                gws[name] = start_gateway(checkouts[name], cfg, env, work, name)
                children.append(gws[name][0])
            share = [w for w in range(args.windows) if w % len(halves) == h]
            for stream in modes:
                for rate in rates:
                    seconds = max(args.duration, args.min_requests / rate)
                    for i, w in enumerate(share):
                        win = measure(gws, stream, rate, seconds, w, start_order[0], load_first=i % 2)
                        windows.append(win)
                        print(
                            f"[{len(windows)}/{total}] {'stream' if stream else 'nonstream'} {rate:g} req/s "
                            f"window {w + 1}: before {win.before_ms:.3f} ms, after {win.after_ms:.3f} ms, "
                            f"after/before {win.ratio:.3f}"
                            + (f", {win.errors} errors" if win.errors else ""),
                            flush=True,
                        )
                if args.strace and h == len(halves) - 1:
                    low = min(rates)
                    seconds = max(args.duration, args.min_requests / low)
                    traced[stream] = syscalls(gws, stream, low, seconds, work)
                    mode = "stream" if stream else "nonstream"
                    print(f"syscalls per request ({mode}): {traced[stream]}", flush=True)
            for name in start_order:
                gws[name][0].stop()
                children.remove(gws[name][0])
    finally:
        for child in reversed(children):
            child.stop()
        rs.stop()
    text = report(windows, args, load_at_start, started, traced)
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")


def report(
    windows: list[Window],
    args: argparse.Namespace,
    load_at_start: tuple[float, ...],
    started: float,
    traced: dict[bool, dict[str, dict[str, float]]] | None = None,
) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    command = (
        f"    .venv/bin/python -m loadtest.bench.gateway_cpu_ab {args.before} {args.after} "
        f"--rates {args.rates} --modes {args.modes} --windows {args.windows} --duration {args.duration:g} "
        f"--min-requests {args.min_requests}"
        + (" --strace" if args.strace else "")
        + ("" if args.swap else " --no-swap")
        + (f" --out {args.out}" if args.out else "")
    )
    lines = [
        "# Gateway CPU per request, two checkouts side by side",
        "",
        f"Measured {when} on {platform.node()} ({os.cpu_count()} CPUs, "
        f"CPython {platform.python_version()}), with:",
        "",
        command,
        "",
        f"before = {commit_of(args.before)}, after = {commit_of(args.after)}. Both gateways run at the "
        "same time against one redis-server and one fast upstream (16 tokens, no delay)"
        + (
            "; half the windows run with the two processes restarted in the other order (--swap)"
            if args.swap
            else ""
        )
        + f". Each window sends each of them the rate below for max({args.duration:g} s, "
        f"{args.min_requests} requests / rate) from one load generator. CPU = on-CPU time of the process "
        "(all threads, user + kernel, from schedstat) per request. Load average at the start "
        f"{load_at_start[0]:.2f}, at the end {os.getloadavg()[0]:.2f} (1 min).",
        "",
        "| mode | rate req/s (each) | windows | before ms/request (median) | after ms/request (median) "
        "| after / before, median of windows | lowest – highest window |",
        "|---|---|---|---|---|---|---|",
    ]
    for stream, rate in sorted({(w.stream, w.rate) for w in windows}):
        ws = [w for w in windows if (w.stream, w.rate) == (stream, rate)]
        ratios = sorted(w.ratio for w in ws)
        before = statistics.median(w.before_ms for w in ws)
        after = statistics.median(w.after_ms for w in ws)
        lines.append(
            f"| {'streaming' if stream else 'non-streaming'} | {rate:g} | {len(ws)} | {before:.3f} "
            f"| {after:.3f} | {100 * (statistics.median(ratios) - 1):+.1f} % "
            f"| {100 * (ratios[0] - 1):+.1f} % – {100 * (ratios[-1] - 1):+.1f} % |"
        )
    errors = sum(w.errors for w in windows)
    lines += [
        "",
        f"Errors over all windows: {errors}.",
        "",
        "Every window (process started first; load started first in the window):",
        "",
        "| mode | rate | window | process first | load first | before ms | after ms | after / before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in windows:
        lines.append(
            f"| {'streaming' if w.stream else 'non-streaming'} | {w.rate:g} | {w.window + 1} | {w.older} "
            f"| {w.first} | {w.before_ms:.3f} | {w.after_ms:.3f} | {w.ratio:.3f} |"
        )
    for stream, per in sorted((traced or {}).items()):
        mode = "streaming" if stream else "non-streaming"
        names = sorted(set(per["before"]) | set(per["after"]), key=lambda n: -per["before"].get(n, 0.0))
        total = {side: sum(per[side].values()) for side in ("before", "after")}
        lines += [
            "",
            f"System calls per request, {mode}, {min(float(r) for r in args.rates.split(',') if r):g} req/s "
            "(one more window under `strace -c -f`; its CPU is not used):",
            "",
            "| syscall | before | after |",
            "|---|---|---|",
            *(f"| {n} | {per['before'].get(n, 0.0):.2f} | {per['after'].get(n, 0.0):.2f} |" for n in names),
            f"| all | {total['before']:.2f} | {total['after']:.2f} |",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
