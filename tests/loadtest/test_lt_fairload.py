"""The fairness scenario's load generator against a real upstream: one record per request, per tenant."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from loadtest.fairload import report, run_workload
from server.sim.tenantfront import TenantWorkload


def test_tenants_send_on_their_own_schedules_and_every_request_is_recorded(
    fast_upstream: Callable[..., str],
) -> None:
    base = fast_upstream(tokens=8, ttft_ms=20, itl_ms=2, model="m")
    wl = TenantWorkload.from_dict(
        {
            "duration_s": 3.0,
            "seed": 1,
            "tenants": {
                "light": {"rate": 3.0, "input_len": 64, "output_len": 8},
                "heavy": {"backlogged": 2, "input_len": 128, "output_len": 8},
            },
        }
    )
    records = asyncio.run(run_workload([base], {"light": "k1", "heavy": "k2"}, wl, "m", client_timeout_s=10))
    by = {t: [r for r in records if r.tenant == t] for t in ("light", "heavy")}
    assert 2 <= len(by["light"]) <= 25
    assert len(by["heavy"]) > len(by["light"])  # closed loop with 2 outstanding at 20+ ms each
    for r in records:
        assert r.outcome == "ok", r
        assert r.input_len > 0 and r.output_len == 8
        assert r.arrival_s <= r.first_token_s <= r.finish_s and not math.isnan(r.finish_s)
    rep = report(records, wl, warmup_s=0.5, backlogged=("heavy",))
    assert rep.tenants["light"].ttft_p95_s < 2.0 and rep.tenants["heavy"].service_rate > 0


def test_a_schedule_is_replayed_request_for_request(fast_upstream: Callable[..., str]) -> None:
    # the live twin of an offline run sends exactly its requests: same tenants, times and lengths
    base = fast_upstream(tokens=8, ttft_ms=5, itl_ms=1, model="m")
    wl = TenantWorkload.from_dict({"duration_s": 1.0, "tenants": {"a": {"rate": 50.0}, "b": {"rate": 50.0}}})
    schedule = [(0.0, "a", 40, 8), (0.3, "b", 90, 8), (0.6, "a", 12, 8)]
    records = asyncio.run(
        run_workload([base], {"a": "k1", "b": "k2"}, wl, "m", client_timeout_s=10, schedule=schedule)
    )
    assert [r.tenant for r in records] == ["a", "b", "a"]  # not the 50/s Poisson draws
    for r, (at, _, _, _) in zip(records, schedule, strict=True):
        assert r.outcome == "ok" and at <= r.arrival_s < at + 0.25, r
    assert [r.output_len for r in records] == [8, 8, 8]
