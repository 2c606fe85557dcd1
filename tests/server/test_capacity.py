"""Capacity planning: memory by hand, goodput from the offline simulator, replicas from the target."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import typer
from typer.testing import CliRunner

from server import catalog, cli_tools
from server.capacity import CapacityQuery, memory_option, plan, query_for_preset, replicas_for
from server.cli_tools import parse_duration_s
from server.perfmodel import FACTOR_RANGES
from server.pricing import FleetCost, default_price

# Small simulations: the logic is what is tested here, not the precision of the rate found.
FAST = {"min_requests": 150, "max_requests": 400, "bisection_steps": 6, "sim_seconds": 20.0}
ONLY_SIZING = {"failover": False, "sensitivity": False}


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
        **ONLY_SIZING,
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
    assert rec.replicas_at_slo == math.ceil(10000 / rec.replica_rps)
    assert rec.replicas == math.ceil(10000 / (0.8 * rec.replica_rps))  # default headroom: 80%
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
    args += " --p95-ttft 1s --p95-tpot 50ms --no-sensitivity --json"  # sensitivity: tested on plan()
    res = CliRunner().invoke(app, args.split())
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["query"]["target_rps"] == 100 and out["query"]["p95_tpot_s"] == pytest.approx(0.05)
    assert out["perf_model"]["factors"]["weight_read"] > 1
    (opt,) = out["options"]
    assert opt["tp"] == 2 and opt["replicas_at_slo"] == math.ceil(100 / opt["replica_rps"])
    assert out["total_gpus"] == 2 * (opt["replicas"] + out["spares"])
    assert out["cost"]["usd_per_gpu_hour"] == 3.0  # the H100 default in server/pricing.py
    assert out["sensitivity"] == [] and out["gpu_range"] is None
    assert out["operating_point"]["prefill_share"] > 0 and out["failover"][0]["spares"] == 0


def test_capacity_cli_table() -> None:
    app = typer.Typer()
    cli_tools.register(app)
    args = "capacity --model mistral-7b --gpu h100 --target-rps 50 --tp 1 --input-len 200 --output-len 50"
    res = CliRunner().invoke(app, [*args.split(), "--no-sensitivity"])
    assert res.exit_code == 0, res.output
    assert "recommended: TP1" in res.output and "Inputs" in res.output


# ---- cost, headroom, per-request goodput, N+k, sensitivity, presets (issue 13) ------------------


def test_fleet_cost_by_hand() -> None:
    c = FleetCost(gpus=3904, usd_per_gpu_hour=3.0, target_rps=10_000, input_len=1000, output_len=250)
    assert c.usd_per_hour == 11_712.0  # 3,904 x $3
    assert c.usd_per_month == pytest.approx(11_712 * 730)  # $8,549,760
    # 10,000 req/s x 250 tokens x 3,600 s = 9e9 output tokens an hour
    assert c.usd_per_million_output_tokens == pytest.approx(11_712 / 9e9 * 1e6)  # $1.3013
    assert c.usd_per_million_tokens == pytest.approx(11_712 / (10_000 * 1250 * 3600) * 1e6)


def test_default_prices_have_sources() -> None:
    for gpu in catalog.GPUS:
        p = default_price(gpu)
        assert p.low <= p.usd_per_hour <= p.high and p.source
    with pytest.raises(KeyError, match="gpu-hourly-usd"):
        default_price("tpu")


def test_replicas_with_headroom_by_hand() -> None:
    assert replicas_for(10_000, 25.65, 1.0) == 390  # 389.9
    assert replicas_for(10_000, 25.65, 0.8) == 488  # 487.3
    assert replicas_for(10_000, 25.0, 0.8) == 500  # exactly 500, not 501 from float noise


def small(**kw: object) -> CapacityQuery:
    """Mixtral-8x7B on two H100s, 1,000 + 100 tokens: a TPOT-bound plan in well under a second."""
    base: dict[str, object] = {
        "model": "mixtral-8x7b", "gpu": "h100", "tp": 2, "target_rps": 40, "input_len": 1000,
        "output_len": 100, "p95_ttft_s": 0.3, "p95_tpot_s": 0.03, **FAST, **ONLY_SIZING,
    }
    base.update(kw)
    return CapacityQuery(**base)  # type: ignore[arg-type]


def test_headroom_and_cost_follow_the_replica_rate() -> None:
    p = plan(small(target_utilization=0.5, gpu_hourly_usd=2.0))
    rec = p.recommended
    assert rec is not None
    assert rec.replicas_at_slo == math.ceil(40 / rec.replica_rps)
    assert rec.replicas == math.ceil(40 / (0.5 * rec.replica_rps))
    cost = p.cost()
    assert cost is not None and cost.gpus == 2 * rec.replicas and cost.usd_per_hour == 2.0 * cost.gpus
    assert p.point is not None and 0 < p.point.prefill_share < 1 and p.point.batch_seqs_mean >= 1


def test_per_request_goodput_is_the_stricter_reading() -> None:
    lenient = plan(small()).recommended
    strict = plan(small(slo_basis="per-request")).recommended
    assert lenient is not None and strict is not None
    assert strict.replica_rps <= lenient.replica_rps
    assert strict.good_share >= 0.95


def test_n_plus_k_from_a_simulated_failure() -> None:
    # No headroom and a 3-replica fleet: losing one puts 1.5x the load on each survivor.
    p = plan(small(target_utilization=1.0, failover=True, failure_at_s=10.0, failure_window_s=10.0))
    rec = p.recommended
    assert rec is not None and p.failover
    first = p.failover[0]
    assert first.spares == 0 and first.fleet == rec.replicas and first.cell == min(rec.replicas, 16)
    assert first.cell_rps == pytest.approx(first.cell * 40 / first.fleet)
    assert first.retried > 0
    for t in p.failover:
        assert t.ok == (t.p95_ttft_s <= 0.3 and t.p95_tpot_s <= 0.03)
    assert [t.ok for t in p.failover[:-1]] == [False] * (len(p.failover) - 1)
    assert p.spares == (p.failover[-1].spares if p.failover[-1].ok else None)
    assert p.total_replicas == rec.replicas + (p.spares or 0)


def test_sensitivity_moves_the_answer_the_right_way() -> None:
    p = plan(small(sensitivity=True))
    rows = {(r.factor, r.value): r for r in p.sensitivity}
    assert set(f for f, _ in rows) == {*FACTOR_RANGES, "all"}
    slow, fast = rows[("compute", "2.5")], rows[("compute", "1.4")]
    assert slow.replica_rps <= fast.replica_rps
    assert rows[("all", "high")].gpus >= rows[("all", "low")].gpus
    lo, hi = p.gpu_range()  # type: ignore[misc]
    assert lo == min(r.gpus for r in p.sensitivity) and hi == max(r.gpus for r in p.sensitivity)


def test_preset_sizes_with_its_own_engine_settings() -> None:
    q = query_for_preset("mixtral-8x22b-fp8-tp4", target_rps=100, input_len=1000, output_len=250,
                         p95_ttft_s=1.0, p95_tpot_s=0.05)
    assert (q.model, q.gpu, q.tp, q.dtype, q.max_num_seqs) == ("mixtral-8x22b", "h100", 4, "fp8", 256)
    # fp8 at TP4 has KV room for 527 sequences of 1,250 tokens; the preset's cap of 256 binds
    assert memory_option(q, 4).max_concurrent_seqs == 256
    assert memory_option(replace(q, max_num_seqs=1024), 4).max_concurrent_seqs == 527
    with pytest.raises(ValueError, match="max_model_len 32768"):
        query_for_preset("mixtral-8x22b-fp8-tp4", target_rps=1, input_len=32000, output_len=1000,
                         p95_ttft_s=1.0, p95_tpot_s=0.05)


def test_bad_headroom_is_refused() -> None:
    with pytest.raises(ValueError, match="utilisation"):
        plan(small(target_utilization=1.5))


def test_capacity_cli_preset_and_answer_table() -> None:
    app = typer.Typer()
    cli_tools.register(app)
    args = ("capacity --preset mistral-7b-h100 --target-rps 40 --input-len 200 --output-len 40 "
            "--p95-ttft 500ms --p95-tpot 30ms --no-failover --no-sensitivity --gpu-hourly-usd 2")
    res = CliRunner().invoke(app, args.split())
    assert res.exit_code == 0, res.output
    assert "mistral-7b-h100" in res.output and "Answer" in res.output and "$/M output tokens" in res.output
    assert "max_num_seqs / max_num_batched_tokens │ 256 / 8192" in res.output
    assert "layout                                │ tp" in res.output
    bad = CliRunner().invoke(app, ["capacity", "--preset", "nope"])
    assert bad.exit_code == 2 and "unknown preset 'nope'" in bad.output


def test_capacity_cli_sizes_an_expert_parallel_layout() -> None:
    app = typer.Typer()
    cli_tools.register(app)
    args = ("capacity --model mixtral-8x7b --tp 8 --layout ep --expert-skew 1.5 --target-rps 100 "
            "--input-len 500 --output-len 50 --no-failover --no-sensitivity --json")
    res = CliRunner().invoke(app, args.split())
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["query"]["layout"], out["query"]["expert_skew"]) == ("ep", 1.5)
    assert out["perf_model"]["layout"] == "ep"
    bad = CliRunner().invoke(app, ["capacity", "--layout", "pp"])
    assert bad.exit_code == 2 and "--layout must be tp, ep or dp-ep" in bad.output


def test_losing_a_node_of_two_replicas_needs_more_spares_than_losing_one() -> None:
    one = plan(small(target_utilization=1.0, failover=True, failure_at_s=10.0, failure_window_s=10.0))
    two = plan(small(target_utilization=1.0, failover=True, failure_at_s=10.0, failure_window_s=10.0,
                     lost_replicas=2))
    # a 3-replica fleet at its SLO limit: losing one needs spares; losing two at once needs more
    # (here more than max_spares = 4, so no k is found and the plan says so)
    assert one.spares is not None
    assert two.spares is None or two.spares > one.spares
    assert len(two.failover) > len(one.failover)
    first = two.failover[0]
    assert first.fleet == two.recommended.replicas  # type: ignore[union-attr]
    assert first.retried > one.failover[0].retried  # two replicas' streams dropped, not one
    with pytest.raises(ValueError, match="at least one replica"):
        plan(small(lost_replicas=0))
