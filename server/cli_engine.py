"""`servelab serve` and `servelab simulate`: the engine behind an HTTP server, or on an event clock.

`serve --engine sim` runs the simulator's OpenAI server (server/sim/api.py) under uvicorn;
`serve --engine vllm` hands a preset to server/launcher.py, which runs the real `vllm serve`.
`simulate` plays a workload through the same engine offline and prints vLLM-benchmark-style
percentiles with every input beside them. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import math
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer


class EngineKind(StrEnum):
    sim = "sim"
    vllm = "vllm"


class PolicyKind(StrEnum):
    fcfs = "fcfs"
    priority = "priority"


class StepperKind(StrEnum):
    fast = "fast"
    reference = "reference"


class RouterChoice(StrEnum):
    least_loaded = "least-loaded"
    prefix_affinity = "prefix-affinity"
    affinity_bounded = "affinity-bounded"
    combined = "combined"


def _parse_rate(rate: str) -> float | None:
    if rate.strip().lower() in ("inf", "infinity", "none"):
        return None
    value = float(rate)
    if not value > 0:
        raise typer.BadParameter("rate must be positive or 'inf'")
    return value


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        engine: EngineKind = typer.Option(EngineKind.sim, help="sim (simulator) or vllm (a preset)"),
        model: str = typer.Option("mixtral-8x7b", help="catalog model key (sim)"),
        gpu: str = typer.Option("h100", help="catalog GPU key (sim)"),
        tp: int = typer.Option(1, help="tensor-parallel size (sim)"),
        dtype: str = typer.Option("bf16", help="weight dtype: bf16, fp8, int4 (sim)"),
        kv_dtype: str | None = typer.Option(None, help="KV-cache dtype (sim)"),
        host: str = typer.Option("127.0.0.1"),
        port: int = typer.Option(8000),
        served_model_name: str | None = typer.Option(None, help="model id clients send (default: model)"),
        max_num_seqs: int = typer.Option(1024),
        max_num_batched_tokens: int = typer.Option(8192),
        max_model_len: int | None = typer.Option(None),
        gpu_memory_utilization: float = typer.Option(0.9),
        scheduling_policy: PolicyKind = typer.Option(PolicyKind.fcfs),
        chunked_prefill: bool = typer.Option(True, help="off: vLLM V0's prefill-first scheduler (sim)"),
        speedup: float = typer.Option(1.0, help="engine time runs this many times faster than real (sim)"),
        default_max_tokens: int = typer.Option(256, help="max_tokens when a request sets none (sim)"),
        output_len: str | None = typer.Option(
            None, help="natural output-length distribution, e.g. sharegpt-out or lognormal:200:1 (sim); "
            "default: every answer runs to max_tokens"),
        num_kv_blocks: int | None = typer.Option(None, help="override the KV blocks the perf model computes"),
        seed: int = typer.Option(0),
        cold_start: bool = typer.Option(
            False, help="start cold: fused-MoE kernels compile on first use, as a fresh vLLM 0.5.x (sim)"),
        log_level: str = typer.Option("info"),
        preset: str | None = typer.Option(None, help="vLLM preset name (engine vllm)"),
        dry_run: bool = typer.Option(False, help="print the exact vllm command and exit (engine vllm)"),
        tiers: bool = typer.Option(False, help="--scheduling-policy priority for vLLM (engine vllm)"),
        model_path: str | None = typer.Option(None, help="local checkpoint directory (engine vllm)"),
        load_format: str | None = typer.Option(None, help="e.g. dummy (engine vllm)"),
        vllm_arg: list[str] = typer.Option([], help="extra argument passed to vllm serve, repeatable"),
    ) -> None:
        """Serve an OpenAI-compatible API: the simulator, or vLLM from a preset."""
        if engine == EngineKind.vllm:
            from server import launcher

            if preset is None:
                raise typer.BadParameter("--engine vllm needs --preset (see `servelab presets`)")
            opts = launcher.LaunchOptions(
                preset=preset, host=host, port=port, tiers=tiers, model_path=model_path,
                load_format=load_format, extra_args=tuple(vllm_arg))
            try:
                launcher.resolve(opts)
            except KeyError as exc:
                raise typer.BadParameter(str(exc.args[0]), param_hint="--preset") from None
            if dry_run:
                typer.echo(launcher.dry_run(opts))
                return
            try:
                sys.exit(launcher.serve_forever(opts))
            except launcher.VllmNotInstalled as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None

        import logging

        import uvicorn

        from server.sim.api import create_app
        from server.sim.settings import SimSettings

        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        settings = SimSettings(
            model=model, gpu=gpu, tp=tp, dtype=dtype, kv_dtype=kv_dtype,
            gpu_memory_utilization=gpu_memory_utilization, served_model_name=served_model_name,
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            scheduling_policy=scheduling_policy.value, enable_chunked_prefill=chunked_prefill,
            speedup=speedup, default_max_tokens=default_max_tokens,
            output_len=output_len, num_kv_blocks=num_kv_blocks, seed=seed, block_size=16,
            cold_start=cold_start,
        )
        # Streams in flight would otherwise hold a SIGTERM'd server open until they finish; vLLM
        # drops them too. 3 s leaves room inside servelab.procs' 10 s SIGTERM->SIGKILL window.
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, access_log=False,
                    timeout_graceful_shutdown=3)

    @app.command()
    def simulate(
        model: str = typer.Option("mixtral-8x7b", help="catalog model key"),
        gpu: str = typer.Option("h100", help="catalog GPU key"),
        tp: int = typer.Option(1),
        dtype: str = typer.Option("bf16"),
        kv_dtype: str | None = typer.Option(None),
        gpu_memory_utilization: float = typer.Option(0.9),
        input_len: str = typer.Option("1024", help="N, or a distribution: uniform:LO:HI, lognormal:MEAN:CV, "
                                      "normal:MEAN:STD (each optionally :MIN:MAX), sharegpt-in"),
        output_len: str = typer.Option("128", help="N or a distribution, as --input-len (sharegpt-out)"),
        num_requests: int = typer.Option(1000),
        rate: str = typer.Option("inf", help="requests/s, Poisson; inf = all at t=0"),
        concurrency: int | None = typer.Option(None, help="closed loop: at most N outstanding requests"),
        replicas: int = typer.Option(1, help="engine replicas behind a least-loaded router"),
        max_num_seqs: int = typer.Option(1024),
        max_num_batched_tokens: int = typer.Option(8192),
        policy: PolicyKind = typer.Option(PolicyKind.fcfs),
        chunked_prefill: bool = typer.Option(True, help="off: vLLM V0's prefill-first scheduler"),
        seed: int = typer.Option(0),
        slo_ttft: float | None = typer.Option(None, help="seconds; adds goodput under the SLOs"),
        slo_tpot: float | None = typer.Option(None, help="seconds; adds goodput under the SLOs"),
        json_out: Path | None = typer.Option(None, "--json", help="also write inputs + results here as JSON"),
        stepper: StepperKind = typer.Option(
            StepperKind.fast, help="fast: decoding requests as a cohort (same results); reference: every"
            " request every step"),
        prefix_caching: bool = typer.Option(False, help="vLLM's automatic prefix caching in every replica"),
        router: RouterChoice = typer.Option(
            RouterChoice.least_loaded, help="cluster routing: least-loaded, prefix-affinity,"
            " affinity-bounded (falls back above 8 requests of imbalance) or combined"),
        shared_contexts: int | None = typer.Option(
            None, help="each prompt = one of N shared contexts (--context-len tokens) + --input-len own"
            " tokens"),
        context_len: int = typer.Option(6000, help="tokens per shared context (with --shared-contexts)"),
        conversation_turns: int | None = typer.Option(
            None, help="multi-turn chats of T turns: each prompt carries the history (--input-len per user"
            " turn)"),
        tenants: Path | None = typer.Option(
            None, help="multi-tenant workload YAML: gateway replicas with the fairness front before the"
            " replicas (server/sim/tenantcli.py); per-tenant TTFT, service and fair share"),
        front: str = typer.Option("vtc", help="with --tenants: vtc (the gateway's policy), sfq or fcfs"),
        gateways: int = typer.Option(1, help="with --tenants: gateway replicas sharing the counters"),
    ) -> None:
        """Play a workload through the engine on a discrete-event clock and print vLLM-benchmark metrics."""
        from server.sim.offline import Workload
        from server.sim.offline import simulate as run_sim
        from server.sim.prefixwork import Conversations, PrefixSpec, SharedContexts

        if tenants is not None:
            from server.sim.tenantcli import simulate_tenants

            if front not in ("vtc", "sfq", "fcfs"):
                raise typer.BadParameter("--front must be vtc, sfq or fcfs")
            for line in simulate_tenants(
                tenants, model=model, gpu=gpu, tp=tp, dtype=dtype, replicas=replicas,
                max_num_seqs=max_num_seqs, front=front, gateways=gateways,
                engine_priority=policy == PolicyKind.priority, warmup_s=0.0, json_out=json_out,
            ):
                typer.echo(line)
            return
        if shared_contexts is not None and conversation_turns is not None:
            raise typer.BadParameter("choose --shared-contexts or --conversation-turns, not both")
        prefix: PrefixSpec | None = None
        if shared_contexts is not None:
            prefix = SharedContexts(shared_contexts, context_len)
        elif conversation_turns is not None:
            prefix = Conversations(conversation_turns)
        wl = Workload(num_requests=num_requests, input_len=input_len, output_len=output_len,
                      rate=_parse_rate(rate), concurrency=concurrency, seed=seed, prefix=prefix)
        res = run_sim(wl, model=model, gpu=gpu, tp=tp, dtype=dtype, kv_dtype=kv_dtype,
                      gpu_memory_utilization=gpu_memory_utilization, replicas=replicas,
                      max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                      policy=policy.value, chunked_prefill=chunked_prefill, stepper=stepper.value,
                      prefix_caching=prefix_caching, router=router.value)
        summary: dict[str, Any] = dict(res.summary())
        if slo_ttft is not None or slo_tpot is not None:
            summary["goodput_rps"] = res.goodput(slo_ttft, slo_tpot)
            summary["slo_ttft_s"], summary["slo_tpot_s"] = slo_ttft, slo_tpot
        _print(res.inputs, summary)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps({"inputs": res.inputs, "results": summary}, indent=2, default=str))
            typer.echo(f"wrote {json_out}")


def _print(inputs: dict[str, Any], s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    wl = inputs["workload"]
    pm = inputs.get("perf_model", {})
    console.print(
        f"[bold]inputs[/] model={inputs.get('model')} gpu={inputs.get('gpu')} tp={inputs.get('tp')}"
        f" dtype={inputs.get('dtype')} replicas={inputs['replicas']}"
        f" kv_blocks/replica={inputs['kv_blocks_per_replica']}"
        f" max_num_seqs={inputs['max_num_seqs']} max_num_batched_tokens={inputs['max_num_batched_tokens']}"
        f" policy={inputs['policy']} chunked_prefill={inputs['chunked_prefill']}")
    console.print(
        f"[bold]workload[/] requests={wl['num_requests']} input={wl['input_len']} output={wl['output_len']}"
        f" rate={wl['rate']} concurrency={wl['concurrency']} seed={wl['seed']}")
    if pm:
        console.print(f"[bold]perf model factors[/] {pm.get('factors')}")
    table = Table(title="latency (ms)")
    for col in ("metric", "mean", "p50", "p95", "p99"):
        table.add_column(col, justify="right")
    for m in ("ttft", "tpot", "itl", "e2e"):
        row = [s.get(f"{m}_mean_s")] + [s.get(f"{m}_p{p}_s") for p in (50, 95, 99)]
        table.add_row(m.upper(), *(_ms(v) for v in row))
    console.print(table)
    console.print(
        f"duration {s['duration_s']:.2f} s | requests {s['num_requests']} | "
        f"request throughput {s['request_throughput']:.2f} req/s |"
        f" output {s['output_throughput']:.0f} tok/s | "
        f"mean lengths in/out {s['mean_input_len']:.0f}/{s['mean_output_len']:.0f}")
    console.print(
        f"KV usage mean {s['kv_usage_mean']:.1%} max {s['kv_usage_max']:.1%} |"
        f" preemptions {s['preemptions']} | "
        f"steps {s['steps']} | simulated in {s['wall_s']:.2f} s wall")
    if "prefix_cache_hit_rate" in s:
        console.print(f"prefix cache hit rate {s['prefix_cache_hit_rate']:.1%} of prompt tokens"
                      f" (router {inputs.get('router')})")
    if "goodput_rps" in s:
        console.print(f"goodput {s['goodput_rps']:.2f} req/s under TTFT<={s['slo_ttft_s']} s,"
                      f" TPOT<={s['slo_tpot_s']} s")


def _ms(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * 1000:.1f}"
