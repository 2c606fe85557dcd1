"""SLO-gated rollout: ramp a canary version's weight in steps, compare it with the baseline at
each step, promote it at the end or roll it back by itself.

A rollout is a JSON document in Redis (`rollout:<alias>`), written by the admin API
(`servelab rollout start|promote|abort`) and advanced by one controller. Every gateway replica
runs the controller loop, but for each alias only the replica holding its lease
`rollout:leader:<alias>` (SET NX PX, renewed each tick) acts, so a dead leader is replaced within
the lease time. A replica whose config lacks one of the two versions (replicas in the middle of
a config change) never takes the lease, and ignores stored weights that name no version of its.

At each step the controller sets the weights (canary = the step's percent, baseline = the rest;
every replica applies them through versions.py's pub/sub), waits `window_s`, and then compares
the two versions over that window using the gateway's own metrics labelled by version:
error rate (5xx share of requests), p95 time to first token and p95 time per output token
(streaming requests; the p95 is read off the histogram buckets the way Prometheus'
`histogram_quantile` does). The canary fails the step when it is worse than the baseline beyond
the thresholds; then the weights go back to 100% baseline and the rollout is `aborted`, with the
numbers in the audit log (audit.py). A step with fewer than `min_requests` per version keeps
waiting rather than deciding on noise.

The window covers the whole fleet: while a rollout runs, every replica that has both versions
writes its cumulative per-version counts to the hash `rollout:counts:<alias>` each tick (off the
request path: one HSET per tick), and the leader sums the differences over all replicas. A
replica first seen during a window counts from where it was first seen; one whose counters went
down (it restarted) counts from zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from gateway import audit
from gateway.versions import LiveVersions

log = logging.getLogger("gateway.rollout")

LEADER_KEY = "rollout:leader:"  # + alias: one leader per rolled-out model
COUNTS_KEY = "rollout:counts:"  # + alias: hash replica id -> its cumulative counts (JSON)
COUNTS_TTL_S = 60.0
TICK_S = 0.5
LEADER_TTL_S = 5.0

Status = Literal["running", "promoted", "aborted"]


def rollout_key(model: str) -> str:
    return f"rollout:{model}"


@dataclass(frozen=True)
class Thresholds:
    """How much worse than the baseline a canary may be before it is rolled back."""

    max_error_rate_increase: float = 0.02  # absolute: 0.02 = 2 percentage points
    max_latency_ratio: float = 1.5  # canary p95 over baseline p95 ...
    min_latency_increase_s: float = 0.05  # ... and at least this much slower (histogram buckets are coarse)
    min_requests: int = 20  # per version and window before any decision


@dataclass(frozen=True)
class Rollout:
    model: str
    baseline: str
    canary: str
    steps: tuple[float, ...]  # canary percent at each step, increasing, each below 100
    window_s: float
    thresholds: Thresholds
    status: Status = "running"
    step: int = 0
    reason: str = ""
    started_ms: int = 0
    updated_ms: int = 0

    @property
    def canary_percent(self) -> float:
        if self.status == "promoted":
            return 100.0
        if self.status == "aborted":
            return 0.0
        return self.steps[self.step]

    def weights(self) -> dict[str, float]:
        p = self.canary_percent
        return {self.baseline: 100.0 - p, self.canary: p}

    def to_json(self) -> str:
        d = asdict(self)
        d["steps"] = list(self.steps)
        return json.dumps(d)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Rollout:
        d = json.loads(raw)
        d["steps"] = tuple(d["steps"])
        d["thresholds"] = Thresholds(**d["thresholds"])
        return cls(**d)


# ---- reading the version metrics ------------------------------------------------------------


@dataclass
class VersionCounts:
    """Cumulative counters of one (alias, version) at one moment, read from the registry."""

    requests: float = 0.0
    errors: float = 0.0
    ttft: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    tpot: dict[float, float] = field(default_factory=dict)

    def minus(self, old: VersionCounts) -> VersionCounts:
        if self.requests < old.requests:
            return self  # the counters were reset (the replica restarted): all of it is new
        return VersionCounts(
            self.requests - old.requests,
            self.errors - old.errors,
            {le: c - old.ttft.get(le, 0.0) for le, c in self.ttft.items()},
            {le: c - old.tpot.get(le, 0.0) for le, c in self.tpot.items()},
        )

    def plus(self, other: VersionCounts) -> VersionCounts:
        def add(a: dict[float, float], b: dict[float, float]) -> dict[float, float]:
            return {le: a.get(le, 0.0) + b.get(le, 0.0) for le in a.keys() | b.keys()}

        return VersionCounts(
            self.requests + other.requests,
            self.errors + other.errors,
            add(self.ttft, other.ttft),
            add(self.tpot, other.tpot),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "ttft": [[str(le), c] for le, c in self.ttft.items()],
            "tpot": [[str(le), c] for le, c in self.tpot.items()],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VersionCounts:
        return cls(
            float(d["requests"]),
            float(d["errors"]),
            {float(le): float(c) for le, c in d["ttft"]},
            {float(le): float(c) for le, c in d["tpot"]},
        )


Fleet = dict[str, dict[str, VersionCounts]]  # replica id -> version -> cumulative counts


def window_counts(before: Fleet, after: Fleet, version: str) -> VersionCounts:
    """One version's counts over a window, summed over replicas (a new replica counts from zero)."""
    total = VersionCounts()
    empty = VersionCounts()
    for replica, versions in after.items():
        now = versions.get(version, empty)
        total = total.plus(now.minus(before.get(replica, {}).get(version, empty)))
    return total


