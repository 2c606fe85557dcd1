"""The fairness policy's properties under an injected clock (pure logic, no I/O).

Each test drives `FairPolicy` the way a caller does: offer requests, take `next()` when a slot
frees, charge served tokens with `finished`. Times are plain numbers, so nothing sleeps.
"""

from __future__ import annotations

import math
import random

import pytest

from gateway.fairness import (
    TIERS,
    FairPolicy,
    Pending,
    Share,
    boosted_priority,
    engine_priority,
    weighted_service,
)

_seq = 0


def pending(
    tenant: str, share: Share, now: float = 0.0, inp: float = 10.0, deadline: float | None = None
) -> Pending:
    global _seq
    _seq += 1
    return Pending(f"r{_seq}", tenant, share, now, input_estimate=inp, deadline_s=deadline)


def serve_backlogged(
    policy: FairPolicy,
    shares: dict[str, Share],
    sizes: dict[str, tuple[int, int]] | None = None,
    steps: int = 400,
    seed: int = 1,
    queued: int = 3,
) -> list[tuple[str, float]]:
    """One slot, every tenant always has `queued` requests waiting; returns (tenant, charge) per request.

    Sizes are (input, output) per tenant, or random in [1, 50] x [1, 50] when None.
    """
    rng = random.Random(seed)
    served: list[tuple[str, float]] = []
    now = 0.0
    for tenant, share in shares.items():
        for _ in range(queued):
            assert policy.offer(pending(tenant, share, now), now, free_slots=0).action == "queue"
    for _ in range(steps):
        req = policy.next()
        assert req is not None  # work conserving: a backlog never leaves the slot idle
        prov = policy.dispatched(req, now)
        inp, out = sizes[req.tenant] if sizes else (rng.randint(1, 50), rng.randint(1, 50))
        now += 0.01 * (inp + out)
        served.append((req.tenant, policy.finished(req.tenant, req.share, inp, out, prov)))
        policy.offer(pending(req.tenant, req.share, now), now, free_slots=0)  # stays backlogged
    return served


def test_service_difference_of_two_backlogged_tenants_is_bounded() -> None:
    # The paper's bound: |W_a - W_b| <= 2 x the largest single request's weighted service.
    shares = {"a": Share(), "b": Share()}
    served = serve_backlogged(FairPolicy(), shares)
    biggest = weighted_service(50, 50)
    totals = {"a": 0.0, "b": 0.0}
    worst = 0.0
    for tenant, charge in served:
        totals[tenant] += charge
        worst = max(worst, abs(totals["a"] - totals["b"]))
    assert worst <= 2 * biggest, (worst, biggest)
    assert min(totals.values()) > 0.45 * sum(totals.values())


@pytest.mark.parametrize(("wa", "wb"), [(1.0, 1.0), (2.0, 1.0), (3.0, 1.0)])
def test_token_service_follows_weights_even_when_sizes_differ_8x(wa: float, wb: float) -> None:
    # a sends requests 8x the size of b's; request-count fairness would give a 8x the tokens
    shares = {"a": Share(weight=wa), "b": Share(weight=wb)}
    served = serve_backlogged(FairPolicy(), shares, sizes={"a": (800, 160), "b": (100, 20)}, steps=600)
    tokens = {"a": 0.0, "b": 0.0}
    for tenant, charge in served:
        tokens[tenant] += charge * shares[tenant].weight  # back to unweighted served tokens
    assert tokens["a"] / tokens["b"] == pytest.approx(wa / wb, rel=0.05)


def test_work_conserving_a_lone_tenant_gets_every_slot() -> None:
    # A tenant far ahead on its counter is still served when nobody else waits.
    policy = FairPolicy()
    heavy = Share()
    served = serve_backlogged(policy, {"heavy": heavy}, steps=50)
    assert len(served) == 50
    assert policy.counters.value("heavy") > 0
    for i in range(5):
        policy.offer(pending("heavy", heavy, 100.0 + i), 100.0 + i, free_slots=0)
    n = policy.depth
    assert n == 3 + 5
    assert all(policy.next() is not None for _ in range(n))
    assert policy.depth == 0 and policy.next() is None


def test_idle_time_is_not_banked() -> None:
    # a is served alone for a long time; b then arrives with a backlog. b is lifted to a's counter,
    # so from then on the two alternate instead of b taking every slot until it has caught up.
    policy = FairPolicy()
    a, b = Share(), Share()
    serve_backlogged(policy, {"a": a}, sizes={"a": (10, 10)}, steps=200)
    level = policy.counters.value("a")
    for _ in range(10):
        policy.offer(pending("b", b), 10.0, free_slots=0)
    assert policy.counters.value("b") >= level - weighted_service(10, 10)
    order = []
    for _ in range(10):
        req = policy.next()
        assert req is not None
        prov = policy.dispatched(req, 10.0)
        policy.finished(req.tenant, req.share, 10, 10, prov)
        order.append(req.tenant)
        policy.offer(pending(req.tenant, req.share, 10.0), 10.0, free_slots=0)
    assert 4 <= order.count("b") <= 6, order


