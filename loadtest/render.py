"""How a run reads: the printed table, report.md, and `report compare` of two runs.

Pure functions of the summary dict that report.build() writes as summary.json, so a run folder
can be re-rendered, and two runs compared, without the rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

METRICS = ("ttft", "tpot", "itl", "e2e")


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
        if "prediction" in summary:
            out.append(
                f"knee predicted by the offline simulator: {summary['prediction']['knee_rps']} req/s"
                f" ({json.dumps(summary['prediction']['inputs'])})"
            )
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
    out += [f"WARNING: {w}" for w in summary.get("warnings", [])]
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
    md += [f"\n**Warning:** {w}." for w in summary.get("warnings", [])]
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
        if "prediction" in summary:
            pr = summary["prediction"]
            md += [
                "",
                "Offline simulator (`server.sim.offline.simulate`, as `servelab simulate`) for the same"
                f" rates, per-step request counts and SLO, fed this run's mean token counts; median of"
                f" {pr['inputs']['seeds']} seeds: knee **{pr['knee_rps']} req/s**. Inputs:"
                f" `{json.dumps(pr['inputs'])}`.",
                "",
                "| offered req/s | predicted TTFT p95 ms | predicted TPOT p95 ms | meets SLO |",
                "|---|---|---|---|",
            ]
            for p in pr["steps"]:
                ttft, tpot = _ms(p["ttft_p95_s"]), _ms(p["tpot_p95_s"])
                md.append(f"| {p['rate_rps']:.2f} | {ttft} | {tpot} | {p['meets_slo']} |")
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
        buckets = [("TTFT", q, b) for q, b in s["ttft_buckets"].items()]
        buckets += [("E2E", q, b) for q, b in s.get("e2e_buckets", {}).items()]
        for metric, q, b in buckets:
            md.append(
                f"{metric} {q}: server histogram bucket"
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
