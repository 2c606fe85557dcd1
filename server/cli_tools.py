"""`servelab capacity`, `servelab presets` and `servelab checkpoint`: the catalog-driven tools.

Each command prints every input beside its result (Rich tables), and `--json` gives the same
numbers machine-readably. Heavy imports (numpy, the simulator, safetensors) happen inside the
commands so `servelab --help` stays fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s|m)?\s*$")
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}


def parse_duration_s(text: str) -> float:
    """'1s' -> 1.0, '50ms' -> 0.05, '0.2' -> 0.2 (seconds when no unit)."""
    m = _DURATION.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration (examples: 1s, 50ms, 0.2)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _factors(f: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in f.items())


def _gib(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB"


def capacity(
    model: Annotated[str, typer.Option(help="catalog model key, e.g. mixtral-8x22b")] = "mixtral-8x7b",
    gpu: Annotated[str, typer.Option(help="catalog GPU key: h100, h200, a100-80g, l40s, l4")] = "h100",
    target_rps: Annotated[float, typer.Option(help="requests per second to serve")] = 100.0,
    input_len: Annotated[int, typer.Option(help="prompt tokens per request")] = 1000,
    output_len: Annotated[int, typer.Option(help="output tokens per request")] = 250,
    p95_ttft: Annotated[str, typer.Option(help="p95 time-to-first-token target, e.g. 1s")] = "1s",
    p95_tpot: Annotated[str, typer.Option(help="p95 time-per-output-token target, e.g. 50ms")] = "50ms",
    dtype: Annotated[str, typer.Option(help="weight dtype: bf16, fp8, int4")] = "bf16",
    kv_dtype: Annotated[str | None, typer.Option(help="KV-cache dtype (default: bf16)")] = None,
    tp: Annotated[int | None, typer.Option(help="only this tensor-parallel degree")] = None,
    gpu_memory_utilization: Annotated[float, typer.Option()] = 0.9,
    max_num_seqs: Annotated[int, typer.Option()] = 1024,
    max_num_batched_tokens: Annotated[int, typer.Option()] = 8192,
    seed: Annotated[int, typer.Option()] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Replicas and GPUs to serve a rate under a p95 TTFT/TPOT target (perf model + offline simulator)."""
    from rich.console import Console
    from rich.table import Table

    from server import catalog
    from server.capacity import CapacityQuery, plan

    q = CapacityQuery(
        model=model,
        gpu=gpu,
        target_rps=target_rps,
        input_len=input_len,
        output_len=output_len,
        p95_ttft_s=parse_duration_s(p95_ttft),
        p95_tpot_s=parse_duration_s(p95_tpot),
        dtype=dtype,
        kv_dtype=kv_dtype,
        gpu_memory_utilization=gpu_memory_utilization,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        tp=tp,
        seed=seed,
    )
    try:
        result = plan(q)
    except (KeyError, ValueError) as exc:
        raise typer.BadParameter(str(exc.args[0] if exc.args else exc)) from None
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2, default=str))
        return

    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # piped output: do not wrap the tables to 80 columns
    inputs = Table(title="Inputs", show_header=False)
    spec = catalog.model(model)
    for key, value in (
        ("model", f"{model} ({spec.params_total / 1e9:.1f}B total, {spec.params_active / 1e9:.1f}B active)"),
        ("gpu", gpu),
        ("weights / KV dtype", f"{dtype} / {result.perf_inputs['kv_dtype']}"),
        ("target rate", f"{target_rps:g} req/s"),
        ("input / output tokens", f"{input_len} / {output_len}"),
        ("SLO", f"p95 TTFT <= {q.p95_ttft_s * 1000:g} ms, p95 TPOT <= {q.p95_tpot_s * 1000:g} ms"),
        ("gpu_memory_utilization", f"{gpu_memory_utilization:g}"),
        ("max_num_seqs / max_num_batched_tokens", f"{max_num_seqs} / {max_num_batched_tokens}"),
        ("KV bytes per token", f"{result.perf_inputs['kv_bytes_per_token']:,}"),
        ("perf-model factors (vLLM V1)", _factors(result.perf_inputs["factors"])),  # type: ignore[arg-type]
        (
            "simulation",
            f"Poisson arrivals, {q.sim_seconds:g} s of traffic per probe "
            f"({q.min_requests}-{q.max_requests} requests), {q.bisection_steps} bisection steps, seed {seed}",
        ),
    ):
        inputs.add_row(key, str(value))
    console.print(inputs)

    table = Table(title="Per tensor-parallel degree (one replica = TP GPUs)")
    for col in (
        "TP",
        "weights/GPU",
        "act+reserve/GPU",
        "KV/GPU",
        "KV tokens",
        "max seqs",
        "saturation req/s",
        "SLO req/s",
        "p95 TTFT",
        "p95 TPOT",
        "replicas",
        "GPUs",
        "note",
    ):
        table.add_column(col, justify="right" if col != "note" else "left")
    for o in result.options:
        slo = o.replica_rps > 0
        table.add_row(
            str(o.tp),
            _gib(o.weight_bytes_per_gpu),
            _gib(o.activation_reserve_bytes_per_gpu),
            _gib(o.kv_bytes_per_gpu),
            f"{o.kv_tokens:,}",
            str(o.max_concurrent_seqs),
            f"{o.saturation_rps:.2f}" if o.fits else "-",
            f"{o.replica_rps:.2f}" if slo else "-",
            f"{o.p95_ttft_s * 1000:.0f} ms" if slo else "-",
            f"{o.p95_tpot_s * 1000:.1f} ms" if slo else "-",
            f"{o.replicas:,}" if slo else "-",
            f"{o.gpus:,}" if slo else "-",
            o.note or ("does not fit" if not o.fits else ""),
        )
    console.print(table)
    rec = result.recommended
    console.print(f"smallest TP that fits: {result.smallest_fitting_tp}")
    if rec is None:
        console.print("[bold red]no tensor-parallel degree meets the SLO on this GPU[/]")
        raise typer.Exit(1)
    console.print(
        f"[bold]recommended: TP{rec.tp}, {rec.replicas:,} replicas x {rec.tp} = {rec.gpus:,} {gpu} GPUs[/] "
        f"({rec.replica_rps:.2f} req/s per replica at p95 TTFT {rec.p95_ttft_s * 1000:.0f} ms, "
        f"p95 TPOT {rec.p95_tpot_s * 1000:.1f} ms; target {target_rps:g} req/s)"
    )


