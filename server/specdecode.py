"""Speculative decoding: what drafting k tokens and verifying them in one pass does to TPOT.

A speculative step has two parts. A proposer drafts k tokens per sequence: an n-gram match
against the prompt and the output so far (vLLM `method: ngram`, no GPU work), or k forward
passes of a small draft model on the same GPUs (`method: draft_model`). Then the target model
verifies all k + 1 positions of every sequence in one forward pass and keeps the longest prefix
it agrees with, plus one token of its own. If each drafted token is accepted with probability a,
independently, a step yields on average (Leviathan et al., "Fast Inference from Transformers via
Speculative Decoding", 2023):

    tokens per step  E = (1 - a^(k+1)) / (1 - a)        (k + 1 when a = 1)

and the time per output token becomes (draft + verify) / E against one plain decode step.

Why it helps at small batch and costs at large: a plain decode step at batch B is bound by
reading the weights, which costs the same for 1 token or k + 1 tokens per sequence, so verifying
is nearly free and E tokens come for the price of one step. As B grows, the verify pass carries
B x (k + 1) tokens, turns compute-bound, and costs up to k + 1 times a plain step while still
yielding only E < k + 1 tokens per sequence: the rejected drafts are wasted compute.

Both parts are priced by the same step-cost model the simulator uses (server/perfmodel.py): the
verify pass is a batch of B chunks of k + 1 new tokens over each sequence's context; each draft
pass is a decode step of the draft model at batch B. The engine step's fixed overhead is paid
once, by the verify pass; draft passes pay only their roofline (vLLM runs them inside the same
model-runner step, under CUDA graphs), which flatters the draft model a little.
A draft model also takes memory: its weights, and its own KV cache for every sequence, so fewer
sequences fit (`kv_capacity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from server.perfmodel import BatchShape, PerfModel
from server.sim.engine import StepCostModel

Method = Literal["ngram", "draft_model"]


def expected_tokens_per_step(k: int, acceptance: float) -> float:
    """Mean tokens a sequence gains per speculative step: (1 - a^(k+1)) / (1 - a)."""
    if k < 0 or not 0 <= acceptance <= 1:
        raise ValueError("k must be >= 0 and the acceptance rate in [0, 1]")
    if acceptance == 1:
        return float(k + 1)
    return (1 - acceptance ** (k + 1)) / (1 - acceptance)


def acceptance_from_length(k: int, accepted_length: float) -> float:
    """The per-token acceptance rate a whose E(k, a) equals a measured mean accepted length.

    vLLM reports speculation as a mean acceptance length (tokens per step, bonus token included)
    and an "acceptance rate" = accepted drafts / proposed drafts = (length - 1) / k. The second is
    not the a of the formula: for k = 3 a length of 2.25 is a vLLM rate of 0.42 but a = 0.62.
    """
    if not 1 <= accepted_length <= k + 1:
        raise ValueError(f"a mean accepted length with k={k} lies in [1, {k + 1}]")
    lo, hi = 0.0, 1.0
    for _ in range(60):  # E(k, a) increases with a: bisect
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens_per_step(k, mid) < accepted_length else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class SpecConfig:
    """vLLM's `--speculative-config`: method, num_speculative_tokens (k), and the draft model."""

    k: int
    acceptance: float  # per drafted token; measured per workload (vLLM logs it), not a property of k
    method: Method = "ngram"
    draft_model: str | None = None  # catalog key, for method draft_model

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("num_speculative_tokens (k) must be at least 1")
        if not 0 <= self.acceptance <= 1:
            raise ValueError("the acceptance rate must be in [0, 1]")
        if self.method == "draft_model" and not self.draft_model:
            raise ValueError("method draft_model needs a draft model")
        if self.method == "ngram" and self.draft_model:
            raise ValueError("method ngram takes no draft model")

    @property
    def tokens_per_step(self) -> float:
        return expected_tokens_per_step(self.k, self.acceptance)


