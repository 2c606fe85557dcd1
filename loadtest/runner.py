"""Runs a scenario: builds the workload, starts Locust headless as child processes, shows progress.

Locust never runs inside the servelab CLI process (its gevent monkey-patching would change the
whole process). The runner writes the run folder's `config.json` and `workload.jsonl`, passes
the API keys through the environment only, scrapes the backends' /metrics before and after,
starts one standalone Locust process or a master plus N workers (`workers > 1`), prints a live
progress line from the rows the workers append, and at the end merges the rows and writes the
report (report.py).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from loadtest import rows as rowsmod
from loadtest import serverside, workloads
from loadtest.runconfig import KEYS_ENV, RUN_DIR_ENV, RunConfig, StepModel, Stream
from loadtest.scenarios import locustfile
from loadtest.stats import Slo
from servelab.procs import Child, free_port, python_module, start


@dataclass(frozen=True)
class Plan:
    """A fully specified run. Built by the CLI (or a test) from a scenario's defaults and options."""

    scenario: str
    target: str
    model: str
    keys: dict[str, str]  # tenant -> API key
    workload: workloads.WorkloadSpec
    duration_s: float
    rates: dict[str, list[float]] = field(default_factory=dict)  # open loop: tenant -> rate per step
    users: int | None = None  # closed loop: users per tenant
    user_steps: list[int] = field(default_factory=list)  # closed-loop sweep: users per step (LoadTestShape)
    think_s: float = 0.0
    max_concurrency: int | None = None  # open loop: greenlets per tenant (default from the rate)
    burstiness: float = 1.0
    seed: int = 0
    workers: int = 1
    endpoint: str = "chat"
    ignore_eos: bool = True
    slo: Slo = field(default_factory=Slo)
    metrics_urls: tuple[str, ...] = ()
    drain_s: float = 60.0
    limits: dict[str, dict[str, float]] = field(default_factory=dict)  # ratelimit: tenant -> rpm/tpm
    predict: dict[str, str] = field(
        default_factory=dict
    )  # sweep: offline-simulator setup (model, gpu, tp, ...)
    out_dir: Path | None = None
    fire_itl_events: bool = True

    def streams(self) -> list[Stream]:
        out = []
        w = max(self.workers, 1)
        for tenant in self.keys:
            if self.users is not None or self.user_steps:
                most = max([self.users or 0, *self.user_steps])
                out.append(Stream(tenant=tenant, users=math.ceil(most / w), think_s=self.think_s))
                continue
            rates = self.rates.get(tenant, [])
            step_s = self.duration_s / max(len(rates), 1)
            steps = [StepModel(rate_rps=r, duration_s=step_s) for r in rates]
            # Enough greenlets that one is free at every arrival: 30 s of the peak rate in flight.
            users = self.max_concurrency or min(2000, max(16, math.ceil(max(rates, default=1) * 30)))
            out.append(Stream(tenant=tenant, users=math.ceil(users / w), steps=steps))
        return out