def read_counts(registry: CollectorRegistry, model: str) -> dict[str, VersionCounts]:
    """Per version of `model`: requests, 5xx answers and the TTFT/TPOT bucket counts."""
    out: dict[str, VersionCounts] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.labels.get("model") != model or "version" not in s.labels:
                continue
            c = out.setdefault(s.labels["version"], VersionCounts())
            if s.name == "servelab_gateway_version_requests_total":
                c.requests += s.value
                if s.labels.get("status", "").startswith("5"):
                    c.errors += s.value
            elif s.name == "servelab_gateway_version_time_to_first_token_seconds_bucket":
                c.ttft[float(s.labels["le"])] = s.value
            elif s.name == "servelab_gateway_version_time_per_output_token_seconds_bucket":
                c.tpot[float(s.labels["le"])] = s.value
    return out


def p95(buckets: dict[float, float]) -> tuple[float, int]:
    """(p95 seconds, sample count) from cumulative bucket counts, as `histogram_quantile` does."""
    if not buckets:
        return math.nan, 0
    les = sorted(buckets)
    total = buckets[les[-1]]
    if total <= 0:
        return math.nan, 0
    rank = 0.95 * total
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = buckets[le]
        if c >= rank:
            if math.isinf(le):
                return prev_le, int(total)  # beyond the last finite bucket: its bound, as Prometheus does
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12), int(total)
        prev_le, prev_c = le, c
    return prev_le, int(total)


@dataclass(frozen=True)
class WindowStats:
    requests: int
    error_rate: float
    p95_ttft_s: float
    ttft_samples: int
    p95_tpot_s: float
    tpot_samples: int

    @classmethod
    def of(cls, c: VersionCounts) -> WindowStats:
        ttft, nt = p95(c.ttft)
        tpot, np_ = p95(c.tpot)
        n = int(c.requests)
        return cls(n, (c.errors / n) if n else 0.0, ttft, nt, tpot, np_)

    def public(self) -> dict[str, Any]:
        def r(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 4)

        return {
            "requests": self.requests,
            "error_rate": round(self.error_rate, 4),
            "p95_ttft_s": r(self.p95_ttft_s),
            "ttft_samples": self.ttft_samples,
            "p95_tpot_s": r(self.p95_tpot_s),
            "tpot_samples": self.tpot_samples,
        }


