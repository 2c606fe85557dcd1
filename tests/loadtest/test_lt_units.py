"""Fast unit tests of pure logic: arrivals, workloads, stats, analysis, server-side parsing."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import yaml

from loadtest import analysis, serverside, workloads
from loadtest.arrivals import Pacer, Step, gaps, schedule
from loadtest.rows import Row, RowWriter, merge, read_run
from loadtest.runconfig import RunConfig, StepModel, Stream
from loadtest.stats import Dist, Slo, achieved_rate, summarize


def _row(
    seq: int = 1,
    *,
    tenant: str = "a",
    step: int = 0,
    start: float = 0.0,
    status: int = 200,
    ttft: float = 0.1,
    e2e: float = 1.0,
    prompt: int = 10,
    completion: int = 10,
    gaps_s: tuple[float, ...] = (0.1,),
) -> Row:
    tpot = (e2e - ttft) / (completion - 1) if completion > 1 and status == 200 else math.nan
    return Row(
        seq,
        0,
        tenant,
        step,
        start,
        0.0,
        status,
        "" if status == 200 else f"HTTP {status}: x",
        ttft if status == 200 else math.nan,
        e2e,
        tpot,
        prompt if status == 200 else -1,
        completion if status == 200 else -1,
        len(gaps_s) + 1,
        " ".join(repr(g) for g in gaps_s),
    )


# --- arrivals ---------------------------------------------------------------------------------


def test_gaps_span_the_window_exactly_so_the_achieved_rate_is_the_asked_rate() -> None:
    rng = np.random.default_rng(1)
    g = gaps(7.3, 10.0, 1.0, rng)
    assert len(g) == 73
    assert g.sum() == pytest.approx(10.0)


def test_poisson_gaps_have_cv_one_and_gamma_burstiness_changes_it() -> None:
    rng = np.random.default_rng(2)
    poisson = gaps(1000, 100, 1.0, rng)
    bursty = gaps(1000, 100, 0.25, rng)
    assert poisson.std() / poisson.mean() == pytest.approx(1.0, rel=0.03)
    assert bursty.std() / bursty.mean() == pytest.approx(2.0, rel=0.05)  # CV of gamma = 1/sqrt(shape)


def test_schedule_steps_are_consecutive_and_tagged() -> None:
    arr = schedule([Step(2, 5), Step(4, 5)], seed=0)
    assert [a.step for a in arr].count(0) == 10 and [a.step for a in arr].count(1) == 20
    assert all(a.at_s <= 5.0 + 1e-9 for a in arr if a.step == 0)
    assert all(5.0 < a.at_s <= 10.0 + 1e-9 for a in arr if a.step == 1)
    assert arr == sorted(arr, key=lambda a: a.at_s)


def test_pacer_starts_its_clock_at_the_first_claim_and_splits_work_across_workers() -> None:
    arr = schedule([Step(10, 1)], seed=3)
    now = [100.0]
    p = Pacer(arr, lambda: now[0])
    first = p.claim()
    assert first is not None and first[0] == pytest.approx(100.0 + arr[0].at_s)
    w0 = Pacer(arr, lambda: 0.0, worker_index=0, worker_count=3)
    w1 = Pacer(arr, lambda: 0.0, worker_index=1, worker_count=3)
    w2 = Pacer(arr, lambda: 0.0, worker_index=2, worker_count=3)
    assert w0.total + w1.total + w2.total == 10
    claimed = []
    for p_ in (w0, w1, w2):
        while (c := p_.claim()) is not None:
            claimed.append(c[0])
    assert sorted(claimed) == pytest.approx([a.at_s for a in arr])
    assert w0.claim() is None


# --- workloads --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def counter() -> workloads.MistralTokenCounter:
    return workloads.MistralTokenCounter("v1")


def test_prompts_have_exact_token_lengths_under_mistral_tokenizer(
    counter: workloads.MistralTokenCounter,
) -> None:
    spec = workloads.WorkloadSpec(
        input=workloads.LengthDist("uniform", 100, low=5, high=300),
        output=workloads.LengthDist("lognormal", 50, sigma=0.5),
        n=40,
        seed=4,
    )
    items = workloads.build(spec, counter)
    assert len(items) == 40
    for it in items:
        assert len(counter.encode(it.prompt)) == it.prompt_tokens
        assert 5 <= it.prompt_tokens <= 300
        assert it.max_tokens >= 1
    assert workloads.build(spec, counter) == items  # seeded


def test_shared_prefix_is_common_to_all_prompts(counter: workloads.MistralTokenCounter) -> None:
    spec = workloads.WorkloadSpec(input=workloads.LengthDist("fixed", 200), prefix_share=0.5, n=8)
    items = workloads.build(spec, counter)
    prefixes = {" ".join(it.prompt.split()[:100]) for it in items}
    assert len(prefixes) == 1
    assert len({it.prompt for it in items}) == 8
    assert all(len(counter.encode(it.prompt)) == 200 for it in items)


def test_sharegpt_like_lengths_obey_vllm_filter_and_published_means() -> None:
    rng = np.random.default_rng(0)
    ins, outs = workloads.sharegpt_lengths(rng, 20000)
    assert ins.max() <= 1024 and (ins + outs).max() <= 2048 and min(ins.min(), outs.min()) >= 4
    assert ins.mean() == pytest.approx(workloads.SHAREGPT_MEAN_IN, rel=0.03)
    assert outs.mean() == pytest.approx(workloads.SHAREGPT_MEAN_OUT, rel=0.03)


# --- stats ------------------------------------------------------------------------------------


def test_percentiles_are_numpys_linear_percentiles_over_every_row() -> None:
    values = [0.013, 0.5, 0.021, 0.0105, 0.2, 0.07]
    d = Dist.of(values)
    assert d.p50 == pytest.approx(float(np.percentile(values, 50)))
    assert d.p99 == pytest.approx(float(np.percentile(values, 99)))
    assert d.n == 6 and d.max == 0.5


def test_tpot_itl_goodput_follow_vllm_definitions() -> None:
    rows = [
        _row(1, start=0.0, ttft=0.1, e2e=1.0, completion=10, gaps_s=(0.1,) * 9),  # tpot 0.1
        _row(2, start=1.0, ttft=0.5, e2e=0.6, completion=2, gaps_s=(0.1,)),  # tpot 0.1, ttft breaks
        _row(3, start=2.0, status=429, e2e=0.001),
        _row(4, start=3.0, ttft=0.05, e2e=0.05, completion=1, gaps_s=()),  # no TPOT: meets a TPOT SLO
    ]
    s = summarize(rows, Slo(ttft_s=0.2, tpot_s=0.1 + 1e-9))
    assert s.requests == 4 and s.ok == 3 and s.rate_limited == 1
    assert s.tpot.n == 2 and s.tpot.mean == pytest.approx(0.1)
    assert s.itl.n == 10  # pooled gaps of all requests
    assert s.span_s == pytest.approx(3.05)
    assert s.goodput_rps == pytest.approx(2 / 3.05)
    assert s.completion_tokens == 13


def test_rows_roundtrip_and_merge(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w0 = RowWriter(tmp_path / "rows-w0.csv")
    w1 = RowWriter(tmp_path / "rows-w1.csv")
    w0.write(_row(1, start=2.0))
    w1.write(_row(1, start=1.0, status=500))
    w0.close()
    w1.close()
    assert merge(tmp_path) == 2
    rows = read_run(tmp_path)
    assert [r.start_unix_s for r in rows] == [1.0, 2.0]
    assert math.isnan(rows[0].ttft_s) and rows[1].gaps() == [0.1]
    assert not list(tmp_path.glob("rows-w*.csv"))


# --- analysis ---------------------------------------------------------------------------------


def _config(rates: list[float], step_s: float) -> RunConfig:
    return RunConfig(
        scenario="sweep",
        target="http://x",
        model="m",
        duration_s=step_s * len(rates),
        streams=[
            Stream(tenant="a", users=4, steps=[StepModel(rate_rps=r, duration_s=step_s) for r in rates])
        ],
    )


def test_knee_is_the_highest_rate_before_the_first_breaking_step() -> None:
    rows = []
    ttfts = {0: 0.1, 1: 0.2, 2: 2.0, 3: 0.1}  # step 3 passes again but comes after a break
    for step, ttft in ttfts.items():
        rows += [_row(i, step=step, start=step * 10 + i, ttft=ttft, e2e=ttft + 0.9) for i in range(10)]
    steps = analysis.sweep_steps(rows, _config([1, 2, 3, 4], 10), Slo(ttft_s=1.0))
    assert [s.meets_slo for s in steps] == [True, True, False, True]
    k = analysis.knee(steps)
    assert k.rate_rps == 2 and k.first_breaking_rps == 3


def test_ratelimit_check_uses_token_bucket_allowance_and_flags_loose_limits() -> None:
    # 60 rpm bucket starting full over a 10 s window allows 60 + 10 = 70 requests.
    rows = [_row(i, start=i * 0.05) for i in range(70)] + [
        _row(100 + i, start=0.01 + i * 0.05, status=429) for i in range(130)
    ]
    rows.append(_row(999, start=10.0, status=429))
    checks = analysis.ratelimit_checks(rows, {"a": {"rpm": 60}})
    (c,) = checks
    assert c.allowed == pytest.approx(70.0) and c.admitted == 70 and c.verdict == "holds"
    loose = analysis.ratelimit_checks(rows, {"a": {"rpm": 30}})[0]
    assert loose.ratio > 1.02 and loose.verdict == "looser than configured"


# --- server side ------------------------------------------------------------------------------

METRICS_BEFORE = """
vllm:prompt_tokens_total{model_name="m"} 100.0
vllm:generation_tokens_total{model_name="m"} 50.0
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 1.0
"""
METRICS_AFTER = """
vllm:prompt_tokens_total{model_name="m"} 130.0
vllm:generation_tokens_total{model_name="m"} 70.0
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 5.0
vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="m"} 10.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 11.0
"""


def test_server_deltas_match_client_totals_and_ttft_bucket_check() -> None:
    d = serverside.delta(serverside.parse(METRICS_BEFORE), serverside.parse(METRICS_AFTER))
    cc = serverside.cross_check(d, 30, 20, 10, {"p50": 0.12, "p95": 0.3})
    assert cc.tokens_match is True
    assert cc.ttft_buckets["p50"]["server_bucket_lo_s"] == 0.1  # 4 of 10 at or under 0.1 s
    assert serverside.cross_check(d, 31, 20, 10, {}).tokens_match is False


def test_bucket_of_quantile() -> None:
    b = {0.1: 4.0, 0.5: 9.0, math.inf: 10.0}
    assert serverside.bucket_of_quantile(b, 0.4) == (0.0, 0.1)
    assert serverside.bucket_of_quantile(b, 0.5) == (0.1, 0.5)
    assert serverside.bucket_of_quantile(b, 0.95) == (0.5, math.inf)


def test_closed_loop_sweep_steps_by_user_count() -> None:
    config = RunConfig(
        scenario="sweep",
        target="http://x",
        model="m",
        duration_s=30,
        user_steps=[1, 2, 4],
        streams=[Stream(tenant="a", users=4)],
    )
    rows = []
    for step, (n, ttft) in enumerate([(10, 0.1), (20, 0.2), (25, 3.0)]):
        rows += [_row(i, step=step, start=step * 10 + i * 0.1, ttft=ttft, e2e=ttft + 0.5) for i in range(n)]
    steps = analysis.sweep_steps(rows, config, Slo(ttft_s=1.0))
    assert [s.users for s in steps] == [1, 2, 4]
    assert [s.achieved_rps for s in steps] == pytest.approx([1.0, 2.0, 2.5])
    k = analysis.knee(steps)
    assert k.users == 2 and k.rate_rps == pytest.approx(2.0)


def test_achieved_rate_drops_when_sends_fall_behind_schedule() -> None:
    on_time = [_row(i, start=100 + i * 0.1) for i in range(1, 11)]  # due = send, last due at 101.0
    assert achieved_rate(on_time, 1.0) == pytest.approx(10.0)
    late = [
        replace(r, start_unix_s=r.start_unix_s + 0.1 * i, lag_s=0.1 * i) for i, r in enumerate(on_time, 1)
    ]
    assert achieved_rate(late, 1.0) == pytest.approx(10 / 2.0)  # last send 1 s late: 10 requests in 2 s


# --- CLI parsing ------------------------------------------------------------------------------


def test_cli_option_parsers() -> None:
    import typer

    from loadtest.cli import parse_duration, parse_keys, parse_limits

    assert parse_duration("60s") == 60 and parse_duration("1.5m") == 90 and parse_duration("500ms") == 0.5
    assert parse_duration("2") == 2
    with pytest.raises(typer.BadParameter, match="not a duration"):
        parse_duration("soon")
    assert parse_keys(["sk-a", "sk-b"]) == {"default": "sk-a", "t1": "sk-b"}
    assert parse_keys(["acme=sk-1", "noisy=sk-2"]) == {"acme": "sk-1", "noisy": "sk-2"}
    assert parse_limits(["acme:rpm=600,tpm=20000"]) == {"acme": {"rpm": 600.0, "tpm": 20000.0}}
    with pytest.raises(typer.BadParameter, match="unknown limit 'rps'"):
        parse_limits(["acme:rps=10"])


def test_limits_from_the_gateway_config_use_the_effective_plan(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from loadtest.cli import limits_from_gateway_config

    plan = {
        "requests_per_minute": 600,
        "tokens_per_minute": 200000,
        "tokens_per_month": 10**8,
        "max_concurrent_requests": 32,
    }
    cfg = {
        "plans": {"std": plan},
        "tenants": {"a": {"plan": "std"}, "b": {"plan": "std", "overrides": {"requests_per_minute": 5}}},
        "models": {"m": {"backends": ["http://127.0.0.1:1"]}},
    }
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    limits = limits_from_gateway_config(path, ["a", "b", "nobody"])
    assert limits == {"a": {"rpm": 600.0, "tpm": 200000.0}, "b": {"rpm": 5.0, "tpm": 200000.0}}
