"""`servelab scenario NAME`: scripted experiments against a running stack, each ending in a verdict.

Every scenario drives bounded load on 127.0.0.1, does its one thing (a burst, a replica killed,
Redis stopped, a replica added), says what to watch in `servelab top` meanwhile, measures what
happened, prints a verdict table and exits 1 when the expected behaviour was not seen. The stack
is the one `servelab up` wrote to STATE_DIR/stack.json; scenarios that kill or add processes ask
that `servelab up` to do it (servelab.stack.StackControl), and leave the stack as they found it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from servelab.scenarios.base import Scenario

# name -> (module, one-line summary, what the stack needs)
_CATALOG: dict[str, tuple[str, str, str]] = {
    "burst": ("burst", "a tight-plan tenant bursts: admitted == limit, 429s carry retry-after", "any stack"),
    "backend-down": (
        "failures",
        "kill a replica under streaming load: drained, streams metered, recovers",
        "--backends 2 or more",
    ),
    "redis-down": (
        "failures",
        "stop Redis under load: fail-closed 503s, recovery, metering equals served",
        "a stack that started its own Redis",
    ),
    "cold-start": (
        "growth",
        "a cold replica (MoE kernels compile on first use) joins: TTFT spikes until warm",
        "--spare-backends 1",
    ),
    "scale-out": (
        "growth",
        "add a replica to a saturated model: p95 before and after",
        "--spare-backends 1 --max-num-seqs 8",
    ),
    "noisy-neighbour": (
        "contention",
        "a noisy tenant floods the model; a steady tenant keeps its share",
        "--max-num-seqs 8: the gateway's fair queue on",
    ),
    "overload": (
        "contention",
        "2x capacity: shedding by tier, top tier's goodput kept",
        "--max-num-seqs 8: the gateway's fair queue on",
    ),
    "canary": (
        "canary",
        "a model update rolled out by the SLO gate: healthy one promoted, slow one rolled back",
        "any stack (brings 3 simulators and a gateway of its own, on the stack's Redis)",
    ),
}

UP_FOR_ALL = "servelab up --backends 2 --spare-backends 1 --gateways 2 --max-num-seqs 8"


def get(name: str) -> Scenario:
    if name not in _CATALOG:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(_CATALOG)}")
    module, summary, needs = _CATALOG[name]
    mod = importlib.import_module(f"servelab.scenarios.{module}")
    return Scenario(name=name, summary=summary, needs=needs, run=mod.SCENARIOS[name])


def names() -> list[str]:
    return list(_CATALOG)


def register(app: typer.Typer) -> None:
    listing = "\n\n".join(f"{n}: {s} (needs {needs})" for n, (_, s, needs) in _CATALOG.items())

    @app.command(
        help=f"Run a scripted experiment against a running stack and print its verdict.\n\n{listing}"
        f"\n\nOne stack that runs them all: {UP_FOR_ALL}"
    )
    def scenario(
        name: Annotated[str, typer.Argument(help=f"One of: {', '.join(_CATALOG)}.")],
        state_dir: Annotated[Path, typer.Option(help="The stack's folder (from `servelab up`).")] = Path(
            "runs/stack"
        ),
        short: Annotated[bool, typer.Option(help="The short form (seconds, for tests and demos).")] = False,
        json_out: Annotated[Path | None, typer.Option("--json", help="Also write the verdict here.")] = None,
    ) -> None:
        from servelab.scenarios.base import Context, Precondition, show, write_json
        from servelab.stack import StackControl

        try:
            scn = get(name)
            ctx = Context(StackControl(state_dir), short=short)
        except (KeyError, FileNotFoundError) as exc:
            typer.echo(f"error: {exc.args[0]}", err=True)
            raise typer.Exit(2) from None
        ctx.console.print(f"[bold]scenario {name}[/]: {scn.summary}")
        try:
            checks = scn.run(ctx)
        except Precondition as exc:
            typer.echo(
                f"error: this stack cannot run {name}: {exc}\nstart one that can: {UP_FOR_ALL}", err=True
            )
            raise typer.Exit(2) from None
        ok = show(name, checks, ctx.console)
        if json_out:
            write_json(json_out, name, checks, ok)
        raise typer.Exit(0 if ok else 1)
