"""`servelab specdecode` and `servelab ep-vs-tp`: the what-if levers of the capacity answer.

Each prints its inputs beside its numbers; the tables in docs/serving.md are their output.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

DEFAULT_BATCHES = "1,2,4,8,16,32,64,128,256,512"


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise typer.BadParameter("give one or more positive integers, e.g. 1,16,256")
    return values


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


def _console() -> object:
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=170)


def specdecode(
    model: Annotated[str, typer.Option(help="target model (catalog key)")] = "mixtral-8x22b",
    gpu: Annotated[str, typer.Option(help="catalog GPU key")] = "h100",
    tp: Annotated[int, typer.Option(help="tensor-parallel GPUs of the target (the draft shares them)")] = 8,
    dtype: Annotated[str, typer.Option(help="weight dtype of target and draft: bf16, fp8, int4")] = "bf16",
    method: Annotated[str, typer.Option(help="ngram (prompt lookup, no GPU work) or draft_model")] = "ngram",
    draft_model: Annotated[str | None, typer.Option(help="draft model (catalog key) for draft_model")] = None,
    k: Annotated[int, typer.Option("--k", help="num_speculative_tokens: tokens drafted per step")] = 4,
    acceptance: Annotated[float, typer.Option(
        help="probability that each drafted token is accepted (workload-dependent)")] = 0.6,
    accepted_length: Annotated[float | None, typer.Option(
        help="instead of --acceptance: the mean acceptance length vLLM reports (tokens per step)")] = None,
    context: Annotated[int, typer.Option(help="tokens already in each sequence's KV cache")] = 1125,
    batches: Annotated[str, typer.Option(help="decode batch sizes to tabulate")] = DEFAULT_BATCHES,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """TPOT with and without speculative decoding against batch size (perf model, no simulation).

    Tokens per step (1 - a^(k+1)) / (1 - a); draft passes and the verify pass priced by the roofline.
    """
    from rich.console import Console
    from rich.table import Table

    from server.perfmodel import PerfModel
    from server.specdecode import (
        SpecConfig,
        SpecModel,
        acceptance_from_length,
        expected_tokens_per_step,
        kv_capacity,
    )

    if method not in ("ngram", "draft_model"):
        raise typer.BadParameter("--method must be ngram or draft_model")
    sizes = _ints(batches)
    try:
        if accepted_length is not None:
            acceptance = acceptance_from_length(k, accepted_length)
        cfg = SpecConfig(k=k, acceptance=acceptance, method=method, draft_model=draft_model)  # type: ignore[arg-type]
        target = PerfModel.build(model, gpu, tp=tp, dtype=dtype)
        spec = SpecModel.build(target, cfg)
    except (KeyError, ValueError) as exc:
        raise typer.BadParameter(str(exc.args[0] if exc.args else exc)) from None
    points = spec.sweep(sizes, context)
    breakeven = spec.breakeven_batch(context)
    kv_plain, kv_shared = kv_capacity(target, spec.draft if isinstance(spec.draft, PerfModel) else None)
    if as_json:
        typer.echo(json.dumps({
            "inputs": {"model": model, "gpu": gpu, "tp": tp, "dtype": dtype, "method": method,
                       "draft_model": draft_model, "k": k, "acceptance": acceptance, "context": context},
            "tokens_per_step": cfg.tokens_per_step, "breakeven_batch": breakeven,
            "kv_tokens": {"plain": kv_plain, "with_draft": kv_shared},
            "points": [{"batch": p.batch, "plain_tpot_s": p.plain_tpot_s, "draft_s": p.draft_s,
                        "verify_s": p.verify_s, "spec_tpot_s": p.spec_tpot_s, "speedup": p.speedup}
                       for p in points],
        }, indent=2))
        return
    console = _console()
    assert isinstance(console, Console)
    console.print(
        f"{model} {dtype} on {tp}x {gpu}; {method}"
        + (f" with {draft_model}" if draft_model else "")
        + f", k={k}, acceptance {acceptance:g} -> {cfg.tokens_per_step:.2f} tokens per step; "
        f"context {context} tokens")
    t = Table(title="Decode TPOT against batch size")
    for col in ("batch", "plain step", "draft", "verify (k+1 tokens/seq)", "spec TPOT", "speedup"):
        t.add_column(col, justify="right")
    for p in points:
        t.add_row(str(p.batch), f"{p.plain_tpot_s * 1e3:.1f} ms", f"{p.draft_s * 1e3:.1f} ms",
                  f"{p.verify_s * 1e3:.1f} ms", f"{p.spec_tpot_s * 1e3:.1f} ms", f"x{p.speedup:.2f}")
    console.print(t)
    console.print("speculation stops paying at batch "
                  + (f"{breakeven}" if breakeven else "> 1024 (not reached)"))
    if spec.draft is not None:
        console.print(f"KV cache: {kv_plain:,} tokens without the draft, {kv_shared:,} with its weights "
                      f"and KV beside the target's ({kv_shared / kv_plain - 1:+.0%})")
    acc = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
    e = Table(title="Tokens per step (1 - a^(k+1)) / (1 - a)")
    e.add_column("k")
    for a in acc:
        e.add_column(f"a={a:g}", justify="right")
    for kk in (1, 2, 3, 4, 5, 8):
        e.add_row(str(kk), *(f"{expected_tokens_per_step(kk, a):.2f}" for a in acc))
    console.print(e)


def ep_vs_tp(
    model: Annotated[str, typer.Option(help="MoE model (catalog key)")] = "mixtral-8x22b",
    gpu: Annotated[str, typer.Option(help="catalog GPU key")] = "h100",
    gpus: Annotated[int, typer.Option(help="GPUs per replica (one node)")] = 8,
    dtype: Annotated[str, typer.Option(help="weight dtype: bf16, fp8, int4")] = "bf16",
    skews: Annotated[str, typer.Option(
        help="expert-load skews to try: hottest expert's load over the mean (1 = uniform)")] = "1,1.5,2",
    target_rps: Annotated[float, typer.Option(help="requests per second to size for")] = 10000.0,
    input_len: Annotated[int, typer.Option(help="prompt tokens per request")] = 1000,
    output_len: Annotated[int, typer.Option(help="output tokens per request")] = 250,
    p95_ttft: Annotated[str, typer.Option(help="p95 TTFT target")] = "1s",
    p95_tpot: Annotated[str, typer.Option(help="p95 TPOT target")] = "50ms",
    target_utilization: Annotated[float, typer.Option(help="headroom, as in `servelab capacity`")] = 0.8,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Size an MoE model on one node three ways: tensor parallel, expert parallel, and DP attention + EP.

    Step times from server/expertpar.py (the busiest GPU sets the MoE time); replicas as in `capacity`.
    """
    from rich.console import Console
    from rich.table import Table

    from server.capacity import CapacityQuery, plan
    from server.cli_tools import parse_duration_s
    from server.expertpar import LAYOUTS, ExpertParallelModel
    from server.perfmodel import BatchShape, PerfModel

    skew_values = _floats(skews)
    if not skew_values or min(skew_values) < 1:
        raise typer.BadParameter("--skews must be numbers >= 1, e.g. 1,1.5,2")
    ttft_s, tpot_s = parse_duration_s(p95_ttft), parse_duration_s(p95_tpot)
    try:
        base = PerfModel.build(model, gpu, tp=gpus, dtype=dtype)
        models = [(lay, s, ExpertParallelModel(base, lay, s)) for lay in LAYOUTS
                  for s in ((1.0,) if lay == "tp" else skew_values)]
    except (KeyError, ValueError) as exc:
        raise typer.BadParameter(str(exc.args[0] if exc.args else exc)) from None
    ctx = input_len + output_len // 2
    rows = []
    for lay, s, m in models:
        q = CapacityQuery(model=model, gpu=gpu, target_rps=target_rps, input_len=input_len,
                          output_len=output_len, p95_ttft_s=ttft_s, p95_tpot_s=tpot_s, dtype=dtype, tp=gpus,
                          layout=lay, expert_skew=s, target_utilization=target_utilization,
                          failover=False, sensitivity=False)
        rec = plan(q).recommended
        steps = {b: m.step_time_s(BatchShape((), (ctx,) * b)) for b in (1, 16, 64, 256)}
        prefill = m.step_time_s(BatchShape(((1000, 0),) * 8, ()))
        rows.append({
            "layout": lay, "expert_skew": s, "weight_bytes_per_gpu": m.weight_bytes_per_gpu(),
            "kv_tokens": m.kv_tokens(16), "decode_step_s": steps, "prefill_8x1000_s": prefill,
            "saturation_rps": rec.saturation_rps if rec else None,
            "replica_rps": rec.replica_rps if rec else None,
            "replicas": rec.replicas if rec else None, "gpus": rec.gpus if rec else None,
        })
    if as_json:
        inputs = {"model": model, "gpu": gpu, "gpus": gpus, "dtype": dtype, "target_rps": target_rps,
                  "input_len": input_len, "output_len": output_len, "p95_ttft_s": ttft_s,
                  "p95_tpot_s": tpot_s, "target_utilization": target_utilization}
        typer.echo(json.dumps({"inputs": inputs, "layouts": rows}, indent=2, default=str))
        return
    console = _console()
    assert isinstance(console, Console)
    console.print(f"{model} {dtype} on {gpus}x {gpu}; {target_rps:g} req/s of {input_len}+{output_len} "
                  f"tokens, p95 TTFT <= {ttft_s * 1e3:g} ms, TPOT <= {tpot_s * 1e3:g} ms, planned at "
                  f"{target_utilization:.0%}; decode context {ctx} tokens")
    t = Table(title="One replica, three layouts")
    for col in ("layout", "skew", "weights/GPU", "KV tokens", "decode B=1", "B=16", "B=64", "B=256",
                "prefill 8x1000", "max req/s", "SLO req/s", "replicas", "GPUs"):
        t.add_column(col, justify="left" if col in ("layout",) else "right")
    for r in rows:
        st = r["decode_step_s"]
        weights = r["weight_bytes_per_gpu"]
        assert isinstance(st, dict) and isinstance(weights, int)
        t.add_row(
            str(r["layout"]), f"{r['expert_skew']:g}", f"{weights / 2**30:.1f} GiB",
            f"{r['kv_tokens']:,}", *(f"{st[b] * 1e3:.1f} ms" for b in (1, 16, 64, 256)),
            f"{r['prefill_8x1000_s'] * 1e3:.0f} ms",  # type: ignore[operator]
            f"{r['saturation_rps']:.2f}" if r["saturation_rps"] else "-",
            f"{r['replica_rps']:.2f}" if r["replica_rps"] else "-",
            f"{r['replicas']:,}" if r["replicas"] else "-", f"{r['gpus']:,}" if r["gpus"] else "-",
        )
    console.print(t)
    console.print("tp: everything sliced, two all-reduces per layer; ep: attention sliced, whole experts per "
                  "GPU, the busiest GPU sets the MoE time; dp-ep: attention replicated (each GPU its own "
                  "sequences), all-to-all dispatch + combine per MoE layer")


def register(app: typer.Typer) -> None:
    app.command("specdecode")(specdecode)
    app.command("ep-vs-tp")(ep_vs_tp)