@dataclass(frozen=True)
class Verdict:
    decided: bool  # False: not enough requests yet
    passed: bool
    reasons: tuple[str, ...]


def judge(t: Thresholds, canary: WindowStats, baseline: WindowStats) -> Verdict:
    """Compare one window. Errors are judged as soon as the canary has enough requests (a
    failing canary must not wait for the baseline); latency needs enough samples on both."""
    reasons: list[str] = []
    if canary.requests < t.min_requests:
        return Verdict(False, False, (f"canary has {canary.requests} of {t.min_requests} requests",))
    if canary.error_rate - baseline.error_rate > t.max_error_rate_increase:
        reasons.append(
            f"error rate {canary.error_rate:.1%} vs baseline {baseline.error_rate:.1%} "
            f"(allowed +{t.max_error_rate_increase:.1%})"
        )
    if reasons:
        return Verdict(True, False, tuple(reasons))
    if baseline.requests < t.min_requests:
        return Verdict(False, False, (f"baseline has {baseline.requests} of {t.min_requests} requests",))
    for name, c, b, nc, nb in (
        ("p95 TTFT", canary.p95_ttft_s, baseline.p95_ttft_s, canary.ttft_samples, baseline.ttft_samples),
        ("p95 TPOT", canary.p95_tpot_s, baseline.p95_tpot_s, canary.tpot_samples, baseline.tpot_samples),
    ):
        if nc < t.min_requests or nb < t.min_requests:
            continue  # no streaming traffic on one side: nothing to compare
        if c > b * t.max_latency_ratio and c - b > t.min_latency_increase_s:
            reasons.append(
                f"{name} {c * 1000:.0f} ms vs baseline {b * 1000:.0f} ms "
                f"(allowed x{t.max_latency_ratio:g} and +{t.min_latency_increase_s * 1000:.0f} ms)"
            )
    return Verdict(True, not reasons, tuple(reasons))


# ---- the store and the controller ------------------------------------------------------------


async def load(redis: Redis, model: str) -> Rollout | None:
    raw = await redis.get(rollout_key(model))
    return Rollout.from_json(raw) if raw else None


