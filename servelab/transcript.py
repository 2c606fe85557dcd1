"""One full walkthrough run, written down: every command and what it printed.

    .venv/bin/python -m servelab.transcript --out docs/results/walkthrough-run.md

Runs the serving numbers (`servelab capacity`, `servelab simulate`), `servelab demo` (what
`make demo` runs, on a stack of its own), brings up the stack the
scenarios need (`servelab up ...` as a child process), runs every scenario in its full form, takes
one `servelab top` frame, stops the stack, and writes a Markdown transcript with the date, the
commit, the machine's CPU count and its load average before and after (measured, not described).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from servelab.procs import free_port
from servelab.scenarios import UP_FOR_ALL

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Frames (seconds) after which the `top` run alongside a scenario prints: mid-failure.
TOP_FRAMES = {"backend-down": 15, "redis-down": 14, "overload": 30, "noisy-neighbour": 40}
SCENARIOS = ("burst", "noisy-neighbour", "overload", "backend-down", "redis-down", "cold-start", "scale-out")


def _run(args: list[str], env: dict[str, str], timeout_s: float = 900) -> tuple[int, str, float]:
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "servelab.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
    )
    return proc.returncode, ANSI.sub("", proc.stdout + proc.stderr).rstrip(), time.monotonic() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/walkthrough-run.md"))
    ap.add_argument("--state-dir", type=Path, default=Path("runs/walkthrough/stack"))
    ap.add_argument("--short", action="store_true", help="scenarios in short form")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = ap.parse_args()
    env = {**os.environ, "COLUMNS": "110"}
    env.pop("REDIS_URL", None)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    load0 = os.getloadavg()
    t0 = time.monotonic()
    parts: list[str] = []
    results: list[tuple[str, int, float]] = []

    def section(title: str, shown: str, code: int, out: str, secs: float) -> None:
        parts.extend(
            [f"## {title}", "", "```", f"$ {shown}", out, "```", "", f"exit code {code}, {secs:.0f} s", ""]
        )
        results.append((title, code, secs))
        print(f"{title}: exit {code} in {secs:.0f} s", flush=True)

    cap = [
        "capacity",
        "--model",
        "mixtral-8x22b",
        "--gpu",
        "h100",
        "--dtype",
        "fp8",
        "--target-rps",
        "10000",
        "--input-len",
        "1000",
        "--output-len",
        "250",
        "--p95-ttft",
        "1s",
        "--p95-tpot",
        "50ms",
    ]
    code, out, secs = _run(cap, env)
    section("Serving: the capacity answer", "servelab " + " ".join(cap), code, out, secs)
    answer = json.loads(_run([*cap, "--no-failover", "--no-sensitivity", "--json"], env)[1])
    tp = answer["recommended_tp"]
    rate = next(o for o in answer["options"] if o["tp"] == tp)["replica_rps"]
    sim = [
        "simulate",
        "--model",
        "mixtral-8x22b",
        "--gpu",
        "h100",
        "--dtype",
        "fp8",
        "--tp",
        str(tp),
        "--rate",
        f"{rate:.2f}",
        "--num-requests",
        "2000",
        "--input-len",
        "1000",
        "--output-len",
        "250",
    ]
    code, out, secs = _run(sim, env)
    section("Serving: one replica at its SLO rate, end to end", "servelab " + " ".join(sim), code, out, secs)

    demo = ["demo", "--out", str(args.state_dir.parent / "demo")]
    code, out, secs = _run(demo, env)
    section(
        "make demo (servelab demo): both halves on a stack of its own",
        "servelab " + " ".join(demo),
        code,
        out,
        secs,
    )

    state = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    (state / "stack.json").unlink(missing_ok=True)
    up_args = UP_FOR_ALL.split()[2:]
    up = [
        "up",
        "--state-dir",
        str(state),
        "--gateway-port",
        str(free_port()),
        "--backend-port",
        "0",
        *up_args,
    ]
    log = (state.parent / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "servelab.cli", *up],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while "ready" not in (state.parent / "up.log").read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("servelab up did not start:\n" + (state.parent / "up.log").read_text())
            time.sleep(0.2)
        shown = ANSI.sub("", (state.parent / "up.log").read_text(errors="replace")).rstrip()
        parts.extend(["## The stack", "", "```", f"$ servelab {' '.join(up)}", shown, "```", ""])
        for name in args.scenarios.split(","):
            scn = ["scenario", name, "--state-dir", str(state), *(["--short"] if args.short else [])]
            # `servelab top` alongside, its last frame taken mid-scenario (while the failure lasts)
            frames = TOP_FRAMES.get(name) if not args.short else None
            top = [
                "top",
                "--state-dir",
                str(state),
                "--window",
                "10",
                "--refresh",
                "1",
                "--frames",
                str(frames),
            ]
            watcher = (
                subprocess.Popen(
                    [sys.executable, "-m", "servelab.cli", *top],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                if frames
                else None
            )
            code, out, secs = _run(scn, env)
            section(f"Scenario {name}", "servelab " + " ".join(scn), code, out, secs)
            if watcher is not None:
                shown, _ = watcher.communicate(timeout=120)
                section(
                    f"servelab top during {name} (its last frame, {frames} s in)",
                    "servelab " + " ".join(top),
                    watcher.returncode,
                    ANSI.sub("", shown).rstrip(),
                    float(frames or 0),
                )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()

    load1 = os.getloadavg()
    head = [
        "# One full walkthrough run",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at commit {commit} on a machine with "
        f"{os.cpu_count()} CPUs; load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, after "
        f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; {time.monotonic() - t0:.0f} s in all. Written by:",
        "",
        f"    .venv/bin/python -m servelab.transcript --out {args.out}" + (" --short" if args.short else ""),
        "",
        "The scenarios ran " + ("in short form" if args.short else "in full form") + " against one stack, "
        "one after the other, so each later scenario meets the usage the earlier ones left (spend, quota).",
        "",
        "| step | exit code | seconds |",
        "|---|---|---|",
        *[f"| {t} | {c} | {s:.0f} |" for t, c, s in results],
        "",
    ]
    args.out.write_text("\n".join(head + parts) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
