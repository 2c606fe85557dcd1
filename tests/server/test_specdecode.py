"""Speculative decoding: tokens per step and TPOT against batch, derived by hand."""

from __future__ import annotations

import pytest

from server.perfmodel import PerfModel
from server.sim.engine import LinearCost
from server.specdecode import (
    SpecConfig,
    SpecModel,
    acceptance_from_length,
    expected_tokens_per_step,
    kv_capacity,
)

# fixed 5 ms + 0.1 ms per prefill (verify) token + 0.2 ms per decoding sequence
TARGET = LinearCost(fixed_s=0.005, per_prefill_token_s=0.0001, per_decode_seq_s=0.0002)


def test_expected_tokens_per_step_by_hand() -> None:
    assert expected_tokens_per_step(4, 0.5) == pytest.approx(1.9375)  # (1 - 1/32) / (1/2)
    assert expected_tokens_per_step(3, 0.8) == pytest.approx((1 - 0.8**4) / 0.2)  # 2.952
    assert expected_tokens_per_step(4, 0.0) == 1.0  # every draft rejected: the target's own token
    assert expected_tokens_per_step(4, 1.0) == 5.0  # every draft accepted, plus the bonus token
    with pytest.raises(ValueError, match="acceptance"):
        expected_tokens_per_step(4, 1.5)


def test_ngram_helps_at_small_batch_and_costs_at_large() -> None:
    m = SpecModel(TARGET, SpecConfig(k=4, acceptance=0.5))
    one = m.point(batch=1, context=100)
    # plain step: 5 + 0.2 = 5.2 ms; verify: 5 + 5 tokens x 0.1 = 5.5 ms; E = 1.9375
    assert one.plain_tpot_s == pytest.approx(0.0052)
    assert one.verify_s == pytest.approx(0.0055) and one.draft_s == 0
    assert one.spec_tpot_s == pytest.approx(0.0055 / 1.9375)  # 2.84 ms
    assert one.speedup == pytest.approx(0.0052 / (0.0055 / 1.9375))  # x1.83
    big = m.point(batch=256, context=100)
    # plain: 5 + 256 x 0.2 = 56.2 ms; verify: 5 + 256 x 5 x 0.1 = 133 ms -> 68.6 ms per token
    assert big.plain_tpot_s == pytest.approx(0.0562)
    assert big.spec_tpot_s == pytest.approx(0.133 / 1.9375)
    assert big.speedup < 1
    # crossing: 1.9375 x (5 + 0.2 B) = 5 + 0.5 B  ->  B = 4.6875 / 0.1125 = 41.7, so 42 is the first loser
    assert m.breakeven_batch(context=100) == 42


def test_draft_model_passes_add_to_the_step() -> None:
    draft = LinearCost(fixed_s=0.001, per_prefill_token_s=0.0, per_decode_seq_s=0.0001)
    m = SpecModel(TARGET, SpecConfig(k=3, acceptance=0.8, method="draft_model", draft_model="x"), draft)
    p = m.point(batch=2, context=50)
    # 3 draft passes of 1 + 2 x 0.1 = 1.2 ms; verify 5 + 2 x 4 x 0.1 = 5.8 ms; E = 2.952
    assert p.draft_s == pytest.approx(0.0036)
    assert p.verify_s == pytest.approx(0.0058)
    assert p.spec_tpot_s == pytest.approx(0.0094 / ((1 - 0.8**4) / 0.2))
    assert p.plain_tpot_s == pytest.approx(0.0054)


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="needs a draft model"):
        SpecConfig(k=4, acceptance=0.5, method="draft_model")
    with pytest.raises(ValueError, match="at least 1"):
        SpecConfig(k=0, acceptance=0.5)
    with pytest.raises(ValueError, match="exactly when"):
        SpecModel(TARGET, SpecConfig(k=2, acceptance=0.5), draft=TARGET)


def test_moe_verify_reads_more_experts_than_one_decode() -> None:
    # Mixtral at batch 1: a plain decode reads 2 of 8 experts per layer; verifying k + 1 = 5 tokens
    # reads 8 x (1 - (6/8)^5) = 6.1 of them, so the verify pass costs about twice a plain step.
    pm = PerfModel.build("mixtral-8x22b", "h100", tp=8)
    m = SpecModel.build(pm, SpecConfig(k=4, acceptance=0.5))
    p = m.point(batch=1, context=1000)
    assert p.verify_s > 1.8 * p.plain_step_s
    assert m.point(batch=16, context=1000).speedup > p.speedup  # the win peaks at moderate batch


def test_draft_model_takes_kv_room() -> None:
    pm = PerfModel.build("mixtral-8x22b", "h100", tp=8)
    m = SpecModel.build(pm, SpecConfig(k=4, acceptance=0.7, method="draft_model", draft_model="mistral-7b"))
    assert m.draft is not None
    plain, shared = kv_capacity(pm, m.draft)  # type: ignore[arg-type]
    assert plain == pm.kv_tokens(16)
    # per GPU and token: KV 28 KiB (8x22B: K and V x 56 layers x 1 KV head x 128 x 2 B) + 16 KiB
    # (7B: 32 layers); 7B's bf16 weights (14.5 GB / 8) come out of the budget first
    budget = pm.kv_budget_bytes_per_gpu() - m.draft.weight_bytes_per_gpu()  # type: ignore[attr-defined]
    assert shared == budget // (16 * (28672 + 16384)) * 16


def test_acceptance_from_vllms_mean_accepted_length() -> None:
    # k = 3, mean accepted length 2.25 (vLLM's "acceptance rate" (2.25 - 1) / 3 = 0.42):
    # (1 - a^4) / (1 - a) = 1 + a + a^2 + a^3 = 2.25, i.e. a + a^2 + a^3 = 1.25: a = 0.622
    # (0.622 + 0.3869 + 0.2406 = 1.2495)
    a = acceptance_from_length(3, 2.25)
    assert expected_tokens_per_step(3, a) == pytest.approx(2.25)
    assert a == pytest.approx(0.622, abs=1e-3)
    assert acceptance_from_length(4, 1.0) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="lies in"):
        acceptance_from_length(3, 4.5)
