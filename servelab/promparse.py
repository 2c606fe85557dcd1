"""Prometheus text, read the way Prometheus itself would: counter deltas and histogram_quantile.

`servelab top` and the scenarios scrape `/metrics` twice and want what a dashboard shows over
that window: a rate is the counter's increase divided by the seconds between the scrapes, and a
percentile is `histogram_quantile(q, rate(x_bucket[w]))`, interpolated linearly inside the bucket
that holds the q-th observation of the window, exactly as Prometheus does (so the numbers match a
Grafana panel over the same window). Quantiles over the cumulative histogram would mix in every
request since the process started and never show a spike.

A counter that went down between scrapes was reset (its process restarted); its increase is
then its new value, as Prometheus's `increase()` assumes.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Snapshot:
    """Every sample of one scrape, keyed by (sample name, labels); `t` is when it was taken."""

    t: float
    samples: Mapping[tuple[str, Labels], float] = field(default_factory=dict)
    ok: bool = True
    error: str = ""

    def value(self, name: str, **match: str) -> float:
        """Sum of the samples called `name` whose labels include `match` (0 if none)."""
        return sum(v for (n, labels), v in self.samples.items() if n == name and _matches(labels, match))

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.samples)

    def by_label(self, name: str, label: str, **match: str) -> dict[str, float]:
        """Samples called `name` summed per value of `label`."""
        out: dict[str, float] = defaultdict(float)
        for (n, labels), v in self.samples.items():
            if n == name and _matches(labels, match):
                out[dict(labels).get(label, "")] += v
        return dict(out)


def _matches(labels: Labels, match: Mapping[str, str]) -> bool:
    if not match:
        return True
    d = dict(labels)
    return all(d.get(k) == v for k, v in match.items())


def parse(text: str, t: float | None = None) -> Snapshot:
    """A Snapshot of Prometheus exposition text."""
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return Snapshot(t=time.monotonic() if t is None else t, samples=samples)


def scrape(url: str, timeout_s: float = 2.0) -> Snapshot:
    """GET `url` (a /metrics endpoint); a failed scrape is a Snapshot with ok=False and the reason."""
    t = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return parse(resp.read().decode(), t)
    except Exception as exc:  # a down target is data for the caller, not an error
        return Snapshot(t=t, ok=False, error=f"{type(exc).__name__}: {exc}")


def increase(prev: Snapshot, cur: Snapshot, name: str, **match: str) -> float:
    """How much counter `name` (summed over matching series) grew between two scrapes."""
    keys = {k for k in cur.samples if k[0] == name and _matches(k[1], match)}
    total = 0.0
    for key in keys:
        now, before = cur.samples[key], prev.samples.get(key, 0.0)
        total += now - before if now >= before else now
    return total


def increase_by(prev: Snapshot, cur: Snapshot, name: str, label: str, **match: str) -> dict[str, float]:
    """`increase` per value of `label`."""
    values = {dict(k[1]).get(label, "") for k in cur.samples if k[0] == name and _matches(k[1], match)}
    return {v: increase(prev, cur, name, **{**match, label: v}) for v in sorted(values)}


def rate(prev: Snapshot, cur: Snapshot, name: str, **match: str) -> float:
    """Per-second increase of counter `name` between two scrapes."""
    dt = cur.t - prev.t
    return increase(prev, cur, name, **match) / dt if dt > 0 else 0.0


def bucket_increase(prev: Snapshot, cur: Snapshot, histogram: str, **match: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count increase) per bucket of `histogram`, summed over series."""
    per_le: dict[float, float] = defaultdict(float)
    name = histogram + "_bucket"
    les = {dict(k[1])["le"] for k in cur.samples if k[0] == name and _matches(k[1], match)}
    for le in les:
        per_le[float(le)] += increase(prev, cur, name, **{**match, "le": le})
    return sorted(per_le.items())


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile over (upper bound, cumulative count) pairs.

    NaN when the window has no observations. Linear interpolation inside the bucket that holds
    rank q*total, the lowest bucket starting at 0; a rank in the +Inf bucket returns the highest
    finite bound (Prometheus does the same: it cannot know more).
    """
    b = sorted(buckets)
    if not b or b[-1][0] != math.inf:
        return math.nan
    total = b[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in b:
        if count >= rank:
            if bound == math.inf:
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def window_quantile(q: float, prev: Snapshot, cur: Snapshot, histogram: str, **match: str) -> float:
    """The q-quantile of `histogram`'s observations made between two scrapes."""
    return histogram_quantile(q, bucket_increase(prev, cur, histogram, **match))