presets_app = typer.Typer(
    help="vLLM presets: catalog entries as exact `vllm serve` arguments.", no_args_is_help=True
)


@presets_app.command("list")
def presets_list() -> None:
    """Every preset with its model, GPU, parallelism and dtype."""
    from rich.console import Console
    from rich.table import Table

    from server.presets import PRESETS

    table = Table()
    for col in ("name", "model", "gpu", "tp", "dtype", "EP", "max seqs", "max len"):
        table.add_column(col)
    for p in PRESETS.values():
        table.add_row(
            p.name,
            p.model,
            p.gpu,
            str(p.tp),
            p.dtype,
            "yes" if p.enable_expert_parallel else "no",
            str(p.max_num_seqs),
            str(p.max_model_len),
        )
    Console(width=120).print(table)
    for p in PRESETS.values():
        typer.echo(f"{p.name}: {p.description}")


@presets_app.command("show")
def presets_show(
    name: Annotated[str, typer.Argument(help="preset name (see `servelab presets list`)")],
    fmt: Annotated[str, typer.Option("--format", help="cli, compose or k8s")] = "cli",
    tiers: Annotated[bool, typer.Option(help="add --scheduling-policy priority")] = False,
    model_path: Annotated[str | None, typer.Option(help="serve a local checkpoint directory")] = None,
    load_format: Annotated[str | None, typer.Option(help="'dummy' for random weights")] = None,
    host: Annotated[str | None, typer.Option(help="default 127.0.0.1 (cli) / 0.0.0.0 (containers)")] = None,
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """Print the exact `vllm serve` command (or compose / k8s fragment) of a preset."""
    from server.presets import preset

    if fmt not in ("cli", "compose", "k8s"):
        raise typer.BadParameter("--format must be cli, compose or k8s")
    try:
        p = preset(name)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from None
    p = p.with_overrides(tiers=tiers, model_path=model_path, load_format=load_format)  # type: ignore[arg-type]
    typer.echo(p.render(fmt, host=host, port=port))  # type: ignore[arg-type]


def checkpoint(
    out: Annotated[Path, typer.Option(help="directory to write")],
    model: Annotated[str, typer.Option(help="catalog model key")] = "mixtral-mini",
    weights: Annotated[
        bool,
        typer.Option(
            "--weights/--no-weights", help="--no-weights: config + tokenizer only, for --load-format dummy"
        ),
    ] = True,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a random-weight Hugging Face-format checkpoint plus the model's mistral-common tokenizer."""
    from server.catalog import model as model_spec
    from server.checkpoint import write_checkpoint

    try:
        spec = model_spec(model)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from None
    if weights and spec.params_total * 2 > 20 * 1024**3:
        typer.echo(
            f"note: {model} in float16 is {spec.params_total * 2 / 1e9:.0f} GB of random weights; "
            "--no-weights with `--load-format dummy` gives the same timings",
            err=True,
        )
    info = write_checkpoint(model, out, weights=weights, seed=seed)
    typer.echo(
        f"wrote {info.path}: config.json, {info.tokenizer}"
        + (
            f", {len(info.weight_files)} safetensors file(s), {info.weight_bytes / 1e6:.0f} MB, "
            f"{info.params:,} parameters"
            if weights
            else " (no weights: serve with --load-format dummy)"
        )
    )


def register(app: typer.Typer) -> None:
    app.command("capacity")(capacity)
    app.add_typer(presets_app, name="presets")
    app.command("checkpoint")(checkpoint)
