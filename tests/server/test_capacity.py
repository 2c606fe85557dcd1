"""Capacity planning: memory by hand, goodput from the offline simulator, replicas from the target."""

from __future__ import annotations

import json
import math

import pytest
import typer
from typer.testing import CliRunner

from server import cli_tools
from server.capacity import CapacityQuery, memory_option, plan
from server.cli_tools import parse_duration_s

# Small simulations: the logic is what is tested here, not the precision of the rate found.
FAST = {"min_requests": 150, "max_requests": 400, "bisection_steps": 6, "sim_seconds": 20.0}


def q8x22b(**kw: object) -> CapacityQuery:
    base: dict[str, object] = {
        "model": "mixtral-8x22b",
        "gpu": "h100",
        "target_rps": 10000,
        "input_len": 1000,
        "output_len": 250,
        "p95_ttft_s": 1.0,
        "p95_tpot_s": 0.05,
        **FAST,
    }
    base.update(kw)
    return CapacityQuery(**base)  # type: ignore[arg-type]


def test_memory_by_hand_mixtral_8x22b_bf16_on_h100() -> None:
    q = q8x22b()
    # 140.6B params * 2 bytes = 281 GB: one or two 80 GB GPUs cannot hold it, four can (70 GB each)
    assert not memory_option(q, 1).fits
    assert not memory_option(q, 2).fits
    tp4 = memory_option(q, 4)
    assert tp4.fits
    assert tp4.weight_bytes_per_gpu == pytest.approx(140.63e9 * 2 / 4, rel=0.001)
    # KV at TP4: 224 KiB per token over 4 GPUs = 56 KiB per GPU per token
    assert tp4.kv_tokens == (tp4.kv_bytes_per_gpu // (16 * 56 * 1024)) * 16
    assert tp4.max_concurrent_seqs == min(1024, tp4.kv_tokens // 16 // math.ceil(1250 / 16))
    assert memory_option(q, 8).kv_tokens > 10 * tp4.kv_tokens


def test_plan_smallest_fitting_tp_replicas_and_gpus() -> None:
    p = plan(q8x22b(tp=None))
    assert p.smallest_fitting_tp == 4
    rec = p.recommended
    assert rec is not None and rec.tp in (4, 8)
    assert rec.replica_rps > 0 and rec.replica_rps <= rec.saturation_rps * 1.0001
    assert rec.p95_ttft_s <= 1.0 and rec.p95_tpot_s <= 0.05
    assert rec.replicas == math.ceil(10000 / rec.replica_rps)
    assert rec.gpus == rec.replicas * rec.tp
    viable = [o for o in p.options if o.gpus]
    assert rec.gpus == min(o.gpus for o in viable)


def test_tighter_slo_needs_more_replicas() -> None:
    loose = plan(q8x22b(tp=8, p95_tpot_s=0.08)).recommended
    tight = plan(q8x22b(tp=8, p95_tpot_s=0.03)).recommended
    assert loose is not None and tight is not None
    assert tight.replica_rps < loose.replica_rps
    assert tight.replicas > loose.replicas


def test_impossible_slo_gives_no_recommendation() -> None:
    p = plan(q8x22b(tp=8, p95_tpot_s=0.001))
    assert p.recommended is None
    assert "misses the SLO" in p.options[0].note


def test_durations_parse() -> None:
    assert parse_duration_s("1s") == 1.0
    assert parse_duration_s("50ms") == pytest.approx(0.05)
    assert parse_duration_s("0.2") == pytest.approx(0.2)
    with pytest.raises(typer.BadParameter):
        parse_duration_s("fast")


def test_capacity_cli_json_prints_every_input() -> None:
    app = typer.Typer()
    cli_tools.register(app)
    args = "capacity --model mixtral-8x7b --gpu h100 --target-rps 100 --tp 2 --input-len 500 --output-len 100"
    args += " --p95-ttft 1s --p95-tpot 50ms --json"
    res = CliRunner().invoke(app, args.split())
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["query"]["target_rps"] == 100 and out["query"]["p95_tpot_s"] == pytest.approx(0.05)
    assert out["perf_model"]["factors"]["weight_read"] > 1
    (opt,) = out["options"]
    assert opt["tp"] == 2 and opt["replicas"] == math.ceil(100 / opt["replica_rps"])


def test_capacity_cli_table() -> None:
    app = typer.Typer()
    cli_tools.register(app)
    args = "capacity --model mistral-7b --gpu h100 --target-rps 50 --tp 1 --input-len 200 --output-len 50"
    res = CliRunner().invoke(app, args.split())
    assert res.exit_code == 0, res.output
    assert "recommended: TP1" in res.output and "Inputs" in res.output
