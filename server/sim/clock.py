"""Clocks the engine's drivers read: the real monotonic clock, and a manual one for tests.

The engine itself takes times as arguments; only its drivers (the real-time server loop) need a
clock, and tests inject `ManualClock` so nothing sleeps.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class MonotonicClock:
    """Seconds from `time.monotonic()`, optionally running `speedup` times faster than real time."""

    def __init__(self, speedup: float = 1.0) -> None:
        if speedup <= 0:
            raise ValueError("speedup must be positive")
        self.speedup = speedup
        self._t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.speedup

    def real_delay_s(self, sim_delay_s: float) -> float:
        """How long to really wait for `sim_delay_s` of engine time to pass."""
        return sim_delay_s / self.speedup


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt
