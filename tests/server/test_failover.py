"""The failover cell: hand-timed runs with a linear cost model, then one with the catalog's roofline."""

from __future__ import annotations

import numpy as np
import pytest

from server.failover import Failure, run_cell
from server.perfmodel import PerfModel
from server.sim.engine import LinearCost
from server.sim.offline import Workload, simulate

# fixed 5 ms + 0.1 ms per prefill token + 0.2 ms per decoding sequence
COST = LinearCost(fixed_s=0.005, per_prefill_token_s=0.0001, per_decode_seq_s=0.0002)


def test_one_request_by_hand() -> None:
    # prefill of 10 tokens: 5 + 1.0 = 6.0 ms -> first token at 6.0 ms
    # two decode steps of 5 + 0.2 = 5.2 ms -> tokens at 11.2 and 16.4 ms
    res = run_cell(Workload(num_requests=1, input_len=10, output_len=3), COST, num_blocks=100)
    assert res.ttft[0] == pytest.approx(0.006)
    assert res.e2e[0] == pytest.approx(0.0164)
    assert res.tpot[0] == pytest.approx(0.0052)
    assert res.prefill_s == pytest.approx(0.006) and res.decode_s == pytest.approx(0.0104)
    assert res.prefill_share == pytest.approx(0.006 / 0.0164)
    assert res.batch_seqs_mean == pytest.approx(1.0)


def test_mixed_step_split_by_marginal_cost() -> None:
    # Both requests are sent at t=0; a budget of 10 tokens per step lets request 0's prompt take
    # the whole first step, so request 1 prefills next to request 0's first decode.
    from server.sim.scheduler import SchedulerConfig

    cfg = SchedulerConfig(max_num_batched_tokens=10)
    res = run_cell(Workload(num_requests=2, input_len=10, output_len=2), COST, 100, config=cfg)
    # step 1: prefill r0 (10 tok) = 6.0 ms, all prefill
    # step 2: decode r0 (1 seq) + prefill r1 (9 tokens fit the budget of 10) = 5 + 0.9 + 0.2 = 6.1 ms;
    #         decode alone would be 5.2 ms -> 5.2 decode, 0.9 prefill. r0 finishes (2 tokens).
    # step 3: prefill r1's last token = 5 + 0.1 = 5.1 ms, all prefill; r1's first token
    # step 4: decode r1 = 5.2 ms
    assert res.prefill_s == pytest.approx(0.006 + 0.0009 + 0.0051)
    assert res.decode_s == pytest.approx(0.0052 + 0.0052)
    assert res.ttft.tolist() == pytest.approx([0.006, 0.006 + 0.0061 + 0.0051])


def test_lost_replica_drops_its_stream_and_the_client_retries_on_a_survivor() -> None:
    # Two requests at t=0, one per replica (least loaded). Replica 0 dies at 7 ms, after its
    # request's first token (6 ms); the client resends at 7 + 10 = 17 ms to replica 1, idle by
    # then (its own request ended at 16.4 ms): first token at 17 + 6 = 23 ms, counted from the
    # original send at 0; then two decodes of 5.2 ms.
    wl = Workload(num_requests=2, input_len=10, output_len=3)
    res = run_cell(wl, COST, 100, replicas=2, failure=Failure(at_s=0.007, replica=0, retry_after_s=0.01))
    assert res.retried.tolist() == [True, False]
    assert res.ttft.tolist() == pytest.approx([0.023, 0.006])
    assert res.e2e.tolist() == pytest.approx([0.0334, 0.0164])
    assert res.tpot.tolist() == pytest.approx([0.0052, 0.0052])
    assert res.p95(np.array([True, False])) == pytest.approx((0.023, 0.0052))
    assert res.good_fraction(0.02, 0.01) == 0.5  # the retried request missed a 20 ms TTFT


def test_without_failure_matches_the_offline_simulator() -> None:
    pm = PerfModel.build("mixtral-8x7b", "h100", tp=2)
    wl = Workload(num_requests=200, input_len=500, output_len=50, rate=20.0, seed=3)
    cell = run_cell(wl, pm, pm.kv_blocks(16), replicas=2)
    ref = simulate(wl, cost_model=pm, num_blocks=pm.kv_blocks(16), replicas=2)
    np.testing.assert_allclose(cell.ttft, ref.ttft, rtol=1e-12)
    np.testing.assert_allclose(cell.e2e, ref.e2e, rtol=1e-12)


def test_bad_failures_are_refused() -> None:
    wl = Workload(num_requests=1, input_len=10, output_len=3)
    with pytest.raises(ValueError, match="needs a survivor"):
        run_cell(wl, COST, 100, replicas=1, failure=Failure(0.0))
    with pytest.raises(ValueError, match="needs a survivor"):
        run_cell(wl, COST, 100, replicas=2, failure=Failure(0.0, count=2))
    with pytest.raises(ValueError, match=">= 0"):
        Failure(-1.0)


def test_a_node_failure_loses_two_replicas_at_once() -> None:
    # Three requests at t=0, one per replica; replicas 0 and 1 (one node of two TP4 replicas) die at
    # 7 ms, after their first tokens. Both clients resend at 17 ms to replica 2, idle by then (its own
    # request ended at 16.4 ms): the two prefill together, 5 + 20 x 0.1 = 7 ms -> first tokens at
    # 24 ms; then decodes of two sequences, 5 + 2 x 0.2 = 5.4 ms each.
    wl = Workload(num_requests=3, input_len=10, output_len=3)
    res = run_cell(wl, COST, 100, replicas=3, failure=Failure(at_s=0.007, retry_after_s=0.01, count=2))
    assert res.retried.tolist() == [True, True, False]
    assert res.ttft.tolist() == pytest.approx([0.024, 0.024, 0.006])
    assert res.tpot[:2].tolist() == pytest.approx([0.0054, 0.0054])
