"""Performance-model numbers checked by hand, and the shape of its behaviour."""

from __future__ import annotations

import pytest

from server.perfmodel import V1_FACTORS, BatchShape, Factors, PerfModel, experts_touched


def decode(*ctx: int) -> BatchShape:
    return BatchShape(prefill=(), decode_context=tuple(ctx))


def test_experts_touched_by_hand() -> None:
    assert experts_touched(8, 2, 1) == 2.0
    # 8 * (1 - (6/8)**16) = 8 * (1 - 0.0100226) = 7.9198
    assert experts_touched(8, 2, 16) == pytest.approx(7.92, abs=0.005)
    assert experts_touched(8, 2, 0) == 0.0
    assert experts_touched(1, 1, 5) == 1.0  # dense: the one MLP


def test_mixtral_8x7b_memory_numbers() -> None:
    pm = PerfModel.build("mixtral-8x7b", "h100", tp=2)
    assert pm.kv_bytes_per_token() == 131072  # 128 KiB in bf16
    assert pm.kv_bytes_per_token_per_gpu() == 65536
    assert pm.weight_bytes() == pytest.approx(46.7e9 * 2, rel=0.001)
    fp8 = PerfModel.build("mixtral-8x7b", "h100", tp=1, dtype="fp8")
    # FP8 linear layers, bf16 embeddings/LM head (262M params): 46.44e9 * 1 + 0.262e9 * 2 bytes
    assert fp8.weight_bytes() == pytest.approx(46.44e9 + 0.262e9 * 2, rel=0.002)
    assert fp8.kv_dtype == "bf16"
    assert PerfModel.build("mixtral-8x7b", "h100", kv_dtype="fp8").kv_bytes_per_token() == 65536


def test_kv_blocks_by_hand() -> None:
    pm = PerfModel.build("mixtral-8x7b", "h100", tp=2, gpu_memory_utilization=0.9)
    budget = 81559 * 1024**2 * 0.9 - pm.weight_bytes_per_gpu() - pm.activation_reserve_bytes()
    assert pm.kv_blocks(16) == int(budget) // (16 * 65536)
    # ~26 GB per GPU left for KV at 64 KiB per token per GPU: ~400k tokens in the replica
    assert 350_000 < pm.kv_tokens() < 450_000


def test_bf16_mixtral_8x7b_does_not_fit_one_h100() -> None:
    assert not PerfModel.build("mixtral-8x7b", "h100", tp=1).fits()
    assert PerfModel.build("mixtral-8x7b", "h100", tp=1).kv_blocks() == 0
    assert PerfModel.build("mixtral-8x7b", "h100", tp=1, dtype="fp8").fits()


def test_decode_step_by_hand() -> None:
    """Batch 8 decode on 2x H100: weight-bandwidth bound, reads ~7.2 experts per layer."""
    pm = PerfModel.build("mixtral-8x7b", "h100", tp=2)
    b = pm.breakdown(decode(*([100] * 8)))
    touched = 8 * (1 - 0.75**8)
    assert b.experts_touched == pytest.approx(touched)
    weights = (32 * (41_943_040 + touched * 176_160_768) * 2 + (32 * 4096 * 8 + 32000 * 4096) * 2) / 2
    assert b.weights_s == pytest.approx(weights / 3.35e12 * V1_FACTORS.weight_read)
    assert b.compute_s < b.memory_s
    assert b.total_s == pytest.approx(b.memory_s + b.allreduce_s + V1_FACTORS.step_overhead_s)
    assert 0.015 < b.total_s < 0.025


def test_step_time_grows_with_batch_and_context_and_shrinks_with_tp() -> None:
    pm = PerfModel.build("mixtral-8x7b", "h100", tp=2)
    assert (
        pm.step_time_s(decode(100))
        < pm.step_time_s(decode(*[100] * 16))
        < pm.step_time_s(decode(*[100] * 256))
    )
    assert pm.step_time_s(decode(*[100] * 64)) < pm.step_time_s(decode(*[4000] * 64))
    pm4 = PerfModel.build("mixtral-8x7b", "h100", tp=4)
    assert pm4.step_time_s(decode(*[100] * 64)) < pm.step_time_s(decode(*[100] * 64))
    assert pm.step_time_s(BatchShape((), ())) == 0.0


