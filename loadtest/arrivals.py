"""Arrival schedules and the shared pacer that makes the achieved rate the asked rate.

Open-loop load means requests arrive on a schedule that does not wait for the server: if the
server slows down, the queue grows, as it would with real users. A Locust user that sleeps a
random gap after each response is closed-loop in disguise (its rate falls as latency rises), so
instead every user of a process draws its next send time from one shared schedule (`Pacer`).

The schedule is drawn once per run: `n = round(rate * duration)` arrivals whose gaps are gamma
distributed (shape = burstiness; 1.0 is Poisson, as in vLLM's `--burstiness`), normalised so the
n gaps span exactly `duration`. For Poisson this is the exact conditional law of a Poisson
process given n arrivals in the window (uniform order statistics), so the gap distribution is
the asked one and the achieved rate is n / duration, not n / duration +- sqrt(n) noise.
A `Schedule` can be piecewise (steps of rising rates for `sweep`); each arrival carries the index
of its step. In master/worker mode worker i of W takes arrivals i, i+W, ... of the same schedule.

Pure logic with an injected clock: no Locust or gevent import here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Step:
    """`rate_rps` arrivals per second for `duration_s` seconds."""

    rate_rps: float
    duration_s: float


@dataclass(frozen=True)
class Arrival:
    """One scheduled send: seconds after the schedule's start, and its step index."""

    at_s: float
    step: int


def gaps(rate_rps: float, duration_s: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Gamma(shape=burstiness) gaps, round(rate*duration) of them, scaled to sum to `duration_s`.

    The first arrival is one gap after the window opens and the last at its end, so a window of
    length D holds exactly n arrivals: achieved rate n / D.
    """
    n = round(rate_rps * duration_s)
    if n <= 0:
        return np.zeros(0)
    raw = rng.gamma(shape=burstiness, scale=1.0, size=n)
    return raw * (duration_s / raw.sum())


def schedule(steps: Sequence[Step], burstiness: float = 1.0, seed: int = 0) -> list[Arrival]:
    """Arrivals of consecutive steps, each step's window starting where the previous one ended."""
    rng = np.random.default_rng(seed)
    out: list[Arrival] = []
    start = 0.0
    for index, step in enumerate(steps):
        times = start + np.cumsum(gaps(step.rate_rps, step.duration_s, burstiness, rng))
        out.extend(Arrival(float(t), index) for t in times)
        start += step.duration_s
    return out


class Pacer:
    """Hands out this process's share of a schedule, in order, to whichever user is free.

    `claim()` returns the next arrival (its absolute due time on the injected clock, and the
    step) or None when the schedule is exhausted. The clock starts at the first claim, so
    start-up time of the load generator never shows up as a burst of late sends. Cooperative
    (gevent) scheduling means no lock is needed: claim() never yields.
    """

    def __init__(
        self,
        arrivals: Sequence[Arrival],
        clock: Callable[[], float],
        worker_index: int = 0,
        worker_count: int = 1,
    ) -> None:
        self._mine = list(arrivals[worker_index::worker_count])
        self._clock = clock
        self._next = 0
        self.t0: float | None = None

    def claim(self) -> tuple[float, int] | None:
        if self.t0 is None:
            self.t0 = self._clock()
        if self._next >= len(self._mine):
            return None
        arrival = self._mine[self._next]
        self._next += 1
        return self.t0 + arrival.at_s, arrival.step

    @property
    def remaining(self) -> int:
        return len(self._mine) - self._next

    @property
    def total(self) -> int:
        return len(self._mine)
