"""`servelab rollout`: SLO-gated canary rollouts of a model version, through the admin API.

    servelab rollout start mixtral-8x7b v2 --steps 5,25,50 --window-s 300 [--watch]
    servelab rollout status mixtral-8x7b [--watch]
    servelab rollout promote mixtral-8x7b [--reason TEXT]
    servelab rollout abort mixtral-8x7b [--reason TEXT]
    servelab rollout audit [--model mixtral-8x7b]
    servelab rollout weights mixtral-8x7b [v1=90 v2=10 | --reset]

The gateway runs the rollout (gateway/rollout.py): these commands only start, inspect and end
it, so closing the terminal does not stop a rollout. `--watch` follows it to the end, printing
each step and decision as the audit log records it, and exits 0 when the canary is promoted,
3 when it is rolled back (so a deploy pipeline can branch on it). Every command talks to any
gateway replica (`--url`, `SERVELAB_GATEWAY_URL`) with the admin token (`SERVELAB_ADMIN_TOKEN`).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from gateway.cli import DEFAULT_URL, JsonOpt, TokenOpt, UrlOpt, _call

ABORTED_EXIT = 3


def _fmt_entry(e: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.gmtime(e["time_ms"] / 1000))
    d = e.get("detail") or {}
    pct = f" canary={d['canary_percent']:g}%" if "canary_percent" in d else ""
    line = f"{when} {e['action']:<13} by {e['actor']:<8}{pct}  {e['reason']}"
    w = d.get("window")
    if w:
        c, b = w["canary"], w["baseline"]

        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x * 1000:.0f}ms"

        line += (
            f"\n{'':9}window {w['window_s']}s: canary n={c['requests']} err={c['error_rate']:.1%} "
            f"p95 ttft={ms(c['p95_ttft_s'])} tpot={ms(c['p95_tpot_s'])} | baseline n={b['requests']} "
            f"err={b['error_rate']:.1%} p95 ttft={ms(b['p95_ttft_s'])} tpot={ms(b['p95_tpot_s'])}"
        )
    return line


def _watch(url: str, token: str, model: str, interval_s: float) -> None:
    seen: set[str] = set()
    while True:
        st = _call(url, token, "GET", f"/admin/v1/rollouts/{model}")
        for e in reversed(st["audit"]):
            if e["id"] not in seen and e["time_ms"] >= st["started_ms"]:
                seen.add(e["id"])
                typer.echo(_fmt_entry(e))
        if st["status"] != "running":
            typer.echo(f"rollout {st['status']}: {st['reason']}")
            raise typer.Exit(0 if st["status"] == "promoted" else ABORTED_EXIT)
        time.sleep(interval_s)


def _summary(st: dict[str, Any]) -> str:
    steps = ", ".join(f"{s:g}%" for s in st["steps"])
    return (
        f"{st['model']}: {st['status']} canary={st['canary']} baseline={st['baseline']} "
        f"canary_percent={st['canary_percent']:g} steps=[{steps}] window={st['window_s']:g}s"
        + (f"\nreason: {st['reason']}" if st.get("reason") else "")
    )


def register(app: typer.Typer) -> None:
    ro = typer.Typer(
        help="SLO-gated canary rollouts of a model version (start, status, promote, abort, audit).",
        no_args_is_help=True,
    )
    app.add_typer(ro, name="rollout")

    @ro.command("start")
    def start(
        model: Annotated[str, typer.Argument(help="Model alias, e.g. mixtral-8x7b.")],
        canary: Annotated[str, typer.Argument(help="Version to roll out.")],
        baseline: Annotated[
            str | None, typer.Option(help="Compare against (default: heaviest other).")
        ] = None,
        steps: Annotated[str, typer.Option(help="Canary percent per step, comma-separated.")] = "5,25,50",
        window_s: Annotated[float, typer.Option(help="Observation window per step, s.")] = 300.0,
        max_error_rate_increase: Annotated[
            float,
            typer.Option(help="Abort when canary error rate exceeds baseline by more (0.02 = 2 points)."),
        ] = 0.02,
        max_latency_ratio: Annotated[
            float, typer.Option(help="Abort when canary p95 TTFT or TPOT is over baseline x this ...")
        ] = 1.5,
        min_latency_increase_s: Annotated[
            float, typer.Option(help="... and slower by at least this, s.")
        ] = 0.05,
        min_requests: Annotated[int, typer.Option(help="Requests per version before a step is judged.")] = 20,
        watch: Annotated[
            bool, typer.Option(help="Follow the rollout to the end (exit 3 if rolled back).")
        ] = False,
        url: UrlOpt = DEFAULT_URL,
        admin_token: TokenOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Start ramping CANARY on MODEL; the gateway judges each step against the baseline."""
        try:
            step_list = [float(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise typer.BadParameter(f"--steps must be numbers separated by commas, got {steps!r}") from None
        body = {
            "model": model,
            "canary": canary,
            "baseline": baseline,
            "steps": step_list,
            "window_s": window_s,
            "thresholds": {
                "max_error_rate_increase": max_error_rate_increase,
                "max_latency_ratio": max_latency_ratio,
                "min_latency_increase_s": min_latency_increase_s,
                "min_requests": min_requests,
            },
        }
        st = _call(url, admin_token, "POST", "/admin/v1/rollouts", body)
        typer.echo(json.dumps(st, indent=2) if as_json else _summary(st))
        if watch:
            _watch(url, admin_token, model, 1.0)

    @ro.command("status")
    def status(
        model: Annotated[str, typer.Argument(help="Model alias.")],
        watch: Annotated[
            bool, typer.Option(help="Follow the rollout to the end (exit 3 if rolled back).")
        ] = False,
        url: UrlOpt = DEFAULT_URL,
        admin_token: TokenOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """State of MODEL's rollout and its latest audit entries."""
        if watch:
            _watch(url, admin_token, model, 1.0)
        st = _call(url, admin_token, "GET", f"/admin/v1/rollouts/{model}")
        if as_json:
            typer.echo(json.dumps(st, indent=2))
            return
        typer.echo(_summary(st))
        for e in reversed(st["audit"][:10]):
            typer.echo(_fmt_entry(e))

    @ro.command("promote")
    def promote(
        model: Annotated[str, typer.Argument(help="Model alias.")],
        reason: Annotated[str, typer.Option(help="Recorded in the audit log.")] = "",
        url: UrlOpt = DEFAULT_URL,
        admin_token: TokenOpt = "",
    ) -> None:
        """Send 100% to the canary now, ending the rollout."""
        typer.echo(
            _summary(
                _call(url, admin_token, "POST", f"/admin/v1/rollouts/{model}/promote", {"reason": reason})
            )
        )

    @ro.command("abort")
    def abort(
        model: Annotated[str, typer.Argument(help="Model alias.")],
        reason: Annotated[str, typer.Option(help="Recorded in the audit log.")] = "",
        url: UrlOpt = DEFAULT_URL,
        admin_token: TokenOpt = "",
    ) -> None:
        """Send 100% back to the baseline now, ending the rollout."""
        typer.echo(
            _summary(_call(url, admin_token, "POST", f"/admin/v1/rollouts/{model}/abort", {"reason": reason}))
        )

    @ro.command("audit")
    def audit(
        model: Annotated[str | None, typer.Option(help="Only this model alias.")] = None,
        count: Annotated[int, typer.Option(help="Newest N entries.")] = 50,
        url: UrlOpt = DEFAULT_URL,
        admin_token: TokenOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """The audit log of version changes, oldest of the N newest first."""
        params = f"?count={count}" + (f"&model={model}" if model else "")
        data = _call(url, admin_token, "GET", f"/admin/v1/audit{params}")["data"]
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        for e in reversed(data):
            typer.echo(f"{e['model'] or '-':<14} " + _fmt_entry(e))

    @ro.command("weights")
    def weights(
        model: Annotated[str, typer.Argument(help="Model alias.")],
        assignments: Annotated[list[str] | None, typer.Argument(help="VERSION=WEIGHT pairs to set.")] = None,
        reset: Annotated[bool, typer.Option(help="Back to the YAML weights.")] = False,
        reason: Annotated[str, typer.Option(help="Recorded in the audit log.")] = "",
        url: UrlOpt = DEFAULT_URL,
        admin_token: TokenOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Show MODEL's versions and live weights, or set them by hand (audited)."""
        path = f"/admin/v1/models/{model}"
        if reset:
            data = _call(url, admin_token, "DELETE", f"{path}/weights")
        elif assignments:
            table: dict[str, float] = {}
            for a in assignments:
                name, sep, value = a.partition("=")
                try:
                    table[name] = float(value)
                except ValueError:
                    sep = ""
                if not sep:
                    raise typer.BadParameter(f"expected VERSION=WEIGHT, got {a!r}")
            data = _call(url, admin_token, "PUT", f"{path}/weights", {"weights": table, "reason": reason})
        else:
            data = _call(url, admin_token, "GET", f"{path}/versions")
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        for v in data["versions"]:
            places = ", ".join(f"{b['url']} ({b['region'] or 'no region'})" for b in v["backends"])
            typer.echo(f"{v['version']:<12} weight={v['weight']:<6g} yaml={v['yaml_weight']:<6g} {places}")
