"""The run folder's report: summary.json (machine-readable), report.md, PNG plots, and the table.

Every number comes from the raw rows (stats.py) or the backend's /metrics deltas (serverside.py);
the inputs that produced them (workload spec with the ShareGPT calibration, arrival process,
SLO, worker count) are written beside them. render.py turns the summary into text and Markdown.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from loadtest import analysis, plots, render, serverside, workloads
from loadtest.rows import read_run
from loadtest.runconfig import RunConfig
from loadtest.runner import Plan, RunOutcome, plan_public
from loadtest.stats import Dist, Summary, achieved_rate, by, summarize, time_series


def build(outcome: RunOutcome, plan: Plan) -> dict:
    """Compute everything, write summary.json, report.md and the plots; return the summary dict."""
    run_dir = outcome.run_dir
    rows = read_run(run_dir)
    overall = summarize(rows, plan.slo)
    config = outcome.config
    summary: dict = {
        "scenario": plan.scenario,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": plan_public(plan),
        "workload_notes": _workload_notes(plan.workload),
        "wall_s": outcome.wall_s,
        "locust_returncode": outcome.returncode,
        "overall": overall.to_dict(),
    }
    open_streams = [s for s in config.streams if s.open_loop]
    if open_streams:
        per_tenant_rows = by(rows, "tenant")
        summary["arrivals"] = {
            s.tenant: {
                "asked_rps": sum(st.rate_rps * st.duration_s for st in s.steps) / config.duration_s,
                "achieved_rps": achieved_rate(per_tenant_rows.get(s.tenant, []), config.duration_s),
                "scheduled": sum(round(st.rate_rps * st.duration_s) for st in s.steps),
                "sent": len(per_tenant_rows.get(s.tenant, [])),
                "burstiness": config.burstiness,
            }
            for s in open_streams
        }
    tenants = by(rows, "tenant")
    per_tenant = {str(t): summarize(r, plan.slo) for t, r in tenants.items()}
    if len(per_tenant) > 1:
        summary["tenants"] = {t: s.to_dict() for t, s in per_tenant.items()}
    if plan.scenario == "sweep" and (open_streams or config.user_steps):
        steps = analysis.sweep_steps(rows, config, plan.slo)
        k = analysis.knee(steps)
        summary["steps"] = [
            {
                "step": s.step,
                "users": s.users,
                "offered_rps": s.offered_rps,
                "achieved_rps": s.achieved_rps,
                "meets_slo": s.meets_slo,
                "summary": s.summary.to_dict(),
            }
            for s in steps
        ]
        summary["knee"] = asdict(k)
        if plan.predict and open_streams and overall.ok:
            summary["prediction"] = _predict(plan, config, overall)
    if plan.limits:
        checks = analysis.ratelimit_checks(rows, plan.limits)
        summary["ratelimit"] = {
            "checks": [asdict(c) for c in checks],
            "verdicts": analysis.binding_verdicts(checks),
        }
    if outcome.before is not None and outcome.after is not None:
        d = serverside.delta(outcome.before, outcome.after)
        cc = serverside.cross_check(
            d,
            overall.prompt_tokens,
            overall.completion_tokens,
            overall.ok,
            {"p50": overall.ttft.p50, "p95": overall.ttft.p95},
            {"p50": overall.e2e.p50, "p95": overall.e2e.p95},
        )
        summary["serverside"] = cc.to_dict()
    # Plots.
    plot_files = [plots.latency_over_time(time_series(rows), run_dir / "latency_over_time.png").name]
    if "steps" in summary:
        plot_files.append(plots.sweep(steps, plan.slo, run_dir / "sweep.png").name)
    if len(per_tenant) > 1:
        plot_files.append(plots.tenants(per_tenant, run_dir / "tenants.png").name)
    summary["plots"] = plot_files
    summary["metrics_urls"] = list(outcome.metrics_urls)
    summary["warnings"] = warnings(summary)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    (run_dir / "report.md").write_text(render.markdown(summary))
    return summary


def _predict(plan: Plan, config: RunConfig, overall: Summary) -> dict:
    """The offline simulator's knee for this sweep, fed the run's measured mean token counts."""
    from loadtest.predict import predict_knee

    p = plan.predict
    steps = config.streams[0].steps
    pred = predict_knee(
        [st.rate_rps for st in steps],
        steps[0].duration_s,
        plan.slo,
        round(overall.prompt_tokens / overall.ok),
        round(overall.completion_tokens / overall.ok),
        model=p.get("model", "mixtral-8x7b"),
        gpu=p.get("gpu", "h100"),
        tp=int(p.get("tp", 1)),
        dtype=p.get("dtype", "bf16"),
        speedup=float(p.get("speedup", 1.0)),
    )
    return {"knee_rps": pred.knee_rps, "steps": [asdict(s) for s in pred.steps], "inputs": pred.inputs}


def warnings(summary: dict) -> list[str]:
    """Things that make this run's numbers suspect, said plainly."""
    out = []
    for tenant, a in summary.get("arrivals", {}).items():
        if a["achieved_rps"] < 0.95 * a["asked_rps"]:
            out.append(
                f"the load generator fell behind for {tenant}: achieved {a['achieved_rps']:.2f} of"
                f" {a['asked_rps']:.2f} req/s asked; add --workers or run it on a less loaded machine"
            )
    lag = summary["overall"]["lag"]
    if lag["n"] and lag["p99"] is not None and lag["p99"] > 0.05:
        out.append(f"sends were late: p99 lag behind schedule {lag['p99'] * 1000:.0f} ms (client-side delay)")
    kinds = {k: v for k, v in summary["overall"]["error_kinds"].items() if k != "429"}
    if kinds:
        out.append(f"{sum(kinds.values())} requests failed other than by rate limiting: {kinds}")
    side = summary.get("serverside")
    if side and side["tokens_match"] is False:
        out.append(
            "token totals differ from the backend's counters: other traffic on that backend during the run,"
            " or usage blocks lost"
        )
    if "serverside" not in summary:
        out.append("no backend /metrics to cross-check against (pass --metrics-url BACKEND/metrics)")
    return out


def _json_default(o: object) -> object:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def _workload_notes(spec: workloads.WorkloadSpec) -> dict:
    notes: dict = {"tokenizer": f"mistral-common {spec.tokenizer}", "prompt_lengths": "exact, re-encoded"}
    if spec.sharegpt:
        mu_in, s_in, mu_out, s_out = workloads.sharegpt_params()
        notes["sharegpt_like"] = {
            "input_lognormal_mu": mu_in,
            "input_sigma": s_in,
            "output_lognormal_mu": mu_out,
            "output_sigma": s_out,
            "filter": "prompt<=1024, prompt+output<=2048, both>=4",
            "target_means": [workloads.SHAREGPT_MEAN_IN, workloads.SHAREGPT_MEAN_OUT],
        }
    return notes


__all__ = ["Dist", "Summary", "build"]
