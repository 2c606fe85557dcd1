"""`servelab simulate --tenants FILE`: a multi-tenant workload through the fairness front, offline.

The YAML file names tenants with their rates (or a backlog), length distributions, weights and
tiers (server/sim/tenantfront.py `TenantWorkload.from_dict`), e.g.

    duration_s: 120
    tenants:
      steady: {rate: 2.0, input_len: "uniform:256:768", output_len: "uniform:32:224"}
      noisy:  {rate: 20.0, input_len: 512, output_len: 128}
      bulk:   {rate: 5.0, input_len: 512, output_len: 128, tier: batch, sheddable: true}

and prints, per tenant, what loadtest/fairstats.py computes: p50/p95 TTFT, service rate, its
max-min fair share and attainment, refusals; then Jain's index and the throughput.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from gateway.config import Fairness
from gateway.fairness import send_ahead_allowance
from loadtest.fairstats import analyse
from server.sim.offline import build_cost_model
from server.sim.tenantfront import FrontConfig, TenantWorkload, run


def simulate_tenants(
    path: Path,
    *,
    model: str,
    gpu: str,
    tp: int,
    dtype: str,
    replicas: int,
    max_num_seqs: int,
    front: str,
    gateways: int,
    engine_priority: bool,
    warmup_s: float,
    json_out: Path | None,
) -> list[str]:
    """Run the file's workload; returns the printed lines (and writes JSON when asked)."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or "tenants" not in data or "duration_s" not in data:
        raise ValueError(f"{path}: expected a mapping with duration_s and tenants")
    wl = TenantWorkload.from_dict(data)
    cost, blocks, _ = build_cost_model(model, gpu, tp=tp, dtype=dtype)
    cfg = FrontConfig(
        front=front,  # type: ignore[arg-type]  # checked by the CLI
        gateways=gateways,
        backends=replicas,
        slots_per_backend=max_num_seqs,
        engine_priority=engine_priority,
        # as a gateway with a `fairness` block does by default (gateway/config.py, gateway/vtcsync.py)
        burst_allowance=Fairness.model_fields["burst_tokens"].default,
        overdispatch=send_ahead_allowance(max_num_seqs, replicas, gateways) if engine_priority else 0,
    )
    res = run(wl, cfg, cost, blocks, max_num_seqs=max_num_seqs)
    backlogged = [t.name for t in wl.tenants if t.backlogged]
    rep = analyse(
        res.records,
        weights={t.name: t.weight for t in wl.tenants},
        end_s=wl.duration_s,
        warmup_s=warmup_s,
        backlogged=backlogged,
    )
    lines = [
        f"front {front}, {gateways} gateway(s), {replicas} replica(s) of {model} on {tp}x {gpu}, "
        f"{len(res.records)} requests in {res.wall_s:.2f} s wall",
        f"{'tenant':<16}{'p50 TTFT s':>11}{'p95 TTFT s':>11}{'service/s':>11}{'fair/s':>10}"
        f"{'attain':>8}{'refused':>9}{'timeout':>9}",
    ]
    for t, s in rep.tenants.items():
        lines.append(
            f"{t:<16}{s.ttft_p50_s:>11.2f}{s.ttft_p95_s:>11.2f}{s.service_rate:>11.0f}"
            f"{s.fair_share:>10.0f}{s.attainment:>8.2f}{s.shed:>9}{s.timed_out:>9}"
        )
    lines.append(
        f"Jain over max-min share attainment {rep.jain:.3f}; "
        f"throughput {rep.throughput_tokens_per_s:,.0f} tokens/s (service = input + 2 x output tokens)"
    )
    if json_out is not None:
        out: dict[str, Any] = {
            "inputs": res.inputs,
            "jain": rep.jain,
            "throughput_tokens_per_s": rep.throughput_tokens_per_s,
            "tenants": {t: s.__dict__ for t, s in rep.tenants.items()},
        }
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=2, default=str))
        lines.append(f"wrote {json_out}")
    return lines
