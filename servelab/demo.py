"""`make demo` / `servelab demo`: both halves of the story in about three minutes, on one machine.

1. The stack: Redis, two simulated Mixtral-8x7B replicas (TP2 H100, 8 batch slots each so that
   contention is reachable from one laptop's worth of clients) and a gateway with its fair queue.
2. The serving answer: `servelab capacity` for the 10K req/s question (the recommended fleet, its
   p95s and cost), then the same calculator for one local replica, and live load at 70% of what
   it says two replicas hold, to show a simulated replica holding its p95 TTFT target.
3. The platform under contention: the noisy-neighbour scenario (a flooding tenant next to a
   steady one), the burst scenario (a tight plan meets 429s with retry-after), and metering
   checked against the backends' own counters (tokens the gateway billed = tokens the engines
   processed).
4. Where to go next.

Every number printed is measured here or computed by a command whose line is printed with it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from servelab import promparse as pp
from servelab.scenarios.base import Check, Context, pct, show
from servelab.scenarios.load import Load
from servelab.stack import Stack, StackConfig, StackControl

SLOTS = 8
IN_LEN, OUT_LEN = 512, 128
WORDS = (
    308  # the simulator's Mistral tokenizer makes ~512 prompt tokens of these words, chat template included
)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "servelab.cli", *args]


def capacity(console: Console, *args: str) -> dict[str, Any]:
    argv = _cli("capacity", *args, "--no-failover", "--no-sensitivity", "--json")
    console.print(f"[dim]$ servelab {' '.join(argv[3:])}[/]")
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


def serving(console: Console, ctx: Context, replicas: int, seconds: float) -> list[Check]:
    console.rule("[bold]1. Serving: Mixtral-8x22B at 10,000 req/s, p95 TTFT < 1 s")
    big = capacity(
        console, "--model", "mixtral-8x22b", "--gpu", "h100", "--dtype", "fp8", "--target-rps", "10000"
    )
    op, cost = big["operating_point"], big["cost"]
    console.print(
        f"answer: TP{big['recommended_tp']}, {big['total_replicas']} replicas = {big['total_gpus']:,} H100s "
        f"(one replica holds {op['rate_rps']:.1f} req/s at p95 TTFT {1000 * op['p95_ttft_s']:.0f} ms, "
        f"p95 TPOT {1000 * op['p95_tpot_s']:.1f} ms; planned at 80%), "
        f"${cost['usd_per_month'] / 1e6:.2f}M/month, "
        f"${cost['usd_per_million_output_tokens']:.3f} per million output tokens"
    )
    console.rule("[bold]   ... and one local simulated replica holding its p95 target")
    small = capacity(
        console,
        "--model",
        "mixtral-8x7b",
        "--gpu",
        "h100",
        "--tp",
        "2",
        "--max-num-seqs",
        str(SLOTS),
        "--input-len",
        str(IN_LEN),
        "--output-len",
        str(OUT_LEN),
        "--target-rps",
        "1",
    )
    per = small["options"][0]["replica_rps"]
    rate = 0.7 * per * replicas
    console.print(
        f"one Mixtral-8x7B TP2 replica with {SLOTS} slots holds p95 TTFT <= 1 s up to {per:.2f} req/s; "
        f"sending {rate:.2f} req/s (70% of {replicas} replicas) for {seconds:.0f} s through the gateway"
    )
    load = Load(ctx.gateway, ctx.model, ctx.t0)

    async def go() -> None:
        try:
            await load.open_loop(rate, seconds, "acme", ctx.key("acme"), words=WORDS, max_tokens=OUT_LEN)
        finally:
            await load.close()

    asyncio.run(go())
    ok = [r for r in load.records if r.ok and r.ttft is not None]
    ttft = pct([r.ttft for r in ok if r.ttft is not None], 0.95)
    tpot = pct([(r.e2e - (r.ttft or 0)) / max(1, r.chunks - 1) for r in ok], 0.95)
    e2e = pct([r.e2e for r in ok], 0.95)
    prompt = sum(int((r.usage or {}).get("prompt_tokens", 0)) for r in ok) / max(1, len(ok))
    return [
        Check(
            "simulated replicas hold p95 TTFT",
            "<= 1 s",
            f"{ttft:.2f} s over {len(ok)} requests (mean prompt {prompt:.0f} tokens)",
            bool(ok) and ttft <= 1.0,
        ),
        Check("... and p95 TPOT", "<= 50 ms", f"{1000 * tpot:.1f} ms", bool(ok) and tpot <= 0.05),
        Check("p95 end-to-end (info)", f"{OUT_LEN} output tokens", f"{e2e:.2f} s", True),
        Check("every request served", f"{len(load.records)}", f"{len(ok)}", len(ok) == len(load.records)),
    ]


def metered_totals(ctx: Context) -> dict[str, int]:
    """Prompt and completion tokens metered so far (Redis, every tenant, this month)."""
    metered = {"prompt_tokens": 0, "completion_tokens": 0}
    for tenant in ctx.info["keys"]:
        totals = ctx.usage_totals(tenant)
        for k in metered:
            metered[k] += totals[k]
    return metered


def metering(ctx: Context, before: dict[str, int]) -> list[Check]:
    """Tokens the gateway metered during this demo against the tokens its fresh engines report.

    Metered is counted from `before` (taken as the stack came up): the stack's Redis keeps its
    append-only file in the run folder, so a second demo in the same folder starts with the
    first one's usage (its engines start from zero)."""
    now = metered_totals(ctx)
    metered = {k: now[k] - before[k] for k in now}
    engines = [pp.scrape(u + "/metrics") for u in ctx.running_backends()]
    prompt = sum(s.value("vllm:prompt_tokens_total") for s in engines)
    gen = sum(s.value("vllm:generation_tokens_total") for s in engines)
    return [
        Check(
            "metered prompt tokens = engines' prompt tokens",
            f"{prompt:,.0f}",
            f"{metered['prompt_tokens']:,}",
            metered["prompt_tokens"] == prompt,
        ),
        Check(
            "metered completion tokens = engines' generated tokens",
            f"{gen:,.0f}",
            f"{metered['completion_tokens']:,}",
            metered["completion_tokens"] == gen,
        ),
    ]