def default_run_dir(scenario: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / f"{scenario}-{stamp}"


class Progress:
    """Tails the workers' row files and prints one refreshing line."""

    def __init__(self, run_dir: Path, total_expected: int | None, out: io.TextIOBase | None = None) -> None:
        self.run_dir = run_dir
        self.offsets: dict[Path, int] = {}
        self.header: list[str] | None = None
        self.done = 0
        self.errors = 0
        self.recent_ttft: list[float] = []
        self.expected = total_expected
        self.out = out or sys.stderr
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.last_print = 0.0

    def poll(self) -> None:
        for path in self.run_dir.glob(rowsmod.ROW_GLOB):
            off = self.offsets.get(path, 0)
            with path.open() as f:
                f.seek(off)
                chunk = f.read()
            complete = chunk[: chunk.rfind("\n") + 1]
            self.offsets[path] = off + len(complete.encode())
            for rec in csv.reader(io.StringIO(complete)):
                if rec and rec[0] == "seq":
                    self.header = rec
                    continue
                if not rec or self.header is None or len(rec) != len(self.header):
                    continue
                d = dict(zip(self.header, rec, strict=True))
                self.done += 1
                if d["error"]:
                    self.errors += 1
                else:
                    self.recent_ttft.append(float(d["ttft_s"]))
        self.recent_ttft = self.recent_ttft[-200:]

    def line(self, elapsed_s: float) -> str:
        ttft = sorted(self.recent_ttft)
        p50 = f"{ttft[len(ttft) // 2] * 1000:.0f} ms" if ttft else "-"
        exp = f"/{self.expected}" if self.expected else ""
        return f"[{elapsed_s:5.0f}s] done {self.done}{exp}  errors {self.errors}  TTFT p50 (last 200) {p50}"

    def show(self, elapsed_s: float, final: bool = False) -> None:
        now = time.monotonic()
        if not final and not self.tty and now - self.last_print < 5:
            return
        self.last_print = now
        text = self.line(elapsed_s)
        if self.tty:
            self.out.write("\r" + text + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()


@dataclass
class RunOutcome:
    run_dir: Path
    returncode: int
    config: RunConfig
    before: serverside.Scrape | None
    after: serverside.Scrape | None
    wall_s: float
    metrics_urls: tuple[str, ...] = ()


def _detect_backend_metrics(target: str) -> tuple[str, ...]:
    """The target's own /metrics, if it is a backend (vLLM names); () for a gateway or anything else."""
    url = f"{target.rstrip('/')}/metrics"
    try:
        scrape = serverside.scrape(url, timeout_s=2.0)
    except (OSError, ValueError):
        return ()
    return (url,) if any(n in scrape.values for n in serverside.PROMPT_COUNTERS) else ()


def _scrape_all(urls: Sequence[str]) -> serverside.Scrape | None:
    if not urls:
        return None
    return serverside.combine([serverside.scrape(u) for u in urls])


def execute(plan: Plan, run_dir: Path, log: Callable[[str], None] = print) -> RunOutcome:
    """Prepare the run folder, run Locust, merge rows. Does not write the report."""
    run_dir.mkdir(parents=True, exist_ok=True)
    items = workloads.build(plan.workload)
    workloads.save(items, run_dir / "workload.jsonl")
    streams = plan.streams()
    config = RunConfig(
        scenario=plan.scenario,
        target=plan.target,
        model=plan.model,
        endpoint=plan.endpoint,  # type: ignore[arg-type]
        streams=streams,
        duration_s=plan.duration_s,
        burstiness=plan.burstiness,
        seed=plan.seed,
        workers=max(plan.workers, 1),
        ignore_eos=plan.ignore_eos,
        fire_itl_events=plan.fire_itl_events,
        user_steps=plan.user_steps,
    )
    config.save(run_dir)
    if plan.user_steps:
        # sweep.py's LoadTestShape reads [(end_s, users)]: hold each user count for one step.
        step_s = plan.duration_s / len(plan.user_steps)
        shape = [((i + 1) * step_s, u) for i, u in enumerate(plan.user_steps)]
        (run_dir / "user_steps.json").write_text(json.dumps(shape))
    (run_dir / "plan.json").write_text(json.dumps(plan_public(plan), indent=2, default=str))

    users_total = sum(s.users for s in streams) * config.workers
    open_loop = all(s.open_loop for s in streams)
    expected = (
        sum(round(st.rate_rps * st.duration_s) for s in streams for st in s.steps) if open_loop else None
    )
    drain = max(1, math.ceil(plan.drain_s))
    run_time = math.ceil(plan.duration_s + (3 if open_loop else 0)) + (drain if open_loop else 0)
    env = {RUN_DIR_ENV: str(run_dir.resolve()), KEYS_ENV: json.dumps(plan.keys), "PYTHONUNBUFFERED": "1"}
    common = [
        "-f",
        str(locustfile(plan.scenario)),
        "--host",
        plan.target,
        "--loglevel",
        "WARNING",
    ]
    head = [
        "--headless",
        "-u",
        str(users_total),
        "-r",
        str(max(users_total, 1)),
        "-t",
        f"{run_time}s",
        "--stop-timeout",
        str(drain),
        "--csv",
        str(run_dir / "locust"),
        "--html",
        str(run_dir / "locust.html"),
        "--only-summary",
    ]
    metrics_urls = plan.metrics_urls or _detect_backend_metrics(plan.target)
    before = _scrape_all(metrics_urls)
    children: list[Child] = []
    t_start = time.monotonic()
    if config.workers == 1:
        children.append(
            start("locust", python_module("locust", *common, *head), env=env, log_path=run_dir / "locust.log")
        )
    else:
        port = free_port()
        master = [
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--expect-workers",
            str(config.workers),
        ]
        children.append(
            start(
                "locust-master",
                python_module("locust", *common, *head, *master),
                env=env,
                log_path=run_dir / "locust.log",
            )
        )
        for i in range(config.workers):
            worker = ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
            children.append(
                start(
                    f"locust-worker-{i}",
                    python_module("locust", *common, *worker),
                    env=env,
                    log_path=run_dir / f"locust-worker-{i}.log",
                )
            )
    progress = Progress(run_dir, expected)
    main = children[0]
    hard_deadline = t_start + run_time + drain + 60
    try:
        while main.alive():
            if time.monotonic() > hard_deadline:
                log(f"locust did not exit {hard_deadline - t_start:.0f}s after start; stopping it")
                break
            progress.poll()
            progress.show(time.monotonic() - t_start)
            if config.workers > 1 and expected is not None and progress.done >= expected:
                # Master/worker mode has no early quit of its own: every scheduled request has
                # been answered (the rows say so), so end the run. Locust's own CSV may then miss
                # the workers' last 3-second stats report; the report uses the rows, not that CSV.
                break
            time.sleep(0.5)  # pacing of the progress line only; completion is the process exit
    finally:
        for c in reversed(children):
            c.stop(timeout_s=drain + 10)
    progress.poll()
    progress.show(time.monotonic() - t_start, final=True)
    wall = time.monotonic() - t_start
    after = _scrape_all(metrics_urls)
    rowsmod.merge(run_dir)
    return RunOutcome(run_dir, main.popen.returncode or 0, config, before, after, wall, tuple(metrics_urls))


def plan_public(plan: Plan) -> dict:
    """The plan without secrets (API keys replaced by tenant names)."""
    d = {k: v for k, v in plan.__dict__.items() if k != "keys"}
    d["tenants"] = list(plan.keys)
    d["workload"] = plan.workload.__dict__ | {
        "input": plan.workload.input.__dict__,
        "output": plan.workload.output.__dict__,
    }
    d["slo"] = plan.slo.__dict__
    return d
