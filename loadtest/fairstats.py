"""Fairness figures of a multi-tenant run, the same for a live run and an offline simulation.

Input is one record per request (tenant, send time, token counts, outcome, first-token and
finish times, all in seconds from the run's start). Definitions, following Sheng et al. (OSDI
2024) where they define one:

- **service**: weighted tokens, input + 2 x output (the virtual token counter's measure). A
  request's input counts at its first token; its output is spread evenly from first token to
  finish. Service rate per tenant is taken over the measured window [warmup, end].
- **max-min fair share**: water-filling of the measured total service rate over the tenants'
  offered service rates, in proportion to their weights (a tenant asking less than its share
  keeps what it asks; the rest is split among the others). Backlogged tenants ask for infinity.
- **share attainment**: service rate / fair share; **Jain's index** over attainments,
  (sum x)^2 / (n sum x^2), 1 when every tenant gets its max-min share.
- **service difference** between two backlogged tenants: |S_a / w_a - S_b / w_b| per window of
  `window_s`, max and mean over windows (the paper's figure), in weighted tokens.
- **TTFT**: first token - send time. A request never served (shed, refused, timed out, or no
  first token within the run) counts as infinitely slow in the percentiles; `unserved` gives
  their fraction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

OUTPUT_WEIGHT = 2.0


class Record(Protocol):
    """What the figures need of a request (server/sim/tenantfront.py and the live runner both have it)."""

    @property
    def tenant(self) -> str: ...
    @property
    def arrival_s(self) -> float: ...
    @property
    def input_len(self) -> int: ...
    @property
    def output_len(self) -> int: ...
    @property
    def outcome(self) -> str: ...
    @property
    def first_token_s(self) -> float: ...
    @property
    def finish_s(self) -> float: ...


@dataclass(frozen=True)
class TenantStats:
    tenant: str
    weight: float
    requests: int
    unserved: float  # fraction of requests sent in the window that were never served
    ttft_p50_s: float
    ttft_p95_s: float
    offered_rate: float  # weighted tokens/s asked for (inf: backlogged)
    service_rate: float  # weighted tokens/s received in the window
    tokens_per_s: float  # input + output tokens/s received in the window
    fair_share: float  # max-min fair service rate
    attainment: float  # service_rate / fair_share
    shed: int
    timed_out: int


@dataclass(frozen=True)
class FairnessReport:
    tenants: dict[str, TenantStats]
    jain: float
    throughput_tokens_per_s: float  # input + output tokens/s over the window, all tenants
    service_diff_max: float | None
    service_diff_mean: float | None
    windows: list[float]  # window start times
    service_by_window: dict[str, list[float]]  # weighted tokens/s per window, per tenant
    ttfts: dict[str, list[float]]  # served requests' TTFTs per tenant (for CDF plots)


def max_min_shares(
    demand: Mapping[str, float], weight: Mapping[str, float], capacity: float
) -> dict[str, float]:
    """Weighted water-filling of `capacity` over `demand` (inf allowed)."""
    share = {t: 0.0 for t in demand}
    left = dict(demand)
    cap = capacity
    while left and cap > 1e-12:
        wsum = sum(weight[t] for t in left)
        fill = {t: cap * weight[t] / wsum for t in left}
        sated = [t for t in left if left[t] - share[t] <= fill[t]]
        if not sated:
            for t in left:
                share[t] += fill[t]
            break
        for t in sated:
            cap -= left[t] - share[t]
            share[t] = left[t]
            del left[t]
    return share


def jain(values: Iterable[float]) -> float:
    x = np.array(list(values), dtype=float)
    return float(x.sum() ** 2 / (x.size * (x * x).sum())) if x.size and (x * x).sum() > 0 else float("nan")


def _service_in(rec: Record, lo: float, hi: float) -> tuple[float, float]:
    """(weighted service, plain tokens) of `rec` that fell inside [lo, hi)."""
    f, e = rec.first_token_s, rec.finish_s
    if not math.isfinite(f):
        return 0.0, 0.0
    w = 0.0
    tok = 0.0
    if lo <= f < hi:
        w += rec.input_len
        tok += rec.input_len
    if math.isfinite(e) and rec.output_len > 0:
        span = e - f
        # output tokens are spread evenly between the first token and the finish
        frac = (1.0 if lo <= e < hi else 0.0) if span <= 0 else max(0.0, min(e, hi) - max(f, lo)) / span
        w += OUTPUT_WEIGHT * rec.output_len * frac
        tok += rec.output_len * frac
    return w, tok


def analyse(
    records: Sequence[Record],
    *,
    weights: Mapping[str, float],
    end_s: float,
    warmup_s: float = 0.0,
    window_s: float = 5.0,
    backlogged: Iterable[str] = (),
    client_timeout_s: float = math.inf,
) -> FairnessReport:
    """The report over [warmup_s, end_s); `backlogged` tenants have infinite demand."""
    span = end_s - warmup_s
    if span <= 0:
        raise ValueError("end_s must be after warmup_s")
    backlogged = set(backlogged)
    tenants = sorted(weights)
    by_tenant: dict[str, list[Record]] = {t: [] for t in tenants}
    for r in records:
        by_tenant.setdefault(r.tenant, []).append(r)
    edges = np.arange(warmup_s, end_s - 1e-9, window_s)
    per_window: dict[str, list[float]] = {}
    service: dict[str, float] = {}
    tokens: dict[str, float] = {}
    demand: dict[str, float] = {}
    for t in tenants:
        recs = by_tenant[t]
        per_window[t] = []
        for lo in edges.tolist():
            hi = min(lo + window_s, end_s)
            per_window[t].append(sum(_service_in(r, lo, hi)[0] for r in recs) / (hi - lo))
        both = [_service_in(r, warmup_s, end_s) for r in recs]
        service[t] = sum(w for w, _ in both) / span
        tokens[t] = sum(k for _, k in both) / span
        sent = [r for r in recs if warmup_s <= r.arrival_s < end_s]
        demand[t] = (
            math.inf
            if t in backlogged
            else sum(r.input_len + OUTPUT_WEIGHT * r.output_len for r in sent) / span
        )
    capacity = sum(service.values())
    fair = max_min_shares(demand, weights, capacity)
    stats: dict[str, TenantStats] = {}
    ttfts: dict[str, list[float]] = {}
    for t in tenants:
        sent = [r for r in by_tenant[t] if warmup_s <= r.arrival_s < end_s]
        tt = np.array(
            [
                r.first_token_s - r.arrival_s
                if r.outcome == "ok"
                and math.isfinite(r.first_token_s)
                and r.first_token_s - r.arrival_s <= client_timeout_s
                else math.inf
                for r in sent
            ]
        )
        served = tt[np.isfinite(tt)]
        ttfts[t] = sorted(served.tolist())
        p50, p95 = (_pct(tt, 50), _pct(tt, 95)) if tt.size else (math.nan, math.nan)
        stats[t] = TenantStats(
            tenant=t,
            weight=weights[t],
            requests=len(sent),
            unserved=float((~np.isfinite(tt)).mean()) if tt.size else 0.0,
            ttft_p50_s=p50,
            ttft_p95_s=p95,
            offered_rate=demand[t],
            service_rate=service[t],
            tokens_per_s=tokens[t],
            fair_share=fair[t],
            attainment=service[t] / fair[t] if fair[t] > 0 else math.nan,
            shed=sum(1 for r in sent if r.outcome in ("shed", "refused")),
            timed_out=sum(1 for r in sent if r.outcome == "timeout"),
        )
    diffs: list[float] = []
    bl = sorted(backlogged & set(tenants))
    for i, a in enumerate(bl):
        for b in bl[i + 1 :]:
            for k in range(len(edges)):
                diffs.append(abs(per_window[a][k] / weights[a] - per_window[b][k] / weights[b]) * window_s)
    return FairnessReport(
        tenants=stats,
        jain=jain(s.attainment for s in stats.values()),
        throughput_tokens_per_s=sum(tokens.values()),
        service_diff_max=max(diffs) if diffs else None,
        service_diff_mean=float(np.mean(diffs)) if diffs else None,
        windows=[float(x) for x in edges],
        service_by_window=per_window,
        ttfts=ttfts,
    )


def _pct(x: np.ndarray, p: float) -> float:
    """Percentile where inf (never served) sorts last; inf if the rank lands on one."""
    s = np.sort(x)
    rank = p / 100 * (s.size - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    if not math.isfinite(s[hi]):
        return math.inf
    return float(s[lo] + (s[hi] - s[lo]) * (rank - lo))


def pooled_ttft_pct(reports: Iterable[FairnessReport], prefix: str, p: float) -> float:
    """The p-th percentile of TTFT over every request of the tenants named `prefix`*, in all
    `reports` together (unserved ones count as infinitely slow, as in `TenantStats`).

    Tenants with the same rates and lengths (workload A's steady ones) draw from one distribution;
    pooling them, and several runs, estimates its percentiles from all their requests instead of
    taking the worst of a few noisy per-tenant estimates.
    """
    values: list[float] = []
    for rep in reports:
        for t, st in rep.tenants.items():
            if t.startswith(prefix):
                served = rep.ttfts[t]
                values += served + [math.inf] * (st.requests - len(served))
    return _pct(np.array(values), p) if values else math.nan