def run_demo(run_dir: Path, seconds: float = 40.0) -> bool:
    console = Console()
    t0 = time.monotonic()
    cfg = StackConfig(
        state_dir=run_dir / "stack", gateway_port=0, backend_port=0, backends=2, max_num_seqs=SLOTS
    )
    console.rule("[bold]0. The stack")
    with Stack(cfg) as stack:
        from servelab.stackcli import _show

        _show(stack.info)
        stack_state = StackControl(cfg.state_dir.resolve())
        ctx = Context(stack_state, short=True, console=console)
        metered_before = metered_totals(ctx)
        verdicts: list[tuple[str, list[Check]]] = [("serving", serving(console, ctx, cfg.backends, seconds))]
        show("serving", verdicts[-1][1], console)

        console.rule("[bold]2. Platform: a noisy neighbour, a tight plan, and metering")
        from servelab.scenarios import get

        for name in ("noisy-neighbour", "burst"):
            console.print(f"[dim]$ servelab scenario {name} --short[/]")
            scn = get(name)
            checks = _supervised(
                stack, lambda scn=scn: scn.run(Context(stack_state, short=True, console=console))
            )
            verdicts.append((name, checks))
            show(name, checks, console)
        verdicts.append(("metering", metering(ctx, metered_before)))
        show("metering", verdicts[-1][1], console)

    ok = all(c.ok for _, checks in verdicts for c in checks)
    summary = Table(title=f"demo: {time.monotonic() - t0:.0f} s", title_justify="left")
    summary.add_column("part")
    summary.add_column("result")
    for name, checks in verdicts:
        summary.add_row(
            name, "[green]as expected[/]" if all(c.ok for c in checks) else "[red]NOT as expected[/]"
        )
    console.print(summary)
    console.rule("[bold]3. Where to go next")
    console.print(
        "  servelab up --backends 2 --spare-backends 1 --gateways 2 --max-num-seqs 8\n"
        "                                    # a stack that stays up (scenarios need these options)\n"
        "  servelab top                      # live view: tenants, backends, gateway, events\n"
        "  servelab scenario --help          # burst, noisy-neighbour, backend-down, redis-down, overload,\n"
        "                                    # cold-start, scale-out: each ends in a verdict\n"
        "  docs/walkthrough/serving.md       # the serving design, in interview order, with its numbers\n"
        "  docs/walkthrough/platform.md      # the multi-tenant platform, same order\n"
        f"  report folder: {run_dir}"
    )
    return ok


def _supervised(stack: Stack, fn: Any) -> list[Check]:
    """Run a scenario in a thread while this process answers its control requests (it owns the stack)."""
    import threading

    result: list[list[Check]] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    th = threading.Thread(target=target, daemon=True)
    th.start()
    while th.is_alive():
        stack.handle_control()
        th.join(0.1)
    if error:
        raise error[0]
    return result[0]
