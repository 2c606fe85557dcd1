"""Expert vs tensor parallelism: the busiest GPU's load, memory and step time, derived by hand."""

from __future__ import annotations

import json
import math

import pytest
import typer
from typer.testing import CliRunner

from server import catalog, cli_tools
from server.capacity import CapacityQuery, memory_option
from server.expertpar import ALL_TO_ALL_LATENCY_S, ExpertParallelModel, hottest_load
from server.perfmodel import BatchShape, PerfModel

M = catalog.model("mixtral-8x22b")
H100 = catalog.gpu("h100")


def test_hottest_load_by_hand() -> None:
    # 1,000 tokens, top-2 of 8 experts on 8 GPUs: 250 assignments per GPU on average;
    # the busiest gets 250 + sqrt(2 x 250 x ln 8) = 250 + 32.2
    assert hottest_load(1000, 2, 8) == pytest.approx(250 + math.sqrt(500 * math.log(8)))
    # skew 1.5: 375 + sqrt(2 x 375 x ln 8)
    assert hottest_load(1000, 2, 8, 1.5) == pytest.approx(375 + math.sqrt(750 * math.log(8)))
    assert hottest_load(1000, 2, 1) == 2000  # one GPU does everything
    assert hottest_load(1, 2, 8) <= 2  # never more than the tokens' own assignments
    with pytest.raises(ValueError, match=">= 1"):
        hottest_load(10, 2, 8, 0.5)


def test_tp_layout_is_the_perf_model() -> None:
    pm = PerfModel.build("mixtral-8x22b", "h100", tp=8)
    shape = BatchShape(((1000, 0),), (500, 600))
    assert ExpertParallelModel(pm, "tp").step_time_s(shape) == pm.step_time_s(shape)


def test_ep_reads_a_whole_expert_at_batch_one() -> None:
    # One decode token touches 2 experts. TP8 reads 1/8 of each (2/8 of an expert per layer per
    # GPU); EP puts one whole expert per GPU, so the GPU that got the token reads all of it.
    pm = PerfModel.build("mixtral-8x22b", "h100", tp=8)
    ep = ExpertParallelModel(pm, "ep").breakdown(BatchShape((), (100,)))
    attn_and_rest = (M.num_layers * M.attn_params_per_layer * 2 + (M.num_layers * M.router_params_per_layer
                     + M.lm_head_params) * 2) / 8
    expert = M.num_layers * 1 * M.expert_params * 2
    assert ep.weights_s == pytest.approx((attn_and_rest + expert) / H100.hbm_bandwidth_Bps * 1.3)
    tp = pm.breakdown(BatchShape((), (100,)))
    assert ep.weights_s / tp.weights_s > 2.5


def test_dp_ep_memory_by_hand() -> None:
    pm = PerfModel.build("mixtral-8x22b", "h100", tp=8)
    dp = ExpertParallelModel(pm, "dp-ep")
    # each GPU: its 1 expert in every layer, all of attention, router, norms, embeddings and head
    weights = (M.num_layers * M.expert_params * 2 + M.num_layers * M.attn_params_per_layer * 2
               + (M.num_layers * (M.router_params_per_layer + M.norm_params_per_layer) + M.embedding_params
                  + M.lm_head_params + M.hidden_size) * 2)
    assert dp.weight_bytes_per_gpu() == int(weights)
    # a sequence's whole KV (224 KiB per token) sits on one GPU; 8 GPUs' worth of blocks
    assert dp.kv_bytes_per_token_per_gpu() == 229_376
    assert dp.kv_blocks(16) == 8 * (dp.kv_budget_bytes_per_gpu() // (16 * 229_376))
    assert dp.weight_bytes_per_gpu() > pm.weight_bytes_per_gpu()  # attention is replicated


def test_dp_ep_all_to_all_replaces_the_all_reduces() -> None:
    pm = PerfModel.build("mixtral-8x22b", "h100", tp=8)
    shape = BatchShape(((1000, 0),) * 8, ())  # 8,000 prefill tokens
    dp = ExpertParallelModel(pm, "dp-ep").breakdown(shape)
    load = hottest_load(8000, 2, 8)
    bw = H100.interconnect_Bps / 2 * 0.7
    sent = 8000 / 8 * 2 * 7 / 8 * 6144 * 2
    received = load * 7 / 8 * 6144 * 2
    assert dp.allreduce_s == pytest.approx(2 * 56 * (ALL_TO_ALL_LATENCY_S + max(sent, received) / bw))
    assert dp.allreduce_s < pm.breakdown(shape).allreduce_s / 3  # the prefill all-reduces dominate TP


def test_skew_slows_the_step_no_token_is_dropped() -> None:
    pm = PerfModel.build("mixtral-8x22b", "h100", tp=8)
    shape = BatchShape(((1000, 0),) * 8, ())
    even = ExpertParallelModel(pm, "ep", 1.0).breakdown(shape)
    hot = ExpertParallelModel(pm, "ep", 2.0).breakdown(shape)
    assert hot.compute_s > even.compute_s * 1.5
    with pytest.raises(ValueError, match="dense"):
        ExpertParallelModel(PerfModel.build("mistral-7b", "h100", tp=2), "ep")
    with pytest.raises(ValueError, match="do not split evenly"):
        ExpertParallelModel(PerfModel.build("mixtral-8x7b", "h100", tp=3), "ep")


def test_capacity_memory_for_each_layout() -> None:
    q = CapacityQuery(model="mixtral-8x22b", gpu="h100", target_rps=100, input_len=1000, output_len=250,
                      p95_ttft_s=1.0, p95_tpot_s=0.05, layout="dp-ep")
    opt = memory_option(q, 8)
    assert opt.fits and opt.kv_tokens == ExpertParallelModel(PerfModel.build("mixtral-8x22b", "h100", tp=8),
                                                             "dp-ep").kv_tokens(16)


def test_ep_vs_tp_cli_sizes_all_three_layouts() -> None:
    app = typer.Typer()
    cli_tools.register(app)
    args = ("ep-vs-tp --model mixtral-8x7b --gpus 8 --skews 2 --target-rps 100 --input-len 300 "
            "--output-len 10 --p95-tpot 30ms --json")
    res = CliRunner().invoke(app, args.split())
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["layouts"]
    assert [(r["layout"], r["expert_skew"]) for r in rows] == [("tp", 1.0), ("ep", 2.0), ("dp-ep", 2.0)]
    tp, ep2 = rows[0], rows[1]
    assert ep2["replica_rps"] < tp["replica_rps"]  # a hot expert costs throughput
    assert all(r["gpus"] == 8 * r["replicas"] for r in rows)
    bad = CliRunner().invoke(app, ["ep-vs-tp", "--skews", "0.5"])
    assert bad.exit_code == 2 and "--skews" in bad.output


def test_specdecode_cli() -> None:
    app = typer.Typer()
    cli_tools.register(app)
    args = ["specdecode", "--k", "4", "--acceptance", "0.5", "--batches", "1,16,512", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["tokens_per_step"] == pytest.approx(1.9375)
    assert [p["batch"] for p in out["points"]] == [1, 16, 512]
    from_length = CliRunner().invoke(app, ["specdecode", "--k", "3", "--accepted-length", "2.25", "--json"])
    assert json.loads(from_length.output)["inputs"]["acceptance"] == pytest.approx(0.622, abs=1e-3)
    bad = CliRunner().invoke(app, ["specdecode", "--method", "draft_model"])
    assert bad.exit_code == 2 and "needs a draft model" in bad.output
