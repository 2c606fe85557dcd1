"""`servelab loadtest SCENARIO ...` and `servelab report compare A B`.

This module runs in the servelab CLI process, so it never imports Locust (runner.py starts Locust
as child processes). It turns options into a `Plan` (scenario defaults + overrides), runs it,
writes the report and prints the p50/p95/p99 table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

if TYPE_CHECKING:
    from loadtest.workloads import DistKind

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "": 1.0}


def parse_duration(text: str) -> float:
    """'60s', '1.5m', '500ms', '2' (seconds) -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|min|m|h|)\s*", text)
    if not m:
        raise typer.BadParameter(f"not a duration: {text!r} (use e.g. 60s, 1.5m, 500ms)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _dist_kind(name: str) -> DistKind:
    if name not in ("fixed", "uniform", "lognormal"):
        raise typer.BadParameter(
            f"length distribution must be fixed, uniform or lognormal (or sharegpt for"
            f" --input-dist), got {name!r}"
        )
    return cast("DistKind", name)


def parse_keys(values: list[str]) -> dict[str, str]:
    """'tenant=sk-...' or bare keys (named default, t1, t2, ...)."""
    keys: dict[str, str] = {}
    for i, v in enumerate(values):
        if "=" in v and not v.startswith("sk-"):
            name, key = v.split("=", 1)
        else:
            name, key = ("default" if i == 0 else f"t{i}"), v
        keys[name] = key
    return keys


def parse_limits(values: list[str]) -> dict[str, dict[str, float]]:
    """'acme:rpm=600,tpm=20000' -> {'acme': {'rpm': 600, 'tpm': 20000}}."""
    out: dict[str, dict[str, float]] = {}
    for v in values:
        tenant, _, spec = v.partition(":")
        if not spec:
            raise typer.BadParameter(f"--limit wants TENANT:rpm=N[,tpm=M], got {v!r}")
        for part in spec.split(","):
            k, _, n = part.partition("=")
            if k not in ("rpm", "tpm", "burst_rpm", "burst_tpm"):
                raise typer.BadParameter(f"unknown limit {k!r} in {v!r} (rpm, tpm, burst_rpm, burst_tpm)")
            out.setdefault(tenant, {})[k] = float(n)
    return out


def limits_from_gateway_config(path: Path, tenants: list[str]) -> dict[str, dict[str, float]]:
    """rpm/tpm of each tenant's effective plan in a gateway YAML config (the file the gateway runs)."""
    from gateway.config import load_config

    cfg = load_config(path)
    out: dict[str, dict[str, float]] = {}
    for t in tenants:
        if t in cfg.tenants:
            plan = cfg.effective_plan(t)
            out[t] = {"rpm": float(plan.requests_per_minute), "tpm": float(plan.tokens_per_minute)}
    return out


def parse_predict(text: str, model: str) -> dict[str, str]:
    """'gpu=h100,tp=2' -> {'model': MODEL, 'gpu': 'h100', 'tp': '2'} (model defaults to --model)."""
    out = {"model": model}
    for part in text.split(","):
        k, _, v = part.partition("=")
        if k not in ("model", "gpu", "tp", "dtype", "speedup") or not v:
            raise typer.BadParameter(f"--predict wants model=,gpu=,tp=,dtype=,speedup= pairs, got {part!r}")
        out[k] = v
    return out


def register(app: typer.Typer) -> None:
    report_app = typer.Typer(help="Work with load-test run folders.", no_args_is_help=True)
    app.add_typer(report_app, name="report")

    @report_app.command("compare")
    def compare_cmd(run_a: Path, run_b: Path) -> None:
        """Print two runs' percentiles, throughput and goodput side by side with their differences."""
        from loadtest.render import compare

        typer.echo(compare(run_a, run_b))

    @app.command("loadtest")
    def loadtest_cmd(
        scenario: Annotated[str, typer.Argument(help="chat | sweep | multitenant | ratelimit | longcontext")],
        target: Annotated[str, typer.Option(help="base URL of an OpenAI-compatible server or gateway")],
        api_key: Annotated[list[str], typer.Option("--api-key", help="KEY or TENANT=KEY; repeat per tenant")],
        model: Annotated[str, typer.Option(help="model name sent in requests")] = "mixtral-8x7b",
        rate: Annotated[
            float | None, typer.Option(help="open loop: requests/s per tenant (sweep: top rate)")
        ] = None,
        rates: Annotated[str | None, typer.Option(help="sweep: comma-separated rates, e.g. 1,2,4,8")] = None,
        steps: Annotated[int, typer.Option(help="sweep: number of rate steps up to --rate")] = 6,
        users: Annotated[
            int | None,
            typer.Option(help="closed loop: users per tenant instead of --rate (sweep: ladder top)"),
        ] = None,
        think: Annotated[str, typer.Option(help="closed loop think time")] = "0s",
        duration: Annotated[str, typer.Option(help="how long to send (sweep: all steps together)")] = "60s",
        slo_ttft: Annotated[
            str | None, typer.Option(help="SLO on TTFT for goodput (default 1s unless any SLO given)")
        ] = None,
        slo_tpot: Annotated[
            str | None, typer.Option(help="SLO on TPOT for goodput (default 50ms unless any SLO given)")
        ] = None,
        slo_e2e: Annotated[str | None, typer.Option(help="SLO on end-to-end latency")] = None,
        out: Annotated[Path | None, typer.Option(help="run folder (default runs/SCENARIO-TIMESTAMP)")] = None,
        workers: Annotated[int, typer.Option(help="Locust worker processes (1: standalone)")] = 1,
        metrics_url: Annotated[
            list[str] | None, typer.Option(help="backend /metrics URL(s) to cross-check")
        ] = None,
        input_dist: Annotated[str | None, typer.Option(help="fixed | uniform | lognormal | sharegpt")] = None,
        input_len: Annotated[float | None, typer.Option(help="mean prompt tokens")] = None,
        output_dist: Annotated[str | None, typer.Option(help="fixed | uniform | lognormal")] = None,
        output_len: Annotated[float | None, typer.Option(help="mean output tokens (max_tokens)")] = None,
        prefix_share: Annotated[
            float | None, typer.Option(help="share of each prompt that is common")
        ] = None,
        prompts: Annotated[int | None, typer.Option(help="distinct prompts to build")] = None,
        tokenizer: Annotated[str, typer.Option(help="mistral-common tokenizer version")] = "v1",
        burstiness: Annotated[float, typer.Option(help="gamma shape of arrival gaps (1 = Poisson)")] = 1.0,
        seed: Annotated[int, typer.Option()] = 0,
        endpoint: Annotated[str, typer.Option(help="chat | completions")] = "chat",
        noisy_tenant: Annotated[str | None, typer.Option(help="multitenant: the flooding tenant")] = None,
        noisy_factor: Annotated[float, typer.Option(help="multitenant: noisy rate = factor x --rate")] = 10.0,
        limit: Annotated[list[str] | None, typer.Option(help="ratelimit: TENANT:rpm=N,tpm=M")] = None,
        limits_from: Annotated[
            Path | None,
            typer.Option(
                help="ratelimit: take each tenant's rpm/tpm from this gateway config (--limit wins)"
            ),
        ] = None,
        predict: Annotated[
            str | None,
            typer.Option(
                help="sweep: also predict the knee offline, e.g. gpu=h100,tp=2,dtype=bf16,speedup=1"
            ),
        ] = None,
        max_concurrency: Annotated[int | None, typer.Option(help="open loop: greenlets per tenant")] = None,
        drain: Annotated[str, typer.Option(help="wait this long for in-flight requests at the end")] = "60s",
        ignore_eos: Annotated[
            bool, typer.Option(help="send ignore_eos so outputs are max_tokens long")
        ] = True,
    ) -> None:
        """Run a load-test scenario headless and print the p50/p95/p99 table (see docs/loadtest.md)."""
        from dataclasses import replace

        from loadtest import render, report
        from loadtest.runner import Plan, default_run_dir, execute
        from loadtest.scenarios import DEFAULTS
        from loadtest.stats import Slo
        from loadtest.workloads import LengthDist

        if scenario not in DEFAULTS:
            raise typer.BadParameter(f"unknown scenario {scenario!r}; known: {', '.join(DEFAULTS)}")
        if rate is not None and users is not None:
            raise typer.BadParameter("give --rate (open loop) or --users (closed loop), not both")
        d = DEFAULTS[scenario]
        keys = parse_keys(api_key)
        wl = d.workload
        if input_dist == "sharegpt":
            wl = replace(wl, sharegpt=True)
        elif input_dist or input_len:
            base = wl.input
            wl = replace(
                wl,
                sharegpt=False,
                input=LengthDist(
                    _dist_kind(input_dist or base.kind), input_len or base.mean, sigma=base.sigma
                ),
            )
        if output_dist or output_len:
            wl = replace(
                wl,
                sharegpt=False,
                output=LengthDist(_dist_kind(output_dist or wl.output.kind), output_len or wl.output.mean),
            )
        if prefix_share is not None:
            wl = replace(wl, prefix_share=prefix_share)
        if prompts:
            wl = replace(wl, n=prompts)
        wl = replace(wl, tokenizer=tokenizer, seed=seed)
        duration_s = parse_duration(duration)
        top = rate if rate is not None else d.rate_rps
        plan_rates: dict[str, list[float]] = {}
        if users is None:
            if scenario == "sweep":
                ladder = (
                    [float(x) for x in rates.split(",")]
                    if rates
                    else [top * (i + 1) / steps for i in range(steps)]
                )
                plan_rates = {t: ladder for t in keys}
            elif scenario == "multitenant":
                noisy = noisy_tenant or ("noisy" if "noisy" in keys else next(iter(keys)))
                plan_rates = {t: [top * (noisy_factor if t == noisy else 1.0)] for t in keys}
            else:
                plan_rates = {t: [top] for t in keys}
        slo = Slo(
            ttft_s=parse_duration(slo_ttft) if slo_ttft else None,
            tpot_s=parse_duration(slo_tpot) if slo_tpot else None,
            e2e_s=parse_duration(slo_e2e) if slo_e2e else None,
        )
        user_steps: list[int] = []
        if scenario == "sweep" and users is not None:
            user_steps = [max(1, round(users * (i + 1) / steps)) for i in range(steps)]
        if not slo.any:
            # Goodput needs an SLO; these defaults (an interactive chat's) are printed in the report.
            slo = Slo(ttft_s=1.0, tpot_s=0.05)
        plan = Plan(
            scenario=scenario,
            target=target.rstrip("/"),
            model=model,
            keys=keys,
            workload=wl,
            duration_s=duration_s,
            rates=plan_rates,
            users=users,
            user_steps=user_steps,
            think_s=parse_duration(think),
            max_concurrency=max_concurrency,
            burstiness=burstiness,
            seed=seed,
            workers=workers,
            endpoint=endpoint,
            ignore_eos=ignore_eos,
            slo=slo,
            metrics_urls=tuple(metrics_url or ()),
            drain_s=parse_duration(drain),
            limits={
                **(limits_from_gateway_config(limits_from, list(keys)) if limits_from else {}),
                **parse_limits(limit or []),
            },
            predict=parse_predict(predict, model) if predict else {},
        )
        run_dir = out or default_run_dir(scenario)
        typer.echo(f"loadtest {scenario}: {d.description}; run folder {run_dir}", err=True)
        outcome = execute(plan, run_dir, log=lambda m: typer.echo(m, err=True))
        summary = report.build(outcome, plan)
        typer.echo(render.text(summary))
        plot_paths = ", ".join(str(run_dir / p) for p in summary["plots"])
        typer.echo(f"\nreport: {run_dir / 'report.md'}  plots: {plot_paths}")
        if outcome.returncode not in (0, 1):
            raise typer.Exit(outcome.returncode)