def test_unserved_requests_are_never_charged() -> None:
    policy = FairPolicy()
    share = Share(max_queue_s=5.0)
    p1, p2, p3 = pending("t", share, 0.0), pending("t", share, 0.0), pending("t", share, 0.0)
    for p in (p1, p2, p3):
        policy.offer(p, 0.0, free_slots=0)
    before = policy.counters.value("t")
    assert policy.cancel(p1)  # client went away while waiting
    assert policy.expire(4.9) == []
    assert set(policy.expire(5.0)) == {p2, p3}  # waited the plan's queue time
    assert policy.depth == 0 and policy.counters.value("t") == before
    # dispatched, then the backend failed before serving anything: the provisional charge goes back
    p4 = pending("t", share, 6.0, inp=500)
    prov = policy.dispatched(p4, 6.0)
    assert policy.counters.value("t") == pytest.approx(before + 500)
    assert policy.finished("t", share, 0, 0, prov) == 0
    assert policy.counters.value("t") == pytest.approx(before)


def test_tiers_are_strict_whatever_the_counters() -> None:
    policy = FairPolicy()
    inter, batch = Share(tier="interactive"), Share(tier="batch")
    serve_backlogged(policy, {"chatty": inter}, steps=100)  # interactive tenant far ahead on service
    while policy.next() is not None:
        pass
    policy.offer(pending("bulk", batch), 0.0, free_slots=0)
    policy.offer(pending("chatty", inter), 0.0, free_slots=0)
    first = policy.next()
    assert first is not None and first.tenant == "chatty"
    assert [engine_priority(t) for t in TIERS] == [0, 2, 4]  # vLLM: lower is served first
    # a boosted request sits between its tier and the better one: the tier stays the major key
    assert [boosted_priority(t) for t in TIERS] == [-1, 1, 3]


def test_only_a_tenant_below_the_backlog_is_sent_ahead_and_within_the_allowance() -> None:
    policy = FairPolicy(burst_allowance=100.0)
    std, batch = Share(), Share(tier="batch")
    for _ in range(3):  # a backlogged tenant, far ahead on service
        policy.offer(pending("noisy", std, inp=500.0), 0.0, free_slots=0)
    policy.counters.charge("noisy", 10_000.0)
    v = policy.offer(pending("steady", std), 0.0, free_slots=0, overdispatch=2)
    assert v.action == "dispatch" and v.boost  # below every queued tenant: sent ahead
    assert policy.offer(pending("steady", std), 0.0, free_slots=-2, overdispatch=2).action == "queue"
    # the steady tenant now has one queued: the next one keeps its place behind it
    assert policy.offer(pending("steady", std), 0.0, free_slots=0, overdispatch=2).action == "queue"
    # the backlogged tenant itself is never ahead of its own backlog
    assert policy.offer(pending("noisy", std), 0.0, free_slots=0, overdispatch=2).action == "queue"
    # a worse tier is not sent ahead while a better one waits; without an allowance nothing is
    assert policy.offer(pending("bulk", batch), 0.0, free_slots=0, overdispatch=2).action == "queue"
    assert policy.offer(pending("other", std), 0.0, free_slots=0).action == "queue"
    # a better tier is ahead of a worse tier's backlog whatever the counters
    only_batch = FairPolicy()
    only_batch.offer(pending("bulk", batch), 0.0, free_slots=0)
    only_batch.counters.charge("chat", 1e9)
    assert only_batch.offer(pending("chat", std), 0.0, free_slots=0, overdispatch=1).boost


def test_hot_path_dispatches_without_queueing() -> None:
    policy = FairPolicy()
    assert policy.offer(pending("t", Share(sheddable=True)), 0.0, free_slots=1).action == "dispatch"
    assert policy.depth == 0


def test_sheddable_plan_is_refused_at_once_when_saturated() -> None:
    policy = FairPolicy()
    verdict = policy.offer(pending("t", Share(tier="batch", sheddable=True)), 0.0, free_slots=0)
    assert verdict.action == "shed" and verdict.retry_after_s >= 1.0
    assert policy.depth == 0


def test_deadline_shorter_than_predicted_wait_is_refused_at_once() -> None:
    policy = FairPolicy()
    share = Share()
    for i in range(11):  # one dispatch every 0.1 s: a rate of 10 req/s
        policy.dispatched(pending("x", share, i * 0.1), i * 0.1)
    assert policy.dispatch_rate() == pytest.approx(10.0)
    for _ in range(20):
        policy.offer(pending("x", share, 1.0), 1.0, free_slots=0)
    # "y" becomes active at x's level; x's 20 queued requests are ahead of it by the tie on counters
    refused = policy.offer(pending("y", share, 1.0, deadline=1.5), 1.0, free_slots=0)
    assert refused.action == "refuse_deadline"
    assert refused.predicted_wait_s == pytest.approx(2.1)
    assert math.ceil(refused.retry_after_s) >= 2
    ok = policy.offer(pending("y", share, 1.0, deadline=4.0), 1.0, free_slots=0)
    assert ok.action == "queue"


def test_share_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="weight"):
        Share(weight=0)
    with pytest.raises(ValueError, match="unknown tier"):
        Share(tier="gold")  # type: ignore[arg-type]
