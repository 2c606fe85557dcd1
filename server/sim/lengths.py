"""Token-length distributions for workloads: fixed, uniform, normal, lognormal, and a ShareGPT-like one.

A workload's prompt and output lengths are either one number or one of these, written on the
command line as `fixed:N`, `uniform:LO:HI`, `normal:MEAN:STD`, `lognormal:MEAN:CV` (mean and
coefficient of variation of the lognormal itself), optionally followed by `:MIN:MAX` clip bounds,
or `sharegpt-in` / `sharegpt-out`. The ShareGPT presets are NOT the dataset: they are lognormals
whose means match what vLLM's ShareGPT filter leaves (about 230 prompt / 219 output tokens per
request, ../shared/reference/published-vllm.md), with a CV of 1.0 assumed and the filter's bounds
(prompt 4..1024, output 4..1024) as clip limits. Sampling is vectorised and seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["fixed", "uniform", "normal", "lognormal"]


@dataclass(frozen=True)
class LengthDist:
    kind: Kind
    a: float
    b: float = 0.0
    lo: int = 1
    hi: int = 1_000_000

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            x = np.full(n, self.a)
        elif self.kind == "uniform":
            x = rng.integers(int(self.a), int(self.b) + 1, size=n)
        elif self.kind == "normal":
            x = rng.normal(self.a, self.b, size=n)
        else:
            # lognormal with mean a and coefficient of variation b: sigma^2 = ln(1 + cv^2).
            sigma2 = math.log1p(self.b * self.b)
            mu = math.log(self.a) - sigma2 / 2
            x = rng.lognormal(mu, math.sqrt(sigma2), size=n)
        return np.clip(np.rint(x), self.lo, self.hi).astype(np.int64)

    @property
    def mean_hint(self) -> float:
        """The distribution's nominal mean before clipping (for printing beside results)."""
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a

    def spec(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{int(self.a)}"
        body = f"{self.kind}:{self.a:g}:{self.b:g}"
        return body if (self.lo, self.hi) == (1, 1_000_000) else f"{body}:{self.lo}:{self.hi}"

    @classmethod
    def fixed(cls, n: int) -> LengthDist:
        return cls("fixed", float(n), lo=1, hi=max(1, n))

    @classmethod
    def parse(cls, text: str | int) -> LengthDist:
        if isinstance(text, int) or str(text).isdigit():
            return cls.fixed(int(text))
        s = str(text).strip()
        if s in PRESETS:
            return PRESETS[s]
        parts = s.split(":")
        kind = parts[0]
        try:
            nums = [float(p) for p in parts[1:]]
        except ValueError:
            raise ValueError(f"bad length distribution {s!r}: numbers expected after the kind") from None
        if kind == "fixed" and len(nums) == 1:
            return cls.fixed(int(nums[0]))
        if kind in ("uniform", "normal", "lognormal") and len(nums) in (2, 4):
            lo, hi = (int(nums[2]), int(nums[3])) if len(nums) == 4 else (1, 1_000_000)
            if kind == "uniform":
                lo, hi = max(lo, int(nums[0])), min(hi, int(nums[1]))
            return cls(kind, nums[0], nums[1], lo=max(1, lo), hi=hi)  # type: ignore[arg-type]
        raise ValueError(
            f"bad length distribution {s!r}: use N, fixed:N, uniform:LO:HI, normal:MEAN:STD,"
            f" lognormal:MEAN:CV (each optionally :MIN:MAX), or one of {sorted(PRESETS)}"
        )


PRESETS: dict[str, LengthDist] = {
    "sharegpt-in": LengthDist("lognormal", 230.0, 1.0, lo=4, hi=1024),
    "sharegpt-out": LengthDist("lognormal", 219.0, 1.0, lo=4, hi=1024),
}
