"""The cost model: what a request consumed and what it costs.

Usage is the backend's own count (its `usage` block), or on a disconnect what the gateway saw
generated. Cost is integer micro-dollars so that Redis INCRBY never drifts as floats would.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    """What one request really consumed, as the backend reported it (or as counted on disconnect)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def cost_micro_usd(usage: Usage, input_per_million_usd: float, output_per_million_usd: float) -> int:
    """Price in integer micro-dollars: tokens * $/1e6 tokens * 1e6 micro$/$ = tokens * price."""
    return round(
        usage.prompt_tokens * input_per_million_usd + usage.completion_tokens * output_per_million_usd
    )
