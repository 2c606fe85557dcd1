"""The fairness policy in front of offline engines: same policy as the gateway, measurable effects."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from loadtest.fairstats import FairnessReport, analyse
from server.sim.engine import LinearCost
from server.sim.tenantfront import Front, FrontConfig, FrontResult, TenantWorkload, run

COST = LinearCost(fixed_s=0.01, per_prefill_token_s=0.00002, per_decode_seq_s=0.0005)
BLOCKS = 4096


def _noisy(duration_s: float = 60.0) -> TenantWorkload:
    # capacity with 4 slots of ~(0.01 s x 50 steps) is about 8 req/s; offer 2x
    return TenantWorkload.from_dict(
        {
            "duration_s": duration_s,
            "tenants": {
                "steady": {"rate": 1.5, "input_len": 100, "output_len": "uniform:30:70"},
                "noisy": {"rate": 14.0, "input_len": 100, "output_len": "uniform:30:70"},
            },
        }
    )


def _report(
    front: Front, wl: TenantWorkload, backlogged: tuple[str, ...] = (), engine_priority: bool = False
) -> tuple[FrontResult, FairnessReport]:
    cfg = FrontConfig(front=front, slots_per_backend=4, engine_priority=engine_priority)
    res = run(wl, cfg, COST, BLOCKS, max_num_seqs=4)
    weights = {t.name: t.weight for t in wl.tenants}
    return res, analyse(
        res.records, weights=weights, end_s=wl.duration_s, warmup_s=5.0, backlogged=backlogged
    )


def test_vtc_protects_a_steady_tenant_that_fcfs_does_not() -> None:
    _, fcfs = _report("fcfs", _noisy())
    _, vtc = _report("vtc", _noisy())
    assert vtc.tenants["steady"].ttft_p95_s < 0.25 * fcfs.tenants["steady"].ttft_p95_s
    assert vtc.jain > 0.98 > fcfs.jain
    # work conserving: the same tokens get through
    assert vtc.throughput_tokens_per_s == pytest.approx(fcfs.throughput_tokens_per_s, rel=0.05)


@pytest.mark.parametrize("w_big", [1.0, 2.0])
def test_backlogged_tenants_get_token_service_in_the_weights_ratio(w_big: float) -> None:
    wl = TenantWorkload.from_dict(
        {
            "duration_s": 60.0,
            "tenants": {
                "big": {"backlogged": 8, "input_len": 800, "output_len": 80, "weight": w_big},
                "small": {"backlogged": 8, "input_len": 100, "output_len": 10},
            },
        }
    )
    _, rep = _report("vtc", wl, ("big", "small"))
    ratio = rep.tenants["big"].service_rate / rep.tenants["small"].service_rate
    assert ratio == pytest.approx(w_big, rel=0.10)
    _, fcfs = _report("fcfs", wl, ("big", "small"))
    assert fcfs.tenants["big"].service_rate / fcfs.tenants["small"].service_rate > 4


def test_sheddable_tier_is_shed_and_interactive_stays_fast() -> None:
    wl = TenantWorkload.from_dict(
        {
            "duration_s": 40.0,
            "tenants": {
                "chat": {"rate": 3.0, "input_len": 100, "output_len": 50, "tier": "interactive"},
                "bulk": {
                    "rate": 14.0,
                    "input_len": 100,
                    "output_len": 50,
                    "tier": "batch",
                    "sheddable": True,
                },
            },
        }
    )
    res, rep = _report("vtc", wl, engine_priority=True)
    assert rep.tenants["bulk"].shed > 0
    assert not any(r.outcome == "shed" for r in res.records if r.tenant == "chat")
    assert rep.tenants["chat"].ttft_p95_s < 1.0


def test_simulate_tenants_reads_a_workload_file_and_reports_per_tenant(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from server.sim.tenantcli import simulate_tenants

    path = tmp_path / "tenants.yaml"
    path.write_text(
        "duration_s: 30\n"
        "tenants:\n"
        "  steady: {rate: 1.0, input_len: 256, output_len: 64}\n"
        "  bulk: {rate: 20.0, input_len: 256, output_len: 64, tier: batch, sheddable: true}\n"
    )
    lines = simulate_tenants(
        path,
        model="mixtral-8x7b",
        gpu="h100",
        tp=2,
        dtype="bf16",
        replicas=1,
        max_num_seqs=4,
        front="vtc",
        gateways=1,
        engine_priority=True,
        warmup_s=0.0,
        json_out=tmp_path / "out.json",
    )
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert set(rows) == {"bulk", "steady"}
    assert int(rows["bulk"][6]) > 0 and int(rows["steady"][6]) == 0  # only the sheddable tier is refused
    assert (tmp_path / "out.json").exists()
    with pytest.raises(ValueError, match="duration_s and tenants"):
        (tmp_path / "bad.yaml").write_text("tenants: {}\n")
        simulate_tenants(
            tmp_path / "bad.yaml",
            model="mixtral-8x7b",
            gpu="h100",
            tp=2,
            dtype="bf16",
            replicas=1,
            max_num_seqs=4,
            front="vtc",
            gateways=1,
            engine_priority=False,
            warmup_s=0.0,
            json_out=None,
        )


def test_replicas_scrape_on_their_own_phases_and_the_policy_holds_either_way() -> None:
    """Live gateway replicas scrape the backends on their own clocks; the offline front can
    stagger them (`stagger_scrapes`). Either way the policy protects the steady tenant."""
    wl = _noisy(40.0)
    reports = {}
    for stagger in (True, False):
        cfg = FrontConfig(front="vtc", gateways=2, backends=2, slots_per_backend=2, stagger_scrapes=stagger)
        res = run(wl, cfg, COST, BLOCKS, max_num_seqs=2)
        reports[stagger] = analyse(
            res.records, weights={"steady": 1.0, "noisy": 1.0}, end_s=wl.duration_s, warmup_s=5.0
        )
    for rep in reports.values():
        assert rep.tenants["steady"].unserved == 0
        assert rep.jain > 0.98
    assert reports[True].throughput_tokens_per_s == pytest.approx(
        reports[False].throughput_tokens_per_s, rel=0.05
    )


def test_pooled_percentile_counts_every_request_of_every_run_and_unserved_as_slowest() -> None:
    from loadtest.fairstats import pooled_ttft_pct

    _, a = _report("vtc", _noisy(20.0))
    _, b = _report("fcfs", _noisy(20.0))
    pooled = [t for rep in (a, b) for t in rep.ttfts["steady"]]
    assert all(rep.tenants["steady"].requests == len(rep.ttfts["steady"]) for rep in (a, b))
    # both runs' requests in one sample, interpolated as the per-tenant figures are
    assert pooled_ttft_pct([a, b], "steady", 50) == pytest.approx(float(np.percentile(pooled, 50)))
    assert pooled_ttft_pct([a], "steady", 95) == pytest.approx(a.tenants["steady"].ttft_p95_s)
    a.tenants["steady"] = dataclasses.replace(a.tenants["steady"], requests=len(a.ttfts["steady"]) * 3)
    assert pooled_ttft_pct([a], "steady", 95) == float("inf")  # two thirds never served
    assert pooled_ttft_pct([], "steady", 50) != pooled_ttft_pct([], "steady", 50)  # nan: nothing to pool