@dataclass(frozen=True)
class SpecPoint:
    """One batch size: a plain decode step against a speculative one (seconds)."""

    batch: int
    context: int
    plain_step_s: float
    draft_s: float
    verify_s: float
    tokens_per_step: float

    @property
    def spec_step_s(self) -> float:
        return self.draft_s + self.verify_s

    @property
    def plain_tpot_s(self) -> float:
        return self.plain_step_s

    @property
    def spec_tpot_s(self) -> float:
        return self.spec_step_s / self.tokens_per_step

    @property
    def speedup(self) -> float:
        """Plain TPOT over speculative TPOT: above 1, speculation helps at this batch."""
        return self.plain_tpot_s / self.spec_tpot_s


@dataclass(frozen=True)
class SpecModel:
    """A target step-cost model, an optional draft one, and the speculative configuration."""

    target: StepCostModel
    config: SpecConfig
    draft: StepCostModel | None = None

    def __post_init__(self) -> None:
        if (self.config.method == "draft_model") != (self.draft is not None):
            raise ValueError("a draft cost model is needed exactly when the method is draft_model")

    @classmethod
    def build(cls, target: PerfModel, config: SpecConfig) -> SpecModel:
        """Draft model on the same GPUs and TP as the target, same dtype, no fixed step overhead."""
        from dataclasses import replace

        draft = None
        if config.method == "draft_model":
            assert config.draft_model is not None
            draft = PerfModel.build(
                config.draft_model, target.gpu.key, tp=target.tp, dtype=target.dtype,
                kv_dtype=target.kv_dtype, gpu_memory_utilization=target.gpu_memory_utilization,
                max_num_batched_tokens=target.max_num_batched_tokens,
                factors=replace(target.factors, step_overhead_s=0.0),
            )
        return cls(target, config, draft)

    def point(self, batch: int, context: int) -> SpecPoint:
        """Plain and speculative step at `batch` sequences of `context` tokens already in the cache."""
        if batch < 1 or context < 0:
            raise ValueError("batch must be >= 1 and context >= 0")
        k = self.config.k
        plain = self.target.step_time_s(BatchShape((), (context,) * batch))
        verify = self.target.step_time_s(BatchShape(((k + 1, context),) * batch, ()))
        draft = 0.0
        if self.draft is not None:
            draft = sum(self.draft.step_time_s(BatchShape((), (context + i,) * batch)) for i in range(k))
        return SpecPoint(batch, context, plain, draft, verify, self.config.tokens_per_step)

    def sweep(self, batches: tuple[int, ...], context: int) -> tuple[SpecPoint, ...]:
        return tuple(self.point(b, context) for b in batches)

    def breakeven_batch(self, context: int, max_batch: int = 1024) -> int | None:
        """Smallest batch at which speculation stops paying (speedup <= 1), or None up to max_batch."""
        lo, hi = 1, max_batch
        if self.point(hi, context).speedup > 1:
            return None
        if self.point(lo, context).speedup <= 1:
            return lo
        while hi - lo > 1:  # speedup falls with batch: bisect the crossing
            mid = (lo + hi) // 2
            if self.point(mid, context).speedup > 1:
                lo = mid
            else:
                hi = mid
        return hi


def kv_capacity(target: PerfModel, draft: PerfModel | None, block_size: int = 16) -> tuple[int, int]:
    """KV tokens per replica without and with the draft model's weights and KV cache beside the target's."""
    plain = target.kv_tokens(block_size)
    if draft is None:
        return plain, plain
    budget = target.kv_budget_bytes_per_gpu() - draft.weight_bytes_per_gpu()
    per_token = target.kv_bytes_per_token_per_gpu() + draft.kv_bytes_per_token_per_gpu()
    blocks = max(0, budget) // (block_size * per_token)
    return plain, int(blocks * block_size)


def tokens_per_step_table(ks: tuple[int, ...], acceptances: tuple[float, ...]) -> list[list[float]]:
    """E for every (k, a): rows k, columns a."""
    return [[expected_tokens_per_step(k, a) for a in acceptances] for k in ks]


__all__ = ["SpecConfig", "SpecModel", "SpecPoint", "acceptance_from_length", "expected_tokens_per_step",
           "kv_capacity"]
