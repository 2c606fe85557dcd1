"""`servelab up` and `servelab demo`: the embedded stack for people, not for tests."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from servelab.stack import Stack, StackConfig

console = Console(stderr=True)


def _raise_on_sigterm() -> None:
    """SIGTERM behaves like Ctrl-C, so `finally` blocks stop every child we started."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _show(info: dict) -> None:
    """URLs and keys. The value column never wraps or truncates: a key is copied from here."""
    table = Table(title="servelab stack (127.0.0.1)", show_header=False)
    values = [*info.get("gateway_urls", [info["gateway_url"]]), *info["keys"].values()]
    table.add_column("what", overflow="fold")
    table.add_column("value", no_wrap=True, min_width=max(len(v) for v in values) + 3)
    for i, url in enumerate(info.get("gateway_urls", [info["gateway_url"]])):
        table.add_row("gateway" if i == 0 else f"gateway {i}", url + "/v1")
    for model, urls in (info.get("models") or {info["model"]: info["backend_urls"]}).items():
        for i, url in enumerate(urls):
            spare = " (spare)" if url in info.get("spare_backend_urls", []) else ""
            table.add_row(f"{model} sim {i}{spare}", url)
    table.add_row("redis", info["redis_url"])
    table.add_row("metrics", info["gateway_url"] + "/metrics")
    for tenant, key in info["keys"].items():
        table.add_row(f"key {tenant}", key)
    console.print(table)


def up(
    state_dir: Annotated[Path, typer.Option(help="Folder for logs, the Redis data and stack.json.")] = Path(
        "runs/stack"
    ),
    gateway_port: Annotated[int, typer.Option(help="Gateway port (0 = any free port).")] = 8080,
    backend_port: Annotated[int, typer.Option(help="First simulator port (0 = any free port).")] = 8100,
    backends: Annotated[int, typer.Option(min=1, help="Simulator replicas behind the gateway.")] = 1,
    spare_backends: Annotated[
        int,
        typer.Option(
            min=0,
            help="Extra replicas in the gateway's config but not started (scenarios scale-out and "
            "cold-start start them).",
        ),
    ] = 0,
    gateways: Annotated[int, typer.Option(min=1, help="Gateway replicas sharing Redis.")] = 1,
    max_num_seqs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Batch slots per simulated replica (vLLM's --max-num-seqs); also turns on the gateway's "
            "fair queue, which engages when the replicas are saturated.",
        ),
    ] = None,
    sim_arg: Annotated[
        list[str],
        typer.Option(help="Extra `servelab serve` argument per simulator, e.g. --sim-arg=--max-num-seqs=16."),
    ] = [],  # noqa: B006
    second_model: Annotated[
        str | None, typer.Option(help="Also serve this catalog model (one simulated replica, 1 GPU).")
    ] = None,
    model: Annotated[str, typer.Option(help="Catalog model the simulators play.")] = "mixtral-8x7b",
    gpu: Annotated[str, typer.Option(help="Catalog GPU the simulators play.")] = "h100",
    tp: Annotated[int, typer.Option(help="Tensor-parallel size of each simulated replica.")] = 2,
    config: Annotated[
        Path | None, typer.Option(help="Gateway YAML (default: the packaged demo config).")
    ] = None,
) -> None:
    """Start Redis, simulated backends and the gateway on 127.0.0.1; print URLs and demo API keys.

    Runs until Ctrl-C or SIGTERM, then stops everything it started. With REDIS_URL set, that
    Redis is used instead of starting one. `servelab top` and `servelab scenario` find this stack
    through STATE_DIR/stack.json; scenarios kill and restart its parts through this process.
    """
    _raise_on_sigterm()
    cfg = StackConfig(
        state_dir=state_dir,
        gateway_port=gateway_port,
        backend_port=backend_port,
        backends=backends,
        spare_backends=spare_backends,
        gateways=gateways,
        sim_args=tuple(sim_arg),
        max_num_seqs=max_num_seqs,
        second_model=second_model,
        model=model,
        gpu=gpu,
        tp=tp,
        config_path=config,
    )
    stack = Stack(cfg)
    try:
        with console.status("starting") as status:
            info = stack.start(progress=lambda m: status.update(m))
        _show(info)
        console.print(f"[green]ready[/] — stack.json in {state_dir}; Ctrl-C stops everything.")
        console.print(
            f"try:  curl -s {info['gateway_url']}/v1/chat/completions -H 'authorization: Bearer "
            f"{next(iter(info['keys'].values()), 'sk-...')}' -H 'content-type: application/json' "
            f'-d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}], '
            f'"max_tokens": 16}}\''
        )
        while True:
            stack.handle_control()
            dead = stack.dead_children()
            if dead:
                for child in dead:
                    console.print(
                        f"[red]{child.name} exited with code {child.popen.returncode}[/]; "
                        f"see {child.log_path}"
                    )
                raise typer.Exit(1)
            time.sleep(0.1)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        stack.stop()


def demo(
    seconds: Annotated[float, typer.Option(min=5, help="Length of the live serving load, seconds.")] = 40.0,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/demo-<time>).")] = None,
) -> None:
    """Both halves in ~3 minutes: the capacity answer and a replica holding its p95, then a noisy
    neighbour, a rate-limited tenant and metering checked against the engines' own counters."""
    from servelab.demo import run_demo

    _raise_on_sigterm()
    run_dir = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    try:
        ok = run_demo(run_dir, seconds)
    except KeyboardInterrupt:
        console.print("stopped")
        raise typer.Exit(130) from None
    raise typer.Exit(0 if ok else 1)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(demo)