def test_large_prefill_is_compute_bound() -> None:
    pm = PerfModel.build("mixtral-8x7b", "h100", tp=2)
    b = pm.breakdown(BatchShape(prefill=((8192, 0),), decode_context=()))
    assert b.compute_s > b.memory_s
    # 2 * 12.9e9 active params * 8192 tokens / 2 GPUs / 989 TFLOP/s * 1.8 = ~0.19 s (+ attention)
    assert 0.15 < b.total_s < 0.35


def test_hbm_bandwidth_matters_h200_faster() -> None:
    h100 = PerfModel.build("mixtral-8x7b", "h100", tp=2)
    h200 = PerfModel.build("mixtral-8x7b", "h200", tp=2)
    ratio = h100.step_time_s(decode(*[64] * 8)) / h200.step_time_s(decode(*[64] * 8))
    assert 1.2 < ratio < 4.8 / 3.35


@pytest.mark.parametrize(("gpu", "published_s"), [("h100", 2.3167), ("h200", 1.921)])
def test_latency_runs_p1_p3_within_15_percent(gpu: str, published_s: float) -> None:
    """P1/P3 (vLLM CI, TP2 bf16, batch 8, in 32, out 128): one prefill step, then 127 decode steps."""
    pm = PerfModel.build("mixtral-8x7b", gpu, tp=2)
    total = pm.step_time_s(BatchShape(prefill=((32, 0),) * 8, decode_context=()))
    total += sum(pm.step_time_s(decode(*[32 + i] * 8)) for i in range(127))
    assert total == pytest.approx(published_s, rel=0.15)


def test_describe_prints_every_input_and_factor() -> None:
    pm = PerfModel.build("mixtral-8x7b", "h100", tp=2, factors=Factors(step_overhead_s=0.003))
    d = pm.describe()
    for key in ("model", "gpu", "tp", "dtype", "kv_dtype", "gpu_memory_utilization", "kv_blocks_16"):
        assert key in d
    assert d["factors"]["step_overhead_s"] == 0.003  # type: ignore[index]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dtype"):
        PerfModel.build("mixtral-8x7b", "h100", dtype="fp4")
    with pytest.raises(KeyError):
        PerfModel.build("mixtral-8x7b", "tpu-v5")


def test_vllm_0_5_profile_is_derived_from_the_published_38_percent_gpu_share() -> None:
    """vLLM's v0.6.0 post: on 0.5.3, Llama-3-8B on one H100 spent 38% of its time on the GPU."""
    from dataclasses import replace

    from server.perfmodel import PROFILES

    no_overhead = replace(V1_FACTORS, step_overhead_s=0.0)
    gpu_s = PerfModel.build("llama-3.1-8b", "h100", factors=no_overhead).step_time_s(decode(*[330] * 256))
    cpu_s = gpu_s * 62 / 38
    derived = (cpu_s - V1_FACTORS.step_overhead_s) / 256
    assert PROFILES["vllm-0.5"].per_seq_overhead_s == pytest.approx(derived, rel=0.02)
    assert PROFILES["vllm-v1"] is V1_FACTORS


def test_fidelity_sharegpt_like_lengths_pass_vllms_filter_with_the_reference_means() -> None:
    from loadtest.bench.fidelity import sharegpt_like

    ins, outs = sharegpt_like(4000, seed=0)
    assert ins.min() >= 4 and outs.min() >= 4 and ins.max() <= 1024 and (ins + outs).max() <= 2048
    assert ins.mean() == pytest.approx(230, rel=0.05)
    assert outs.mean() == pytest.approx(219, rel=0.05)
    again, _ = sharegpt_like(4000, seed=0)
    assert (again == ins).all()  # seeded
