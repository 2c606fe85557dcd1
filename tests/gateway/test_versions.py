"""Alias -> version assignment (pure functions) and the rollout gate's arithmetic, unit level."""

from __future__ import annotations

import math

import pytest

from gateway.rollout import Thresholds, VersionCounts, WindowStats, judge, p95
from gateway.versions import bucket, choose, split, sticky_id

MODEL = "mixtral-8x7b"


@pytest.mark.parametrize("weights", [(("v1", 90.0), ("v2", 10.0)), (("a", 50.0), ("b", 30.0), ("c", 20.0))])
def test_weighted_split_lands_within_two_points_over_10000_requests(
    weights: tuple[tuple[str, float], ...],
) -> None:
    ids = [f"conversation-{i}" for i in range(10_000)]
    counts = split(weights, ids, MODEL)
    total = sum(w for _, w in weights)
    for version, w in weights:
        share = counts[version] / len(ids)
        assert abs(share - w / total) <= 0.02, (version, share, counts)


def test_assignment_is_sticky_and_the_same_on_every_call() -> None:
    weights = (("v1", 90.0), ("v2", 10.0))
    first = {i: choose(weights, bucket(MODEL, f"user-{i}")) for i in range(2_000)}
    again = {i: choose(weights, bucket(MODEL, f"user-{i}")) for i in range(2_000)}
    assert first == again
    assert set(first.values()) == {"v1", "v2"}


def test_a_ramp_only_moves_conversations_towards_the_canary() -> None:
    """Raising the canary's weight never sends a conversation back to the baseline."""
    ids = [f"c{i}" for i in range(5_000)]
    previous: dict[str, str] = {}
    for pct in (5.0, 25.0, 50.0, 100.0):
        weights = (("stable", 100.0 - pct), ("canary", pct))
        now = {i: choose(weights, bucket(MODEL, i)) for i in ids}
        for i, v in previous.items():
            if v == "canary":
                assert now[i] == "canary"
        previous = now
    assert set(previous.values()) == {"canary"}


def test_zero_weight_version_never_gets_traffic() -> None:
    weights = (("v1", 0.0), ("v2", 1.0), ("v3", 0.0))
    assert {choose(weights, bucket(MODEL, str(i))) for i in range(1_000)} == {"v2"}


def test_sticky_id_prefers_header_then_user_then_key() -> None:
    assert sticky_id("conv-1", "alice", "key1") == "c:conv-1"
    assert sticky_id(None, "alice", "key1") == "u:alice"
    assert sticky_id(None, None, "key1") == "k:key1"
    assert sticky_id("", 42, "key1") == "k:key1"


def test_buckets_differ_between_aliases() -> None:
    """Each alias hashes on its own: a conversation on one canary is not always on every canary."""
    same = sum(bucket("a", str(i)) < 0.1 and bucket("b", str(i)) < 0.1 for i in range(10_000))
    assert same < 300  # independent: about 1% of 10,000; correlated would be about 10%


def test_p95_reads_histogram_buckets_like_prometheus() -> None:
    buckets = {0.1: 50.0, 0.25: 90.0, 0.5: 100.0, math.inf: 100.0}
    value, n = p95(buckets)
    assert n == 100
    assert value == pytest.approx(0.25 + 0.25 * (95 - 90) / 10)
    assert math.isnan(p95({})[0])


def _stats(
    n: int, err: float = 0.0, ttft: float = 0.05, tpot: float = 0.02, samples: int | None = None
) -> WindowStats:
    s = n if samples is None else samples
    return WindowStats(n, err, ttft, s, tpot, s)


def test_judge_waits_for_enough_requests() -> None:
    t = Thresholds(min_requests=20)
    v = judge(t, _stats(5), _stats(100))
    assert not v.decided


def test_judge_fails_a_canary_on_errors_even_before_the_baseline_has_traffic() -> None:
    t = Thresholds(min_requests=20, max_error_rate_increase=0.02)
    v = judge(t, _stats(30, err=0.5), _stats(3))
    assert v.decided and not v.passed
    assert "error rate 50.0%" in v.reasons[0]


def test_judge_fails_a_slow_canary_and_passes_a_similar_one() -> None:
    t = Thresholds(min_requests=20, max_latency_ratio=1.5, min_latency_increase_s=0.05)
    slow = judge(t, _stats(40, ttft=0.4), _stats(40, ttft=0.05))
    assert slow.decided and not slow.passed and "p95 TTFT 400 ms" in slow.reasons[0]
    tpot = judge(t, _stats(40, tpot=0.2), _stats(40, tpot=0.02))
    assert not tpot.passed and "p95 TPOT" in tpot.reasons[0]
    same = judge(t, _stats(40, ttft=0.06), _stats(40, ttft=0.05))
    assert same.decided and same.passed
    # Within the ratio but tiny absolute values: bucket noise, not a regression.
    tiny = judge(t, _stats(40, ttft=0.009), _stats(40, ttft=0.003))
    assert tiny.passed


def test_window_counts_subtract() -> None:
    before = VersionCounts(10, 1, {0.1: 5.0, math.inf: 10.0}, {})
    after = VersionCounts(30, 1, {0.1: 20.0, math.inf: 30.0}, {})
    w = WindowStats.of(after.minus(before))
    assert w.requests == 20 and w.error_rate == 0.0 and w.ttft_samples == 20


def test_window_counts_sum_replicas_and_handle_restarts_and_newcomers() -> None:
    from gateway.rollout import window_counts

    def c(n: float) -> VersionCounts:
        return VersionCounts(n, 0, {0.1: n, math.inf: n}, {})

    before = {"a": {"v2": c(10)}, "b": {"v2": c(100)}}
    after = {"a": {"v2": c(15)}, "b": {"v2": c(3)}, "new": {"v2": c(7)}}
    # a: +5; b restarted (100 -> 3): its 3 are new; a replica absent at the start counts in full
    assert window_counts(before, after, "v2").requests == 5 + 3 + 7
    assert window_counts(before, after, "v1").requests == 0
    back = VersionCounts.from_json(c(4).to_json())
    assert back == c(4)
