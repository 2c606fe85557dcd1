"""The discrete-event simulator: metric definitions, closed/open loop, replicas, speed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.sim.engine import LinearCost
from server.sim.lengths import LengthDist
from server.sim.offline import Workload, simulate, weighted_percentiles

STEP = LinearCost(fixed_s=0.01, per_prefill_token_s=0.0, per_decode_seq_s=0.0)


def test_single_request_metrics_follow_vllm_benchmark_definitions() -> None:
    res = simulate(Workload(num_requests=1, input_len=10, output_len=5), cost_model=STEP, num_blocks=100)
    s = res.summary()
    assert s["ttft_mean_s"] == pytest.approx(0.01)
    assert s["e2e_mean_s"] == pytest.approx(0.05)
    assert s["tpot_mean_s"] == pytest.approx(0.01)  # (e2e - ttft) / (5 - 1)
    assert int(res.itl_counts.sum()) == 4 and s["itl_p99_s"] == pytest.approx(0.01)
    assert s["output_throughput"] == pytest.approx(5 / 0.05)


def test_closed_loop_concurrency_one_serialises_requests() -> None:
    res = simulate(Workload(num_requests=4, input_len=10, output_len=5, concurrency=1),
                   cost_model=STEP, num_blocks=100)
    assert res.duration_s == pytest.approx(4 * 0.05)
    assert np.allclose(res.ttft, 0.01)  # each request's clock starts when it is sent


def test_rate_inf_batches_everything_and_tpot_excludes_single_token_requests() -> None:
    res = simulate(Workload(num_requests=8, input_len=16, output_len=1), cost_model=STEP, num_blocks=100)
    s = res.summary()
    assert res.tpot.size == 0 and math.isnan(s["tpot_p50_s"])
    assert s["ttft_p99_s"] == pytest.approx(0.01)  # all 8 prompts fit one step


def test_replicas_share_load_least_loaded_first() -> None:
    one = simulate(Workload(num_requests=64, input_len=500, output_len=20),
                   cost_model=LinearCost(), num_blocks=1000, max_num_batched_tokens=512)
    four = simulate(Workload(num_requests=64, input_len=500, output_len=20), replicas=4,
                    cost_model=LinearCost(), num_blocks=1000, max_num_batched_tokens=512)
    assert four.summary()["request_throughput"] > 3 * one.summary()["request_throughput"]


def test_poisson_arrivals_are_seeded_and_rate_sets_throughput() -> None:
    wl = Workload(num_requests=400, input_len="uniform:50:150", output_len=20, rate=50.0, seed=3)
    a = simulate(wl, cost_model=LinearCost(), num_blocks=5000)
    b = simulate(wl, cost_model=LinearCost(), num_blocks=5000)
    assert np.array_equal(a.ttft, b.ttft)
    assert a.summary()["request_throughput"] == pytest.approx(50, rel=0.2)


def test_preemptions_and_kv_usage_are_reported() -> None:
    res = simulate(Workload(num_requests=50, input_len=100, output_len=100), cost_model=LinearCost(),
                   num_blocks=60)
    s = res.summary()
    assert s["preemptions"] > 0
    assert 0 < s["kv_usage_mean"] <= s["kv_usage_max"] <= 1


def test_weighted_percentiles_match_numpy_on_the_expanded_data() -> None:
    rng = np.random.default_rng(0)
    v = rng.random(50)
    c = rng.integers(1, 20, 50)
    expanded = np.repeat(v, c)
    assert weighted_percentiles(v, c, (1, 50, 95, 99)) == pytest.approx(
        list(np.percentile(expanded, [1, 50, 95, 99])))


@pytest.mark.parametrize(
    "spec", ["uniform:10:20", "lognormal:200:1:4:1024", "normal:100:10", "sharegpt-in", "7"])
def test_length_distributions_parse_and_clip(spec: str) -> None:
    d = LengthDist.parse(spec)
    x = d.sample(np.random.default_rng(0), 1000)
    assert x.min() >= d.lo and x.max() <= d.hi


def test_bad_length_spec_says_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="uniform:LO:HI"):
        LengthDist.parse("zipf:1")


def test_simulate_command_prints_table_and_writes_json(tmp_path) -> None:
    import json

    import typer
    from typer.testing import CliRunner

    from server import cli_engine

    app = typer.Typer()
    cli_engine.register(app)
    out = tmp_path / "sim.json"
    res = CliRunner().invoke(app, [
        "simulate", "--model", "mixtral-8x7b", "--gpu", "h100", "--tp", "2", "--num-requests", "64",
        "--input-len", "uniform:100:300", "--output-len", "32", "--rate", "20", "--replicas", "2",
        "--slo-ttft", "1", "--slo-tpot", "0.05", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "TTFT" in res.output and "goodput" in res.output
    data = json.loads(out.read_text())
    assert data["inputs"]["replicas"] == 2 and data["inputs"]["workload"]["rate"] == 20.0
    assert data["results"]["num_requests"] == 64
    assert data["inputs"]["perf_model"]["model"] == "mixtral-8x7b"


def test_serve_vllm_dry_run_prints_the_command() -> None:
    import typer
    from typer.testing import CliRunner

    from server import cli_engine

    app = typer.Typer()
    cli_engine.register(app)
    res = CliRunner().invoke(app, ["serve", "--engine", "vllm", "--preset", "mixtral-8x7b-bf16-tp2",
                                   "--port", "8123", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("vllm serve ") and "--port 8123" in res.output
