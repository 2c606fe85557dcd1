"""Exact percentiles, throughput and goodput from raw rows, defined as vLLM's benchmark defines them.

Percentiles use numpy's default (linear interpolation between closest ranks), as `vllm bench serve`
does, over every row (never over Locust's rounded buckets). ITL pools the chunk gaps of all
requests. Throughput divides by the run's span: first send to last completion (vLLM's
"benchmark duration"). Goodput counts requests per second that succeeded and met every SLO
given (a request with one output token has no TPOT and meets a TPOT SLO, as in vLLM where its
TPOT is 0). Open-loop runs also report the achieved arrival rate (requests sent / time from the
schedule's start to the last actual send) and the send lag (actual minus scheduled send time),
which show whether the load generator kept up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from loadtest.rows import Row

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Dist:
    """Summary of one latency metric, in seconds."""

    n: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Dist:
        arr = np.array([v for v in values if not math.isnan(v)], dtype=float)
        if arr.size == 0:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan, nan)
        p = np.percentile(arr, PERCENTILES)
        return cls(
            int(arr.size),
            float(arr.mean()),
            float(p[0]),
            float(p[1]),
            float(p[2]),
            float(p[3]),
            float(arr.max()),
        )


@dataclass(frozen=True)
class Slo:
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def met(self, r: Row) -> bool:
        if not r.ok:
            return False
        if self.ttft_s is not None and not (r.ttft_s <= self.ttft_s):
            return False
        if self.tpot_s is not None and not math.isnan(r.tpot_s) and r.tpot_s > self.tpot_s:
            return False
        return not (self.e2e_s is not None and r.e2e_s > self.e2e_s)

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.ttft_s, self.tpot_s, self.e2e_s))


@dataclass(frozen=True)
class Summary:
    """Everything the report table shows for one set of rows."""

    requests: int
    ok: int
    errors: int
    rate_limited: int  # HTTP 429
    span_s: float
    request_rps: float
    output_tps: float
    goodput_rps: float | None
    slo_met_fraction: float | None
    prompt_tokens: int
    completion_tokens: int
    ttft: Dist
    tpot: Dist
    itl: Dist
    e2e: Dist
    lag: Dist
    error_kinds: dict[str, int]

    def to_dict(self) -> dict:
        return asdict(self)


def span_s(rows: Sequence[Row]) -> float:
    if not rows:
        return 0.0
    start = min(r.start_unix_s for r in rows)
    end = max(r.start_unix_s + r.e2e_s for r in rows)
    return max(end - start, 1e-9)


def summarize(rows: Sequence[Row], slo: Slo | None = None, span: float | None = None) -> Summary:
    ok = [r for r in rows if r.ok]
    span = span if span is not None else span_s(rows)
    completion = sum(r.completion_tokens for r in ok)
    kinds: dict[str, int] = {}
    for r in rows:
        if not r.ok:
            key = str(r.status) if r.status else r.error.split(":")[0]
            kinds[key] = kinds.get(key, 0) + 1
    goodput = met = None
    if slo is not None and slo.any:
        n_met = sum(1 for r in rows if slo.met(r))
        goodput = n_met / span if span > 0 else 0.0
        met = n_met / len(rows) if rows else 0.0
    return Summary(
        requests=len(rows),
        ok=len(ok),
        errors=len(rows) - len(ok),
        rate_limited=sum(1 for r in rows if r.status == 429),
        span_s=span,
        request_rps=len(ok) / span if span > 0 else 0.0,
        output_tps=completion / span if span > 0 else 0.0,
        goodput_rps=goodput,
        slo_met_fraction=met,
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        completion_tokens=completion,
        ttft=Dist.of(r.ttft_s for r in ok),
        tpot=Dist.of(r.tpot_s for r in ok),
        itl=Dist.of(g for r in ok for g in r.gaps()),
        e2e=Dist.of(r.e2e_s for r in ok),
        lag=Dist.of(r.lag_s for r in rows),
        error_kinds=kinds,
    )


def achieved_rate(rows: Sequence[Row], window_s: float) -> float:
    """Requests sent per second, from the actual send times (open loop).

    The schedule's last arrival falls exactly at the end of its window (arrivals.gaps), so the
    window opened at (last due time - window_s), due = send - lag. Dividing by the time from
    there to the last *actual* send means a generator that falls behind shows a lower rate
    instead of the asked one. For closed loop (lag 0) this is requests / window.
    """
    if not rows or window_s <= 0:
        return 0.0
    opened = max(r.start_unix_s - r.lag_s for r in rows) - window_s
    last_send = max(r.start_unix_s for r in rows)
    return len(rows) / max(last_send - opened, window_s)


def by(rows: Sequence[Row], key: str) -> dict[object, list[Row]]:
    out: dict[object, list[Row]] = {}
    for r in rows:
        out.setdefault(getattr(r, key), []).append(r)
    return out


def time_series(rows: Sequence[Row], bin_s: float = 1.0) -> list[dict[str, float]]:
    """Per time bin (by send time): p50/p95 of TTFT and E2E, and requests started; for plots."""
    if not rows:
        return []
    t0 = min(r.start_unix_s for r in rows)
    bins: dict[int, list[Row]] = {}
    for r in rows:
        bins.setdefault(int((r.start_unix_s - t0) // bin_s), []).append(r)
    out = []
    for b in sorted(bins):
        ok = [r for r in bins[b] if r.ok]
        ttft = Dist.of(r.ttft_s for r in ok)
        e2e = Dist.of(r.e2e_s for r in ok)
        tpot = Dist.of(r.tpot_s for r in ok)
        out.append(
            {
                "t_s": b * bin_s,
                "started": len(bins[b]),
                "ok": len(ok),
                "ttft_p50": ttft.p50,
                "ttft_p95": ttft.p95,
                "tpot_p50": tpot.p50,
                "tpot_p95": tpot.p95,
                "e2e_p50": e2e.p50,
                "e2e_p95": e2e.p95,
            }
        )
    return out
