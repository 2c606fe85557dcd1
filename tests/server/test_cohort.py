"""The fast stepper (decode cohort) against the reference step-by-step engine, and the router heap.

The cohort is meant to give the reference's results step for step, so these compare whole runs
exactly (same steps, same per-request TTFT and E2E, same ITL histogram), including runs where KV
pressure makes the reference preempt, which sends the cohort through its fallback and back.
"""

from __future__ import annotations

import numpy as np
import pytest

from server.sim.engine import Engine, LinearCost
from server.sim.offline import SimResult, Workload, simulate
from server.sim.request import Request
from server.sim.routing import LeastLoaded


def _both(wl: Workload, **kw: object) -> tuple[SimResult, SimResult]:
    ref = simulate(wl, stepper="reference", **kw)  # type: ignore[arg-type]
    fast = simulate(wl, stepper="fast", **kw)  # type: ignore[arg-type]
    return ref, fast


def _assert_same(ref: SimResult, fast: SimResult) -> None:
    assert fast.steps == ref.steps
    assert fast.preemptions == ref.preemptions
    assert np.array_equal(fast.ttft, ref.ttft)
    assert np.array_equal(fast.e2e, ref.e2e)
    assert np.array_equal(fast.itl_values, ref.itl_values)
    assert np.array_equal(fast.itl_counts, ref.itl_counts)
    assert fast.kv_usage_mean == pytest.approx(ref.kv_usage_mean, rel=1e-12)


def test_fast_equals_reference_under_kv_pressure_with_preemption() -> None:
    wl = Workload(num_requests=300, input_len="uniform:10:300", output_len="uniform:1:200", seed=1)
    ref, fast = _both(wl, cost_model=LinearCost(), num_blocks=200)
    assert ref.preemptions > 50  # the fallback path is exercised
    _assert_same(ref, fast)


def test_fast_equals_reference_on_a_poisson_cluster_with_chunked_prefill() -> None:
    wl = Workload(num_requests=1500, input_len="uniform:10:3000", output_len="uniform:1:300", rate=200,
                  seed=2)
    ref, fast = _both(wl, cost_model=LinearCost(per_context_token_s=1e-7), num_blocks=3000, replicas=4,
                      max_num_batched_tokens=512)
    assert ref.preemptions > 0
    _assert_same(ref, fast)


def test_fast_equals_reference_on_a_small_roofline_cluster_within_one_percent() -> None:
    """The claim docs/results/sim-speed.md makes for the headline, on 8 Mixtral-8x22B TP8 replicas."""
    wl = Workload(num_requests=1200, input_len=1000, output_len=250, rate=200, seed=0)
    ref, fast = _both(wl, model="mixtral-8x22b", gpu="h100", tp=8, replicas=8)
    a, b = ref.summary(), fast.summary()
    for key in ("ttft_p50_s", "ttft_p95_s", "ttft_p99_s", "tpot_p50_s", "tpot_p95_s", "e2e_p95_s",
                "output_throughput", "request_throughput"):
        assert b[key] == pytest.approx(a[key], rel=0.01), key
    _assert_same(ref, fast)


def test_cohort_step_needs_blocks_only_for_members_at_a_block_boundary() -> None:
    # block_size 4; prompts of 4 and 6 tokens. After the prefill step (one token sampled each),
    # the contexts are 4 and 6: the first needs a 2nd block for its next token (4 % 4 == 0),
    # the second still has room in its 2nd block (6 -> 7 fits in 8 slots).
    eng = Engine(LinearCost(), num_blocks=10, block_size=4, track_emitted=False, stepper="fast")
    eng.add(Request("a", 4, 10))
    eng.add(Request("b", 6, 10))
    p = eng.plan()
    assert p is not None and p.num_prefill_tokens == 10
    eng.complete(p, 1.0)
    assert eng.kv.num_free == 10 - 1 - 2
    p = eng.plan()
    assert p is not None and p.num_decode == 2 and p.num_prefill_tokens == 0
    assert eng.kv.num_free == 10 - 1 - 2 - 1  # only "a" crossed a block boundary


def test_fast_stepper_is_refused_where_tokens_must_be_reported() -> None:
    with pytest.raises(ValueError, match="track_emitted"):
        Engine(LinearCost(), num_blocks=10, stepper="fast")
    with pytest.raises(ValueError, match="unknown stepper"):
        Engine(LinearCost(), num_blocks=10, stepper="bogus", track_emitted=False)  # type: ignore[arg-type]


class _Load:
    def __init__(self, n: int) -> None:
        self.outstanding = n


def test_least_loaded_heap_matches_a_scan_with_lowest_index_on_ties() -> None:
    rng = np.random.default_rng(5)
    engines = [_Load(int(x)) for x in rng.integers(0, 5, size=23)]
    router = LeastLoaded(engines)
    for _ in range(3000):
        want = min(range(len(engines)), key=lambda i: engines[i].outstanding)
        assert router.pick() == want
        i = int(rng.integers(0, len(engines)))
        engines[i].outstanding = max(0, engines[i].outstanding + int(rng.choice([-2, -1, 1, 1])))
        router.changed(i)
