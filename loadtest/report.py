"""The run folder's report: summary.json (machine-readable), report.md, PNG plots, and the table.

Every number comes from the raw rows (stats.py) or the backend's /metrics deltas (serverside.py);
the inputs that produced them (workload spec with the ShareGPT calibration, arrival process,
SLO, worker count) are written beside them. `compare()` reads two summary.json files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from loadtest import analysis, plots, serverside, workloads
from loadtest.rows import read_run
from loadtest.runner import Plan, RunOutcome, plan_public
from loadtest.stats import Dist, Summary, achieved_rate, by, summarize, time_series

METRICS = ("ttft", "tpot", "itl", "e2e")


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
        )
        summary["serverside"] = cc.to_dict()
    # Plots.
    plot_files = [plots.latency_over_time(time_series(rows), run_dir / "latency_over_time.png").name]
    if "steps" in summary:
        plot_files.append(plots.sweep(steps, plan.slo, run_dir / "sweep.png").name)
    if len(per_tenant) > 1:
        plot_files.append(plots.tenants(per_tenant, run_dir / "tenants.png").name)
    summary["plots"] = plot_files
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    (run_dir / "report.md").write_text(markdown(summary))
    return summary


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


def _describe_workload(w: dict) -> str:
    def dist(d: dict) -> str:
        if d["kind"] == "fixed":
            return f"fixed {d['mean']:g}"
        if d["kind"] == "uniform":
            return f"uniform {d['low']}..{d['high'] or int(2 * d['mean'] - d['low'])}"
        return f"lognormal mean {d['mean']:g} sigma {d['sigma']:g}"

    lengths = (
        "ShareGPT-like input and output"
        if w["sharegpt"]
        else (f"input {dist(w['input'])} tokens, output {dist(w['output'])} tokens")
    )
    return (
        f"{lengths}, shared prefix {w['prefix_share']:.0%}, {w['n']} prompts, seed {w['seed']},"
        f" tokenizer mistral-common {w['tokenizer']}"
    )


def _match(m: bool | None) -> str:
    return "exact match" if m else "MISMATCH" if m is False else "n/a"


def _ms(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * 1000:.1f}"


def table(overall: dict) -> str:
    """The p50/p95/p99 table plus throughput and goodput, as fixed-width text."""
    lines = [
        f"{'metric (ms)':<12}{'mean':>10}{'p50':>10}{'p90':>10}{'p95':>10}{'p99':>10}{'max':>10}{'n':>8}"
    ]
    for m in METRICS:
        d = overall[m]
        lines.append(
            f"{m.upper():<12}"
            + "".join(f"{_ms(d[k]):>10}" for k in ("mean", "p50", "p90", "p95", "p99", "max"))
            + f"{d['n']:>8}"
        )
    lines.append("")
    lines.append(
        f"requests {overall['requests']}  ok {overall['ok']}  errors {overall['errors']}"
        f" (429: {overall['rate_limited']})  span {overall['span_s']:.1f} s"
    )
    lines.append(f"throughput {overall['request_rps']:.2f} req/s  {overall['output_tps']:.1f} output tok/s")
    if overall.get("goodput_rps") is not None:
        lines.append(
            f"goodput {overall['goodput_rps']:.2f} req/s  ({overall['slo_met_fraction'] * 100:.1f}%"
            " of requests met every SLO)"
        )
    return "\n".join(lines)


def text(summary: dict) -> str:
    """What the CLI prints at the end of a run."""
    out = [table(summary["overall"])]
    if "tenants" in summary:
        out.append("")
        out.append(
            f"{'tenant':<14}{'requests':>9}{'ok':>7}{'429':>6}{'TTFT p50':>10}{'TTFT p95':>10}"
            f"{'TPOT p50':>10}{'TPOT p95':>10}  (ms)"
        )
        for t, s in summary["tenants"].items():
            out.append(
                f"{t:<14}{s['requests']:>9}{s['ok']:>7}{s['rate_limited']:>6}{_ms(s['ttft']['p50']):>10}"
                f"{_ms(s['ttft']['p95']):>10}{_ms(s['tpot']['p50']):>10}{_ms(s['tpot']['p95']):>10}"
            )
        out.append("")
    for tenant, a in summary.get("arrivals", {}).items():
        out.append(
            f"arrivals[{tenant}]: asked {a['asked_rps']:.2f}/s, achieved {a['achieved_rps']:.2f}/s"
            f" ({a['sent']}/{a['scheduled']} sent)"
        )
    lag = summary["overall"]["lag"]
    if lag["n"] and not math.isnan(lag["p99"] or math.nan):
        out.append(
            f"send lag behind schedule: p50 {_ms(lag['p50'])} ms, p99 {_ms(lag['p99'])} ms,"
            f" max {_ms(lag['max'])} ms"
        )
    if "knee" in summary:
        k = summary["knee"]
        at_users = f" at {k['users']} users" if k.get("users") is not None else ""
        out.append(f"knee: {k['rate_rps']} req/s{at_users} (first breaking rate: {k['first_breaking_rps']})")
    if "ratelimit" in summary:
        for c in summary["ratelimit"]["checks"]:
            out.append(
                f"ratelimit[{c['tenant']}] {c['kind']}: admitted {c['admitted']:.0f} / allowed"
                f" {c['allowed']:.1f} = {c['ratio']:.3f} -> {c['verdict']}"
            )
    if "serverside" in summary:
        s = summary["serverside"]
        out.append(
            f"server-side tokens: prompt {s['server_prompt_tokens']} vs client {s['client_prompt_tokens']},"
            f" generation {s['server_generation_tokens']} vs client {s['client_completion_tokens']}"
            f" -> {_match(s['tokens_match'])}"
        )
    return "\n".join(out)


def markdown(summary: dict) -> str:
    plan = summary["plan"]
    o = summary["overall"]
    md = [f"# Load test `{summary['scenario']}` — {summary['created_utc']}", ""]
    md.append(
        f"Target `{plan['target']}`, model `{plan['model']}`, tenants {', '.join(plan['tenants'])},"
        f" duration {plan['duration_s']:.0f} s, Locust workers {plan['workers']}."
    )
    if plan.get("users") is not None:
        md.append(f"Closed loop: {plan['users']} users per tenant, think time {plan['think_s']} s.")
    else:
        md.append(
            f"Open loop: rates per tenant {plan['rates']} req/s (steps), gamma burstiness"
            f" {plan['burstiness']} (1.0 = Poisson), seed {plan['seed']}."
        )
    md.append(
        f"Workload: {_describe_workload(plan['workload'])}; notes `{json.dumps(summary['workload_notes'])}`."
    )
    md.append(f"SLO: {json.dumps(plan['slo'])}.")
    md += [
        "",
        "## Client-side (exact percentiles over every request)",
        "",
        "| metric | mean | p50 | p90 | p95 | p99 | max | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in METRICS:
        d = o[m]
        md.append(
            f"| {m.upper()} (ms) | "
            + " | ".join(_ms(d[k]) for k in ("mean", "p50", "p90", "p95", "p99", "max"))
            + f" | {d['n']} |"
        )
    md += [
        "",
        f"Requests {o['requests']}, ok {o['ok']}, errors {o['errors']} (HTTP 429: {o['rate_limited']});"
        f" kinds {json.dumps(o['error_kinds'])}.",
        f"Throughput {o['request_rps']:.3f} req/s, {o['output_tps']:.1f} output tokens/s over a span of"
        f" {o['span_s']:.2f} s (first send to last completion).",
    ]
    if o["ok"]:
        md.append(
            f"Mean tokens per successful request, from the server's usage blocks: prompt"
            f" {o['prompt_tokens'] / o['ok']:.1f} (chat template included), completion"
            f" {o['completion_tokens'] / o['ok']:.1f}."
        )
    if o.get("goodput_rps") is not None:
        md.append(f"Goodput {o['goodput_rps']:.3f} req/s ({o['slo_met_fraction'] * 100:.1f}% met every SLO).")
    if "arrivals" in summary:
        md += [
            "",
            "## Arrivals",
            "",
            "| tenant | asked req/s | achieved req/s | sent / scheduled |",
            "|---|---|---|---|",
        ]
        for t, a in summary["arrivals"].items():
            md.append(
                f"| {t} | {a['asked_rps']:.3f} | {a['achieved_rps']:.3f} | {a['sent']} / {a['scheduled']} |"
            )
        lag = o["lag"]
        md.append(
            f"\nSend lag behind schedule: p50 {_ms(lag['p50'])} ms, p99 {_ms(lag['p99'])} ms,"
            f" max {_ms(lag['max'])} ms."
        )
    if "tenants" in summary:
        md += [
            "",
            "## Per tenant",
            "",
            "| tenant | requests | ok | 429 | TTFT p50 | TTFT p95 | TPOT p50 | TPOT p95 | E2E p95 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for t, s in summary["tenants"].items():
            md.append(
                f"| {t} | {s['requests']} | {s['ok']} | {s['rate_limited']} | {_ms(s['ttft']['p50'])} |"
                f" {_ms(s['ttft']['p95'])} | {_ms(s['tpot']['p50'])} | {_ms(s['tpot']['p95'])} |"
                f" {_ms(s['e2e']['p95'])} |"
            )
    if "steps" in summary:
        md += [
            "",
            "## Sweep",
            "",
            "| users | offered req/s | achieved | TTFT p95 ms | TPOT p95 ms | goodput | meets SLO |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in summary["steps"]:
            ss = s["summary"]
            users = "open loop" if s["users"] is None else s["users"]
            md.append(
                f"| {users} | {s['offered_rps']:.2f} | {s['achieved_rps']:.2f} | {_ms(ss['ttft']['p95'])} |"
                f" {_ms(ss['tpot']['p95'])} | {ss['goodput_rps'] or 0:.2f} | {s['meets_slo']} |"
            )
        k = summary["knee"]
        at_users = f" at {k['users']} users" if k.get("users") is not None else ""
        md.append(
            f"\nKnee: **{k['rate_rps']} req/s**{at_users} (highest offered rate whose p95 TTFT and p95 TPOT"
            f" meet the SLO); first breaking rate {k['first_breaking_rps']}."
        )
    if "ratelimit" in summary:
        md += [
            "",
            "## Rate limits",
            "",
            "allowed = burst + limit/60 × window (token bucket that starts full).",
            "",
            "| tenant | limit | per min | burst | window s | admitted | allowed | ratio | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in summary["ratelimit"]["checks"]:
            md.append(
                f"| {c['tenant']} | {c['kind']} | {c['limit_per_min']:.0f} | {c['burst']:.0f} |"
                f" {c['window_s']:.2f} | {c['admitted']:.0f} | {c['allowed']:.1f} | {c['ratio']:.3f} |"
                f" {c['verdict']} |"
            )
    if "serverside" in summary:
        s = summary["serverside"]
        md += [
            "",
            "## Server-side cross-check (backend /metrics, after − before)",
            "",
            "| quantity | server | client |",
            "|---|---|---|",
            f"| prompt tokens | {s['server_prompt_tokens']} | {s['client_prompt_tokens']} |",
            f"| generated tokens | {s['server_generation_tokens']} | {s['client_completion_tokens']} |",
            f"| requests | {s['server_requests']} | {s['client_ok_requests']} (ok) |",
            "",
            f"Token totals: **{_match(s['tokens_match'])}**."
            f" Metric names used: `{json.dumps(s['source_names'])}`.",
        ]
        for q, b in s["ttft_buckets"].items():
            md.append(
                f"TTFT {q}: server histogram bucket"
                f" ({_ms(b['server_bucket_lo_s'])}, {_ms(b['server_bucket_hi_s'])}] ms,"
                f" client {_ms(b['client_s'])} ms -> within bucket: {b['within_bucket']},"
                f" not below it: {b['not_below_bucket']}."
            )
    md += [
        "",
        "## Files",
        "",
        "- `rows.csv`: one row per request (raw seconds, every chunk gap)",
        "- `locust_stats.csv`, `locust.html`: Locust's own view (TTFT/ITL/TPOT/E2E as request events)",
        "- `config.json`, `plan.json`, `workload.jsonl`: the inputs",
    ]
    md += [f"- `{p}`" for p in summary.get("plots", [])]
    md += ["", *[f"![{p}]({p})" for p in summary.get("plots", [])], ""]
    return "\n".join(md)


def compare(a_dir: Path, b_dir: Path) -> str:
    """Side-by-side differences of two runs' summary.json."""
    a = json.loads((a_dir / "summary.json").read_text())
    b = json.loads((b_dir / "summary.json").read_text())
    lines = [
        f"A: {a_dir} ({a['scenario']}, {a['created_utc']})",
        f"B: {b_dir} ({b['scenario']}, {b['created_utc']})",
        "",
        f"{'quantity':<22}{'A':>12}{'B':>12}{'B-A':>12}{'B/A':>9}",
    ]

    def row(name: str, va: float | None, vb: float | None, scale: float = 1.0) -> None:
        if va is None or vb is None:
            lines.append(f"{name:<22}{'-':>12}{'-':>12}")
            return
        ratio = f"{vb / va:.3f}" if va else "-"
        lines.append(f"{name:<22}{va * scale:>12.2f}{vb * scale:>12.2f}{(vb - va) * scale:>12.2f}{ratio:>9}")

    for m in METRICS:
        for q in ("p50", "p95", "p99"):
            row(f"{m.upper()} {q} ms", a["overall"][m][q], b["overall"][m][q], 1000.0)
    for key, name in (
        ("request_rps", "requests/s"),
        ("output_tps", "output tok/s"),
        ("goodput_rps", "goodput req/s"),
        ("errors", "errors"),
        ("rate_limited", "HTTP 429"),
    ):
        row(name, a["overall"].get(key), b["overall"].get(key))
    if "knee" in a and "knee" in b:
        row("knee req/s", a["knee"]["rate_rps"], b["knee"]["rate_rps"])
    return "\n".join(lines)


__all__ = ["Dist", "Summary", "build", "compare", "markdown", "table", "text"]
