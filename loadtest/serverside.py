"""The backend's own view of the run: /metrics scraped before and after, beside the client's.

A load generator can be wrong in ways it cannot see (lost requests, a wrong token count, a
clock stopped at the headers). The backend's counters are an independent witness: the prompt
and generation token totals that vLLM (and our simulator, under the same names) counts must
equal the sums of the `usage` blocks the client received, exactly; the client's TTFT
percentiles must fall in (or, by the network and gateway time, just above) the histogram bucket
that holds the server's own percentile (and likewise for end-to-end latency). Names tried in
order: vLLM's, then the fast upstream's (`loadtest/bench/upstream.py`), which has counters only.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from prometheus_client.parser import text_string_to_metric_families

PROMPT_COUNTERS = ("vllm:prompt_tokens_total", "upstream_prompt_tokens_total")
GENERATION_COUNTERS = ("vllm:generation_tokens_total", "upstream_completion_tokens_total")
REQUEST_COUNTERS = ("vllm:request_success_total", "upstream_requests_total")
TTFT_HISTOGRAM = "vllm:time_to_first_token_seconds"
E2E_HISTOGRAM = "vllm:e2e_request_latency_seconds"


@dataclass(frozen=True)
class Scrape:
    """Sample name -> value summed over label sets; histogram buckets as name -> {le: count}."""

    values: dict[str, float]
    buckets: dict[str, dict[float, float]]


def parse(text: str) -> Scrape:
    values: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_bucket") and "le" in s.labels:
                b = buckets.setdefault(s.name[: -len("_bucket")], {})
                le = float(s.labels["le"])
                b[le] = b.get(le, 0.0) + s.value
            else:
                values[s.name] = values.get(s.name, 0.0) + s.value
    return Scrape(values, buckets)


def scrape(url: str, timeout_s: float = 5.0) -> Scrape:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return parse(resp.read().decode())


def combine(scrapes: Sequence[Scrape]) -> Scrape:
    """Several backends seen as one (sums of counters and buckets)."""
    values: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    for s in scrapes:
        for k, v in s.values.items():
            values[k] = values.get(k, 0.0) + v
        for name, b in s.buckets.items():
            dst = buckets.setdefault(name, {})
            for le, c in b.items():
                dst[le] = dst.get(le, 0.0) + c
    return Scrape(values, buckets)


def delta(before: Scrape, after: Scrape) -> Scrape:
    values = {k: v - before.values.get(k, 0.0) for k, v in after.values.items()}
    buckets = {
        name: {le: c - before.buckets.get(name, {}).get(le, 0.0) for le, c in b.items()}
        for name, b in after.buckets.items()
    }
    return Scrape(values, buckets)


def _first(values: Mapping[str, float], names: Sequence[str]) -> tuple[str, float] | None:
    for n in names:
        if n in values:
            return n, values[n]
    return None


def bucket_of_quantile(buckets: Mapping[float, float], q: float) -> tuple[float, float] | None:
    """(lower, upper] bucket bounds that hold the q-quantile of a cumulative histogram."""
    if not buckets:
        return None
    les = sorted(buckets)
    total = buckets[les[-1]]
    if total <= 0:
        return None
    target = q * total
    lower = 0.0
    for le in les:
        if buckets[le] >= target:
            return lower, le
        lower = le
    return lower, math.inf


@dataclass(frozen=True)
class CrossCheck:
    source_names: dict[str, str]
    server_prompt_tokens: float | None
    server_generation_tokens: float | None
    server_requests: float | None
    client_prompt_tokens: int
    client_completion_tokens: int
    client_ok_requests: int
    tokens_match: bool | None
    ttft_buckets: dict[str, dict[str, float | bool | None]]
    e2e_buckets: dict[str, dict[str, float | bool | None]]

    def to_dict(self) -> dict:
        return asdict(self)


def cross_check(
    d: Scrape,
    client_prompt: int,
    client_completion: int,
    client_ok: int,
    client_ttft: Mapping[str, float],
    client_e2e: Mapping[str, float] | None = None,
) -> CrossCheck:
    """Compare the server's deltas with the client's sums; client_* map 'p50'/'p95' to seconds."""
    names: dict[str, str] = {}
    p = _first(d.values, PROMPT_COUNTERS)
    g = _first(d.values, GENERATION_COUNTERS)
    r = _first(d.values, REQUEST_COUNTERS)
    for label, hit in (("prompt", p), ("generation", g), ("requests", r)):
        if hit:
            names[label] = hit[0]
    match = None
    if p is not None and g is not None:
        match = round(p[1]) == client_prompt and round(g[1]) == client_completion
    ttft = _bucket_checks(d, TTFT_HISTOGRAM, client_ttft, names, "ttft_histogram")
    e2e = _bucket_checks(d, E2E_HISTOGRAM, client_e2e or {}, names, "e2e_histogram")
    return CrossCheck(
        source_names=names,
        server_prompt_tokens=p[1] if p else None,
        server_generation_tokens=g[1] if g else None,
        server_requests=r[1] if r else None,
        client_prompt_tokens=client_prompt,
        client_completion_tokens=client_completion,
        client_ok_requests=client_ok,
        tokens_match=match,
        ttft_buckets=ttft,
        e2e_buckets=e2e,
    )


def _bucket_checks(
    d: Scrape, name: str, client: Mapping[str, float], names: dict[str, str], label: str
) -> dict[str, dict[str, float | bool | None]]:
    """Per p50/p95: the server histogram's bucket that holds the quantile, and where the client's sits."""
    hist = d.buckets.get(name)
    out: dict[str, dict[str, float | bool | None]] = {}
    if not hist:
        return out
    names[label] = name
    for key, q in (("p50", 0.50), ("p95", 0.95)):
        bounds = bucket_of_quantile(hist, q)
        if bounds is None:
            continue
        lo, hi = bounds
        value = client.get(key, math.nan)
        # The client sees the server's latency plus network (and gateway) time, so its percentile
        # may sit in the server's bucket or above it, never below the bucket's lower bound.
        out[key] = {
            "server_bucket_lo_s": lo,
            "server_bucket_hi_s": hi,
            "client_s": value,
            "within_bucket": lo <= value <= hi,
            "not_below_bucket": value >= lo,
        }
    return out