async def save(redis: Redis, r: Rollout) -> None:
    seconds, micros = await redis.time()
    r = replace(r, updated_ms=int(seconds) * 1000 + int(micros) // 1000)
    await redis.set(rollout_key(r.model), r.to_json())


class RolloutController:
    """Advances running rollouts; `tick()` is one pass, `run()` loops while holding the lease."""

    def __init__(
        self,
        redis: Redis,
        versions: LiveVersions,
        registry: CollectorRegistry,
        models: list[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._versions = versions
        self._registry = registry
        # A rollout moves weight between two versions: an alias with one cannot have one, and
        # ticking it anyway cost an idle gateway a Redis read per alias every TICK_S.
        self._models = [m for m in models if len(versions.versions(m)) > 1]
        self._clock = clock
        self._me = os.urandom(8).hex()
        # alias -> (step index the window belongs to, window start, fleet counts at window start)
        self._marks: dict[str, tuple[int, float, Fleet]] = {}

    async def _lead(self, model: str) -> bool:
        """Take or renew this model's leader lease; True while this replica leads it."""
        key, ttl_ms = LEADER_KEY + model, int(LEADER_TTL_S * 1000)
        if await self._redis.set(key, self._me, nx=True, px=ttl_ms):
            return True
        async with self._redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                holder = await pipe.get(key)
                if holder is None or _text(holder) != self._me:
                    return False
                pipe.multi()
                pipe.pexpire(key, ttl_ms)
                await pipe.execute()
                return True
            except WatchError:
                return False

    async def tick(self) -> None:
        for model in self._models:
            r = await load(self._redis, model)
            if r is None or r.status != "running":
                self._marks.pop(model, None)
                continue
            known = self._versions.versions(model)
            if r.canary not in known or r.baseline not in known:
                continue  # this replica's config lacks a version: leave it to one that has both
            await self._publish(model)
            if not await self._lead(model):
                self._marks.pop(model, None)  # a later leadership starts its window afresh
                continue
            await self._advance(r)

    async def _publish(self, model: str) -> None:
        """Share this replica's cumulative per-version counts with the leader (one HSET)."""
        counts = {v: c.to_json() for v, c in read_counts(self._registry, model).items()}
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(COUNTS_KEY + model, self._me, json.dumps(counts))
        pipe.pexpire(COUNTS_KEY + model, int(COUNTS_TTL_S * 1000))
        await pipe.execute()

    async def _fleet(self, model: str) -> Fleet:
        raw: dict[bytes, bytes] = await self._redis.hgetall(COUNTS_KEY + model)  # type: ignore[assignment]
        return {
            k.decode(): {v: VersionCounts.from_json(c) for v, c in json.loads(blob).items()}
            for k, blob in raw.items()
        }

    async def _advance(self, r: Rollout) -> None:
        now = self._clock()
        mark = self._marks.get(r.model)
        if mark is None or mark[0] != r.step:
            # A new step (or a new leader): make sure the weights are the step's, then start the window.
            if self._versions.weights[r.model] != self._versions.check(r.model, r.weights()):
                await self._versions.set_weights(r.model, r.weights())
            self._marks[r.model] = (r.step, now, await self._fleet(r.model))
            return
        _, started, before = mark
        after = await self._fleet(r.model)
        for replica, counts in after.items():
            # A replica first seen after the window began starts counting where it was first seen:
            # its earlier traffic (maybe hours of baseline) is not this window's.
            before.setdefault(replica, counts)
        if now - started < r.window_s:
            return
        canary = WindowStats.of(window_counts(before, after, r.canary))
        baseline = WindowStats.of(window_counts(before, after, r.baseline))
        verdict = judge(r.thresholds, canary, baseline)
        if not verdict.decided:
            return  # keep the window open until both sides have enough requests
        window = {
            "canary": canary.public(),
            "baseline": baseline.public(),
            "window_s": round(now - started, 2),
            "replicas": len(after),
        }
        if not verdict.passed:
            reason = "; ".join(verdict.reasons)
            done = replace(r, status="aborted", reason=reason)
            await self._versions.set_weights(r.model, done.weights())
            await save(self._redis, done)
            await audit.record(
                self._redis, model=r.model, action="abort", actor="slo-gate", reason=reason,
                canary=r.canary, baseline=r.baseline, canary_percent=r.canary_percent,
                weights=done.weights(), window=window,
            )  # fmt: skip
            log.warning(
                "Rollout rolled back by the SLO gate: model=%s canary=%s reason=%s", r.model, r.canary, reason
            )
            self._marks.pop(r.model, None)
            await self._redis.delete(COUNTS_KEY + r.model)
            return
        if r.step + 1 < len(r.steps):
            nxt = replace(r, step=r.step + 1, reason="")
            await self._versions.set_weights(r.model, nxt.weights())
            await save(self._redis, nxt)
            await audit.record(
                self._redis, model=r.model, action="step", actor="slo-gate",
                reason=f"canary within thresholds at {r.canary_percent:g}%; now {nxt.canary_percent:g}%",
                canary=r.canary, baseline=r.baseline, canary_percent=nxt.canary_percent,
                weights=nxt.weights(), window=window,
            )  # fmt: skip
            self._marks[r.model] = (nxt.step, self._clock(), await self._fleet(r.model))
            return
        done = replace(r, status="promoted", reason="passed every step")
        await self._versions.set_weights(r.model, done.weights())
        await save(self._redis, done)
        await audit.record(
            self._redis, model=r.model, action="promote", actor="slo-gate",
            reason=f"canary within thresholds at every step ({', '.join(f'{s:g}%' for s in r.steps)})",
            canary=r.canary, baseline=r.baseline, canary_percent=100.0, weights=done.weights(), window=window,
        )  # fmt: skip
        log.info("Rollout promoted: model=%s canary=%s", r.model, r.canary)
        self._marks.pop(r.model, None)
        await self._redis.delete(COUNTS_KEY + r.model)

    async def run(self) -> None:
        """Loop forever (cancelled by the app's lifespan); Redis errors are retried next tick.

        Returns at once when no alias has two versions (the set is fixed by the config): an idle
        loop still woke the process twice a second."""
        if not self._models:
            return
        failing = False
        while True:
            try:
                await self.tick()
                failing = False
            except RedisError as exc:
                if not failing:
                    log.warning("Rollout controller cannot reach Redis, retrying: error=%s", exc)
                failing = True
            except Exception:  # a bug must not stop every later rollout decision: log, go on
                log.exception("Rollout controller tick failed; retrying next tick")
            await asyncio.sleep(TICK_S)

    async def release(self) -> None:
        """Give up the leases at shutdown so another replica leads at once."""
        with contextlib.suppress(RedisError):
            for model in self._models:
                holder = await self._redis.get(LEADER_KEY + model)
                if holder is not None and _text(holder) == self._me:
                    await self._redis.delete(LEADER_KEY + model)


# ---- operator actions (admin API) --------------------------------------------------------------


class RolloutConflict(ValueError):
    """The action does not fit the rollout's state (e.g. start while one is running)."""


async def start(
    redis: Redis,
    versions: LiveVersions,
    *,
    model: str,
    canary: str,
    baseline: str | None,
    steps: tuple[float, ...],
    window_s: float,
    thresholds: Thresholds,
) -> Rollout:
    """Begin a rollout at its first step; the controller takes it from there."""
    known = versions.versions(model)
    if canary not in known:
        raise RolloutConflict(f"Model {model!r} has no version {canary!r} (versions: {', '.join(known)}).")
    if baseline is None:
        # The baseline is the version carrying the most traffic now, other than the canary.
        current = [(w, v) for v, w in versions.weights[model] if v != canary]
        if not current:
            raise RolloutConflict(f"Model {model!r} has no other version to compare {canary!r} with.")
        baseline = max(current)[1]
    if baseline not in known or baseline == canary:
        raise RolloutConflict(
            f"Baseline {baseline!r} must be another version of {model!r} ({', '.join(known)})."
        )
    if not steps or any(not 0 < s < 100 for s in steps) or list(steps) != sorted(set(steps)):
        raise RolloutConflict(
            "steps must be increasing percentages between 0 and 100 (exclusive), e.g. 5,25,50."
        )
    current_rollout = await load(redis, model)
    if current_rollout is not None and current_rollout.status == "running":
        raise RolloutConflict(
            f"A rollout of {current_rollout.canary!r} on {model!r} is running; promote or abort it first."
        )
    seconds, _ = await redis.time()
    r = Rollout(model, baseline, canary, tuple(steps), window_s, thresholds, started_ms=int(seconds) * 1000)
    await versions.set_weights(model, r.weights())
    await save(redis, r)
    await audit.record(
        redis, model=model, action="start", actor="admin",
        reason=f"canary {canary} against {baseline}, steps {', '.join(f'{s:g}%' for s in steps)}",
        canary=canary, baseline=baseline, canary_percent=r.canary_percent, weights=r.weights(),
        window_s=window_s, thresholds=asdict(thresholds),
    )  # fmt: skip
    return r


async def finish(
    redis: Redis, versions: LiveVersions, *, model: str, status: Literal["promoted", "aborted"], reason: str
) -> Rollout:
    """An operator's promote (canary to 100%) or abort (back to 100% baseline)."""
    r = await load(redis, model)
    if r is None or r.status != "running":
        raise RolloutConflict(f"No rollout is running on {model!r}.")
    done = replace(r, status=status, reason=reason)
    await versions.set_weights(model, done.weights())
    await save(redis, done)
    await audit.record(
        redis, model=model, action="promote" if status == "promoted" else "abort", actor="admin",
        reason=reason, canary=r.canary, baseline=r.baseline, canary_percent=done.canary_percent,
        weights=done.weights(), at_step_percent=r.canary_percent,
    )  # fmt: skip
    return done


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
