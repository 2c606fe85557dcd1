"""Where the offline simulator predicts a sweep's knee, for comparison with the measured one.

The simulator server can run its engine clock `speedup` times faster (or slower) than real
time. With engine time = speedup x real time, a real arrival rate r is an engine rate
r / speedup, and an engine latency L is a real latency L / speedup. So the real knee for a real
SLO T is speedup x (the engine knee for SLO T x speedup): we ask the offline simulator
(`server.sim.offline.simulate`, the engine behind `servelab simulate`) for p95 TTFT and TPOT at
each engine rate of the ladder, with as many requests as the measured step sends (a short step
starts with an almost empty queue, so its p95 sits below the steady state's near saturation),
take the median over a few seeds, and apply the same knee rule as analysis.knee. The inputs are
returned with the prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from loadtest.stats import Slo


@dataclass(frozen=True)
class PredictedStep:
    rate_rps: float  # real requests/s
    engine_rate_rps: float
    ttft_p95_s: float  # real seconds
    tpot_p95_s: float
    meets_slo: bool


@dataclass(frozen=True)
class Prediction:
    steps: list[PredictedStep]
    knee_rps: float | None
    inputs: dict


def predict_knee(
    rates: Sequence[float],
    step_s: float,
    slo: Slo,
    input_len: int,
    output_len: int,
    *,
    model: str = "mixtral-8x7b",
    gpu: str = "h100",
    tp: int = 2,
    dtype: str = "bf16",
    speedup: float = 1.0,
    min_requests: int = 1,
    seed: int = 0,
    seeds: int = 5,
) -> Prediction:
    from server.sim.offline import Workload, simulate

    steps = []
    for r in rates:
        n = max(min_requests, round(r * step_s))
        ttfts, tpots = [], []
        for k in range(seeds):
            res = simulate(
                Workload(
                    num_requests=n,
                    input_len=input_len,
                    output_len=output_len,
                    rate=r / speedup,
                    seed=seed + k,
                ),
                model=model,
                gpu=gpu,
                tp=tp,
                dtype=dtype,
            ).summary()
            ttfts.append(float(res["ttft_p95_s"]) / speedup)
            tpots.append(float(res["tpot_p95_s"]) / speedup)
        ttft, tpot = float(np.median(ttfts)), float(np.median(tpots))
        meets = (slo.ttft_s is None or ttft <= slo.ttft_s) and (slo.tpot_s is None or tpot <= slo.tpot_s)
        steps.append(PredictedStep(r, r / speedup, ttft, tpot, meets))
    knee = None
    for s in steps:
        if not s.meets_slo:
            break
        knee = s.rate_rps
    inputs = {
        "model": model,
        "gpu": gpu,
        "tp": tp,
        "dtype": dtype,
        "speedup": speedup,
        "input_len": input_len,
        "output_len": output_len,
        "step_s": step_s,
        "min_requests": min_requests,
        "seed": seed,
        "seeds": seeds,
        "slo": slo.__dict__,
    }
    return Prediction(steps, knee, inputs)
