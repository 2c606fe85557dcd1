"""What a finished run means: overall and per-tenant summaries, sweep steps and knee, rate limits.

Pure functions of the raw rows and the run config, so each scenario's verdict is unit-testable
without a server:
  * sweep: per step, the offered and achieved rate, p95 TTFT/TPOT and goodput; the knee is the
    highest offered rate whose p95 TTFT and p95 TPOT both meet the SLO (steps above a failing step
    are not considered, as the queue they inherit is the failure's). A closed-loop sweep steps the
    user count instead; its knee is also given in users.
  * ratelimit: a token bucket of capacity C = limit per minute refilling at limit/60 per second
    admits at most C + limit/60 * T over a window of T seconds starting full, so
    allowed = burst + rate * T with T = last send - first send of that tenant; admitted / allowed
    must be within the tolerance (2%) of 1 for the binding limit, and above 1 + tolerance flags a
    limit that is looser than configured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loadtest.rows import Row
from loadtest.runconfig import RunConfig
from loadtest.stats import Slo, Summary, achieved_rate, by, summarize


@dataclass(frozen=True)
class StepResult:
    step: int
    offered_rps: float  # open loop: the step's rate; closed loop: requests sent / step length
    achieved_rps: float
    summary: Summary
    meets_slo: bool
    users: int | None = None  # closed-loop sweep: the step's user count


@dataclass(frozen=True)
class Knee:
    rate_rps: float | None  # None: even the first step broke the SLO
    first_breaking_rps: float | None
    p95_ttft_s: float | None
    p95_tpot_s: float | None
    users: int | None = None  # closed-loop sweep: the knee's user count


def _meets(s: Summary, slo: Slo) -> bool:
    meets = s.ok > 0 and s.errors == 0
    if slo.ttft_s is not None:
        meets = meets and s.ttft.p95 <= slo.ttft_s
    if slo.tpot_s is not None:
        meets = meets and not (s.tpot.p95 > slo.tpot_s)
    return meets


def sweep_steps(rows: Sequence[Row], config: RunConfig, slo: Slo) -> list[StepResult]:
    """Per step of an open-loop rate ladder, or of a closed-loop user ladder (config.user_steps)."""
    stream = config.streams[0]
    per_step = by(rows, "step")
    out = []
    if config.user_steps:
        step_s = config.duration_s / len(config.user_steps)
        for i, users in enumerate(config.user_steps):
            step_rows = per_step.get(i, [])
            s = summarize(step_rows, slo, span=step_s)
            rate = achieved_rate(step_rows, step_s)
            out.append(StepResult(i, rate, rate, s, _meets(s, slo), users))
        return out
    for i, st in enumerate(stream.steps):
        step_rows = per_step.get(i, [])
        s = summarize(step_rows, slo, span=st.duration_s)
        out.append(StepResult(i, st.rate_rps, achieved_rate(step_rows, st.duration_s), s, _meets(s, slo)))
    return out


def knee(steps: Sequence[StepResult]) -> Knee:
    best: StepResult | None = None
    breaking = None
    for s in steps:
        if not s.meets_slo:
            breaking = s.offered_rps
            break
        best = s
    if best is None:
        return Knee(None, breaking, None, None)
    return Knee(best.offered_rps, breaking, best.summary.ttft.p95, best.summary.tpot.p95, best.users)


@dataclass(frozen=True)
class LimitCheck:
    tenant: str
    kind: str  # "requests" | "tokens"
    limit_per_min: float
    burst: float
    window_s: float
    admitted: float
    allowed: float
    ratio: float
    offered: float
    verdict: str  # "holds" | "looser than configured" | "under-admits" | "not binding"


def ratelimit_checks(
    rows: Sequence[Row], limits: Mapping[str, Mapping[str, float]], tolerance: float = 0.02
) -> list[LimitCheck]:
    """One check per tenant and configured limit ('rpm', 'tpm'; optional 'burst_rpm'/'burst_tpm')."""
    out = []
    for tenant, tenant_rows in by(rows, "tenant").items():
        lim = limits.get(str(tenant))
        if not lim or not tenant_rows:
            continue
        first = min(r.start_unix_s for r in tenant_rows)
        last = max(r.start_unix_s for r in tenant_rows)
        window = last - first
        ok = [r for r in tenant_rows if r.ok]
        for kind, key, admitted, offered in (
            ("requests", "rpm", float(len(ok)), float(len(tenant_rows))),
            ("tokens", "tpm", float(sum(r.prompt_tokens + r.completion_tokens for r in ok)), math.nan),
        ):
            if key not in lim:
                continue
            per_min = float(lim[key])
            burst = float(lim.get(f"burst_{key}", per_min))
            allowed = burst + per_min / 60.0 * window
            ratio = admitted / allowed if allowed > 0 else math.inf
            rejected = len(tenant_rows) - len(ok)
            if ratio > 1 + tolerance:
                verdict = "looser than configured"
            elif rejected == 0:
                verdict = "not binding"
            elif ratio < 1 - tolerance:
                verdict = "under-admits"
            else:
                verdict = "holds"
            out.append(
                LimitCheck(
                    str(tenant), kind, per_min, burst, window, admitted, allowed, ratio, offered, verdict
                )
            )
    return out


def binding_verdicts(checks: Sequence[LimitCheck]) -> dict[str, str]:
    """Per tenant: the verdict of its binding limit (the one with the highest admitted/allowed)."""
    out: dict[str, LimitCheck] = {}
    for c in checks:
        if c.tenant not in out or c.ratio > out[c.tenant].ratio:
            out[c.tenant] = c
    return {t: c.verdict for t, c in out.items()}
