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


def _money(usd: float) -> str:
    if usd >= 1e6:
        return f"${usd / 1e6:,.2f}M"
    if usd >= 1e3:
        return f"${usd / 1e3:,.1f}k"
    return f"${usd:,.2f}"


def capacity(
    model: Annotated[str | None, typer.Option(help="catalog model key, e.g. mixtral-8x22b (default: "
                                              "mixtral-8x7b, or the preset's)")] = None,
    gpu: Annotated[str | None, typer.Option(help="catalog GPU key: h100, h200, a100-80g, l40s, l4 "
                                            "(default: h100, or the preset's)")] = None,
    preset: Annotated[str | None, typer.Option(
        help="size a vLLM preset with its own engine settings (model, GPU, TP, dtype, max-num-seqs, "
        "gpu-memory-utilization); flags given explicitly override them")] = None,
    target_rps: Annotated[float, typer.Option(help="requests per second to serve")] = 100.0,
    input_len: Annotated[int, typer.Option(help="prompt tokens per request")] = 1000,
    output_len: Annotated[int, typer.Option(help="output tokens per request")] = 250,
    p95_ttft: Annotated[str, typer.Option(help="p95 time-to-first-token target, e.g. 1s")] = "1s",
    p95_tpot: Annotated[str, typer.Option(help="p95 time-per-output-token target, e.g. 50ms")] = "50ms",
    slo_basis: Annotated[str, typer.Option(
        help="p95: p95 TTFT and p95 TPOT each within target; per-request: at least 95% of requests "
        "meet both targets themselves (vLLM's --goodput)")] = "p95",
    target_utilization: Annotated[float, typer.Option(
        help="headroom: plan each replica to run at this fraction of its SLO rate (1 = no headroom)")] = 0.8,
    gpu_hourly_usd: Annotated[float | None, typer.Option(
        help="$ per GPU-hour (default: a dated on-demand quote per GPU type, see server/pricing.py)")] = None,
    dtype: Annotated[str | None, typer.Option(help="weight dtype: bf16, fp8, int4 (default: bf16)")] = None,
    kv_dtype: Annotated[str | None, typer.Option(help="KV-cache dtype (default: bf16)")] = None,
    tp: Annotated[int | None, typer.Option(help="only this tensor-parallel degree (default: try 1, 2, 4, 8)")]
    = None,
    gpu_memory_utilization: Annotated[float | None, typer.Option(
        help="fraction of GPU memory vLLM may use (default: 0.9, or the preset's)")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(
        help="vLLM's cap on running sequences (default: 1024, or the preset's)")] = None,
    max_num_batched_tokens: Annotated[int, typer.Option(help="vLLM's token budget per step")] = 8192,
    layout: Annotated[str | None, typer.Option(
        help="how a replica's GPUs split an MoE model: tp, ep (whole experts per GPU), dp-ep (DP attention "
        "+ EP); see `servelab ep-vs-tp` (default: tp, or ep for a preset with expert parallelism)")] = None,
    expert_skew: Annotated[float, typer.Option(
        help="with ep / dp-ep: the hottest expert's load over the mean (1 = uniform routing)")] = 1.0,
    failover: Annotated[bool, typer.Option(
        "--failover/--no-failover", help="simulate losing one replica to find k of N+k")] = True,
    failure_cell: Annotated[int, typer.Option(help="replicas simulated around the failed one")] = 16,
    retry_after: Annotated[str, typer.Option(help="how long a dropped client waits to resend")] = "0.5s",
    lost_replicas: Annotated[int, typer.Option(
        help="replicas one failure takes down (1: a GPU or a one-replica node; 2: a node of two TP4 "
        "replicas)")] = 1,
    sensitivity: Annotated[bool, typer.Option(
        "--sensitivity/--no-sensitivity", help="re-size with each perf-model factor at its range's ends")]
    = True,
    seed: Annotated[int, typer.Option()] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Replicas, GPUs and cost to serve a rate under a p95 TTFT/TPOT target (perf model + offline simulator).

    Per TP degree: one replica's SLO rate. For the best: headroom, N+k, goodput, prefill share, range, cost.
    """
    import sys

    from rich.console import Console
    from rich.table import Table

    from server import catalog
    from server.capacity import CapacityQuery, plan, query_for_preset

    if slo_basis not in ("p95", "per-request"):
        raise typer.BadParameter("--slo-basis must be p95 or per-request")
    if layout is not None and layout not in ("tp", "ep", "dp-ep"):
        raise typer.BadParameter("--layout must be tp, ep or dp-ep")
    given = {
        k: v
        for k, v in {
            "model": model, "gpu": gpu, "dtype": dtype, "kv_dtype": kv_dtype, "tp": tp,
            "gpu_memory_utilization": gpu_memory_utilization, "max_num_seqs": max_num_seqs,
            "layout": layout,
        }.items()
        if v is not None
    }
    common: dict[str, object] = {
        "target_rps": target_rps,
        "input_len": input_len,
        "output_len": output_len,
        "p95_ttft_s": parse_duration_s(p95_ttft),
        "p95_tpot_s": parse_duration_s(p95_tpot),
        "max_num_batched_tokens": max_num_batched_tokens,
        "slo_basis": slo_basis,
        "target_utilization": target_utilization,
        "gpu_hourly_usd": gpu_hourly_usd,
        "failover": failover,
        "failure_cell": failure_cell,
        "retry_after_s": parse_duration_s(retry_after),
        "lost_replicas": lost_replicas,
        "sensitivity": sensitivity,
        "seed": seed,
        "expert_skew": expert_skew,
    }
    console = Console()
    if not console.is_terminal:
        console = Console(width=190)  # piped output: do not wrap the tables to 80 columns
    err = Console(stderr=True)
    try:
        if preset:
            q = query_for_preset(preset, **common, **given)
        else:
            defaults = {"model": "mixtral-8x7b", "gpu": "h100", "dtype": "bf16"}
            q = CapacityQuery(**{**defaults, **common, **given})  # type: ignore[arg-type]
        catalog.model(q.model)
        catalog.gpu(q.gpu)
        quiet = as_json or not sys.stderr.isatty()
        result = plan(q, progress=None if quiet else lambda msg: err.print(f"[dim]{msg}[/]"))
    except (KeyError, ValueError) as exc:
        raise typer.BadParameter(str(exc.args[0] if exc.args else exc)) from None
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2, default=str))
        if result.recommended is None:
            raise typer.Exit(1)
        return

    inputs = Table(title="Inputs", show_header=False)
    spec = catalog.model(q.model)
    price = (f"${result.usd_per_gpu_hour:.2f} per GPU-hour ({result.price_source})"
             if result.usd_per_gpu_hour == result.usd_per_gpu_hour else result.price_source)
    for key, value in (
        ("preset", q.preset or "-"),
        ("model", f"{q.model} ({spec.params_total / 1e9:.1f}B total, "
                  f"{spec.params_active / 1e9:.1f}B active)"),
        ("gpu", q.gpu),
        ("weights / KV dtype", f"{q.dtype} / {result.perf_inputs['kv_dtype']}"),
        ("layout", q.layout + (f", expert skew {q.expert_skew:g}" if q.layout != "tp" else "")),
        ("target rate", f"{q.target_rps:g} req/s"),
        ("input / output tokens", f"{q.input_len} / {q.output_len}"),
        ("SLO", f"p95 TTFT <= {q.p95_ttft_s * 1000:g} ms, p95 TPOT <= {q.p95_tpot_s * 1000:g} ms"
         + (" (per request: >= 95% of requests meet both)" if q.slo_basis == "per-request" else "")),
        ("headroom", f"replicas planned at {q.target_utilization:.0%} of their SLO rate"),
        ("price", price),
        ("gpu_memory_utilization", f"{q.gpu_memory_utilization:g}"),
        ("max_num_seqs / max_num_batched_tokens", f"{q.max_num_seqs} / {q.max_num_batched_tokens}"),
        ("KV bytes per token", f"{result.perf_inputs['kv_bytes_per_token']:,}"),
        ("perf-model factors (vLLM V1)", _factors(result.perf_inputs["factors"])),  # type: ignore[arg-type]
        (
            "simulation",
            f"Poisson arrivals, {q.sim_seconds:g} s of traffic per probe "
            f"({q.min_requests}-{q.max_requests} requests), {q.bisection_steps} bisection steps, "
            f"seed {q.seed}",
        ),
    ):
        inputs.add_row(key, str(value))
    console.print(inputs)

    table = Table(title="Per tensor-parallel degree (one replica = TP GPUs)")
    for col in (
        "TP", "weights/GPU", "reserve/GPU", "KV/GPU", "KV tokens", "max seqs", "max req/s", "SLO req/s",
        "p95 TTFT", "p95 TPOT", "both met", "replicas @SLO",
        f"replicas @{q.target_utilization:.0%}", "GPUs", "note",
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
            f"{o.good_share:.1%}" if slo else "-",
            f"{o.replicas_at_slo:,}" if slo else "-",
            f"{o.replicas:,}" if slo else "-",
            f"{o.gpus:,}" if slo else "-",
            o.note or ("does not fit" if not o.fits else ""),
        )
    console.print(table)
    console.print("max req/s: saturation throughput; both met: share of requests meeting both targets "
                  "themselves at the SLO rate; reserve: activations of the profiling pass + non-torch memory")
    rec = result.recommended
    console.print(f"smallest TP that fits: {result.smallest_fitting_tp}")
    if rec is None:
        console.print("[bold red]no tensor-parallel degree meets the SLO on this GPU[/]")
        raise typer.Exit(1)
    _print_details(console, result)


def _print_details(console: object, result: object) -> None:
    """The recommended TP: operating point, failover, sensitivity and the answer with its cost."""
    from rich.console import Console
    from rich.table import Table

    from server.capacity import CapacityPlan
    from server.pricing import FleetCost

    assert isinstance(console, Console) and isinstance(result, CapacityPlan)
    q, rec = result.query, result.recommended
    assert rec is not None
    tp = rec.tp
    pt = result.point
    if pt is not None:
        t = Table(title=f"One TP{tp} replica at its SLO rate ({pt.rate_rps:.2f} req/s)", show_header=False)
        t.add_row("GPU time in prefill / decode", f"{pt.prefill_share:.0%} / {1 - pt.prefill_share:.0%} "
                  "(decode share of a mixed step = the step's cost without its prefill chunks)")
        t.add_row("sequences per step (time-weighted mean)", f"{pt.batch_seqs_mean:,.0f} "
                  f"(max_num_seqs {q.max_num_seqs}, KV room for {rec.max_concurrent_seqs})")
        t.add_row("p95 TTFT / p95 TPOT", f"{pt.p95_ttft_s * 1000:.0f} ms / {pt.p95_tpot_s * 1000:.1f} ms")
        t.add_row("requests meeting both targets themselves", f"{pt.good_share:.1%} "
                  "(per-request goodput; the two p95s alone allow as low as 90%)")
        console.print(t)
    if result.failover:
        lost = ("one replica lost (a GPU failure takes its whole TP group)" if q.lost_replicas == 1
                else f"{q.lost_replicas} replicas lost at once (one failure domain)")
        t = Table(title=f"N+k: {lost}, its streams retried after {q.retry_after_s:g} s")
        for col in ("k", "fleet", "cell simulated", "cell req/s", "streams retried", "p95 TTFT before",
                    "p95 TPOT before", "p95 TTFT failover", "p95 TPOT failover", "both met", "meets SLO"):
            t.add_column(col, justify="right")
        for tr in result.failover:
            t.add_row(str(tr.spares), f"{tr.fleet:,}", str(tr.cell), f"{tr.cell_rps:.1f}", str(tr.retried),
                      f"{tr.p95_ttft_before_s * 1000:.0f} ms", f"{tr.p95_tpot_before_s * 1000:.1f} ms",
                      f"{tr.p95_ttft_s * 1000:.0f} ms", f"{tr.p95_tpot_s * 1000:.1f} ms",
                      f"{tr.good_share:.1%}", "yes" if tr.ok else "no")
        console.print(t)
        console.print(f"failover window: requests sent {q.failure_window_s:g} s after the failure "
                      f"(at t={q.failure_at_s:g} s) plus every retried one; a cell smaller than the fleet "
                      "is pessimistic (fewer survivors share the load and the retries)")
    if result.sensitivity:
        t = Table(title=f"Sensitivity: TP{tp} re-sized with each perf-model factor at the ends of its "
                  "documented range (server/perfmodel.py FACTOR_RANGES)")
        cols = ("factor", "value", "SLO req/s", f"replicas @{q.target_utilization:.0%}", "GPUs", "vs answer")
        for col in cols:
            t.add_column(col, justify="right" if col not in ("factor", "value") else "left")
        for r in result.sensitivity:
            delta = f"{r.gpus / rec.gpus - 1:+.0%}" if r.gpus else "-"
            t.add_row(r.factor, r.value, f"{r.replica_rps:.2f}", f"{r.replicas:,}", f"{r.gpus:,}", delta)
        console.print(t)

    answer = Table(title="Answer")
    for col in ("", "replicas", "GPUs", "$/month", "$/M output tokens", "$/M tokens (in+out)"):
        answer.add_column(col, justify="right" if col else "left")
    price = result.usd_per_gpu_hour

    def row(label: str, replicas: int) -> None:
        gpus = replicas * tp
        if price == price:
            c = FleetCost(gpus, price, q.target_rps, q.input_len, q.output_len)
            money = (_money(c.usd_per_month), f"${c.usd_per_million_output_tokens:.3f}",
                     f"${c.usd_per_million_tokens:.3f}")
        else:
            money = ("-", "-", "-")
        answer.add_row(label, f"{replicas:,}", f"{gpus:,}", *money)

    row("at the SLO limit (100% utilisation)", rec.replicas_at_slo)
    row(f"with headroom ({q.target_utilization:.0%} utilisation)", rec.replicas)
    if result.failover:
        if result.spares is None:
            answer.add_row("N+k (failure simulated)", f"no k <= {q.max_spares} meets the SLO", "", "", "", "")
        else:
            what = "one replica" if q.lost_replicas == 1 else f"{q.lost_replicas} replicas"
            row(f"N+{result.spares} ({what} lost, simulated)", result.total_replicas)
    rng = result.gpu_range()
    if rng is not None:
        lo, hi = rng
        answer.add_row("range over the factors' uncertainty (headroom, no spares)",
                       f"{lo // tp:,}-{hi // tp:,}", f"{lo:,}-{hi:,}", "", "", "")
    console.print(answer)
    console.print(
        f"[bold]recommended: TP{tp}, {result.total_replicas:,} replicas x {tp} = {result.total_gpus:,} "
        f"{q.gpu} GPUs[/] ({rec.replica_rps:.2f} req/s per replica at its SLO limit, planned at "
        f"{q.target_utilization:.0%}; target {q.target_rps:g} req/s)"
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
    for col in ("name", "model", "gpu", "tp", "dtype", "EP", "max seqs", "max len", "speculative"):
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
            "-" if p.speculative is None else
            f"{p.speculative.method} k={p.speculative.num_speculative_tokens}"
            + (f" ({p.speculative.draft_model})" if p.speculative.draft_model else ""),
        )
    Console(width=140).print(table)
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
    from server import cli_whatif

    app.command("capacity")(capacity)
    cli_whatif.register(app)
    app.add_typer(presets_app, name="presets")
    app.command("checkpoint")(checkpoint)
