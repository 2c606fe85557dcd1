"""`sweep` on the simulator server: the measured knee lies where the offline simulator predicts it.

The simulator's engine clock runs at half real speed (--speedup 0.5) and the workload is
prefill-heavy (4096-token prompts, 16-token outputs), so the engine saturates at a few real
requests per second: enough steps fit in ~25 s and the HTTP work stays light on a 2-core box.
The prediction (loadtest/predict.py) runs the same model/GPU/TP and the same per-step request
counts through `server.sim.offline.simulate` and applies the same knee rule.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest import report
from loadtest.runner import Plan, execute
from loadtest.stats import Slo
from loadtest.workloads import LengthDist, WorkloadSpec

RATES = [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
STEP_S = 4.0
SLO = Slo(ttft_s=1.75, tpot_s=0.75)
SPEEDUP = 0.5


@pytest.mark.slow
def test_sweep_knee_within_20_percent_of_offline_simulator(
    sim_server: Callable[..., str], tmp_path: Path
) -> None:
    base = sim_server("--speedup", str(SPEEDUP))
    wl = WorkloadSpec(input=LengthDist("fixed", 4096), output=LengthDist("fixed", 16), n=32)
    plan = Plan(
        scenario="sweep",
        target=base,
        model="mixtral-8x7b",
        keys={"default": "sk-none"},
        workload=wl,
        duration_s=STEP_S * len(RATES),
        rates={"default": RATES},
        slo=SLO,
        drain_s=30,
        predict={"model": "mixtral-8x7b", "gpu": "h100", "tp": "2", "dtype": "bf16", "speedup": str(SPEEDUP)},
    )
    s = report.build(execute(plan, tmp_path, log=print), plan)
    steps = s["steps"]
    assert [st["offered_rps"] for st in steps] == RATES
    assert all(st["achieved_rps"] == pytest.approx(st["offered_rps"], rel=0.05) for st in steps)
    assert s["metrics_urls"] == [f"{base}/metrics"]  # found on its own: the target is a backend
    assert s["serverside"]["tokens_match"] is True
    measured = s["knee"]["rate_rps"]
    # The prediction (loadtest/predict.py via report.build) is fed the run's server-counted mean
    # prompt tokens (content + chat template) and completion tokens.
    pred = s["prediction"]
    print(
        "predicted",
        [(p["rate_rps"], round(p["ttft_p95_s"], 3), round(p["tpot_p95_s"], 3)) for p in pred["steps"]],
        "knee",
        pred["knee_rps"],
        "measured",
        measured,
        [
            (
                st["offered_rps"],
                round(st["summary"]["ttft"]["p95"], 3),
                round(st["summary"]["tpot"]["p95"], 3),
            )
            for st in steps
        ],
    )
    assert pred["inputs"]["tp"] == 2 and pred["inputs"]["output_len"] == 16
    assert pred["knee_rps"] is not None and measured is not None
    assert abs(measured - pred["knee_rps"]) <= 0.2 * pred["knee_rps"]
    assert "Offline simulator" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "sweep.png").exists()
