"""What a fleet costs: GPU $/hour defaults per GPU type, and the $/month and $/M tokens they imply.

Prices are rental prices, not list prices of hardware, and they move: the defaults below are one
dated quote per GPU type with its source, there so that `servelab capacity` prints a cost at all.
Pass `--gpu-hourly-usd` with your own contract price; every cost figure scales linearly with it.
"""

from __future__ import annotations

from dataclasses import dataclass

HOURS_PER_MONTH = 730.0  # 8,760 h / 12: what cloud bills use for "per month"


@dataclass(frozen=True)
class GpuPrice:
    usd_per_hour: float  # one GPU, on demand
    low: float
    high: float
    source: str


GPU_PRICES: dict[str, GpuPrice] = {
    "h100": GpuPrice(
        3.00, 2.50, 3.50,
        "mercatus-ai.com/blog/cloud-gpu-pricing (May 2026): H100 SXM5 on demand, specialty clouds "
        "$2.50-3.50/GPU-h (hyperscalers $3.50-5.00); midpoint",
    ),
    "h200": GpuPrice(
        4.00, 3.50, 4.50,
        "mercatus-ai.com/blog/cloud-gpu-pricing (May 2026): H200 SXM5 on demand, specialty clouds "
        "$3.50-4.50/GPU-h (hyperscalers $4.50-7.00); midpoint",
    ),
    "a100-80g": GpuPrice(
        1.30, 1.10, 1.50,
        "mercatus-ai.com/blog/cloud-gpu-pricing (May 2026): A100 80GB on demand, specialty clouds "
        "$1.10-1.50/GPU-h (hyperscalers $1.50-3.00); midpoint",
    ),
    "l40s": GpuPrice(
        1.86, 0.86, 2.25,
        "modal.com/blog/nvidia-l40s-price-article (Aug 2025): AWS g6e (1x L40S) on demand $1.861/h; "
        "RunPod $0.86, CoreWeave $2.25",
    ),
    "l4": GpuPrice(
        0.80, 0.70, 0.90,
        "assumption, no quote read: near AWS g6.xlarge / GCP g2-standard-4 (1x L4) on-demand rates; "
        "pass --gpu-hourly-usd",
    ),
}


def default_price(gpu: str) -> GpuPrice:
    try:
        return GPU_PRICES[gpu]
    except KeyError:
        raise KeyError(f"no default price for GPU {gpu!r}; pass --gpu-hourly-usd") from None


@dataclass(frozen=True)
class FleetCost:
    """Cost of `gpus` GPUs running all month, and per million tokens served at the target rate."""

    gpus: int
    usd_per_gpu_hour: float
    target_rps: float
    input_len: int
    output_len: int

    @property
    def usd_per_hour(self) -> float:
        return self.gpus * self.usd_per_gpu_hour

    @property
    def usd_per_month(self) -> float:
        return self.usd_per_hour * HOURS_PER_MONTH

    @property
    def usd_per_million_output_tokens(self) -> float:
        """All GPU cost charged to output tokens (the usual way to quote serving cost)."""
        return self.usd_per_hour / (self.target_rps * self.output_len * 3600) * 1e6

    @property
    def usd_per_million_tokens(self) -> float:
        """The same cost over input + output tokens."""
        return self.usd_per_hour / (self.target_rps * (self.input_len + self.output_len) * 3600) * 1e6

    def as_dict(self) -> dict[str, float]:
        return {
            "gpus": self.gpus,
            "usd_per_gpu_hour": self.usd_per_gpu_hour,
            "usd_per_hour": self.usd_per_hour,
            "usd_per_month": self.usd_per_month,
            "usd_per_million_output_tokens": self.usd_per_million_output_tokens,
            "usd_per_million_tokens": self.usd_per_million_tokens,
        }
