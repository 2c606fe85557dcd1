"""Expert parallelism against tensor parallelism for an MoE model on one node of G GPUs.

Three layouts of the same G GPUs, each a step-cost model the simulator and `capacity` can use:

- `tp` (server/perfmodel.py): every weight matrix, experts included, is sliced G ways. Work is
  balanced by construction; two all-reduces of the hidden states per layer.
- `ep` (vLLM `--tensor-parallel-size G --enable-expert-parallel`): attention stays sliced G ways,
  but each GPU holds N/G *whole* experts. Tokens go to the GPUs of their top-k experts, so the
  MoE part of the step is set by the **hottest GPU**: inference engines drop no tokens (there is
  no capacity factor as in training), so an over-subscribed expert just makes everyone wait.
  With attention sliced, every GPU already has every token, so the exchange is still one
  all-reduce after the MoE (vLLM's default all2all backend), the same as TP.
- `dp-ep` (vLLM `--data-parallel-size G --enable-expert-parallel`): attention is replicated, each
  GPU runs attention for its own 1/G of the sequences (with the whole KV of those sequences);
  the MoE layers exchange tokens by all-to-all: every token's hidden state goes to the GPUs of
  its top-k experts and comes back (dispatch + combine), instead of two all-reduces of every
  token. Attention weights are read in full by every GPU and take memory on every GPU.

The hottest GPU's load: with T tokens and top-k of N experts, an expert gets m = T k / N
assignments on average. Two things push the busiest GPU above that: chance (tokens route
independently: the expected maximum of N such loads is about m + sqrt(2 m ln N), a normal
approximation) and skew (some experts are more popular than others on real traffic:
`expert_skew` = the hottest expert's mean load over the average, 1 = uniform). Per GPU of
N/G experts:  load_max = min(T, skew x m_gpu + sqrt(2 skew m_gpu ln G)), m_gpu = T k / G.

Everything else (rooflines, efficiency factors, overheads) is the PerfModel's, so the three
layouts differ only where the parallelism differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from server.perfmodel import KV_BYTES, WEIGHT_BYTES, BatchShape, PerfModel, StepBreakdown

Layout = Literal["tp", "ep", "dp-ep"]
LAYOUTS: tuple[Layout, ...] = ("tp", "ep", "dp-ep")

# One all-to-all's fixed cost (dispatch or combine) on NVLink. An assumption, not a measurement:
# a few times the custom all-reduce's 10 us, for the routing metadata and the extra kernel.
ALL_TO_ALL_LATENCY_S = 30e-6


def hottest_load(tokens: int, top_k: int, gpus: int, skew: float = 1.0) -> float:
    """Expected expert assignments on the busiest GPU of `gpus` for `tokens` tokens routed top-k."""
    if tokens <= 0:
        return 0.0
    if skew < 1:
        raise ValueError("expert skew is the hottest expert's load over the mean: >= 1")
    if gpus == 1:
        return float(tokens * top_k)
    m = tokens * top_k / gpus
    return min(float(tokens * top_k), skew * m + math.sqrt(2 * skew * m * math.log(gpus)))


@dataclass(frozen=True)
class ExpertParallelModel:
    """An MoE replica on `base.tp` GPUs laid out as `layout`; same interface as PerfModel."""

    base: PerfModel  # model, GPU, dtype, factors; base.tp is the number of GPUs (G)
    layout: Layout = "ep"
    expert_skew: float = 1.0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}")
        if self.expert_skew < 1:
            raise ValueError("expert skew is the hottest expert's load over the mean: >= 1")
        if self.layout != "tp":
            m = self.base.model
            if not m.is_moe:
                raise ValueError(f"{m.key} is dense: expert parallelism needs an MoE model")
            if m.num_experts % self.base.tp:
                raise ValueError(f"{m.num_experts} experts do not split evenly over {self.base.tp} GPUs")

    @property
    def gpus(self) -> int:
        return self.base.tp

    # ---- memory (per GPU) ---------------------------------------------------------------------

    def weight_bytes_per_gpu(self) -> int:
        if self.layout != "dp-ep":
            return self.base.weight_bytes_per_gpu()  # same bytes, sliced or whole-expert
        m, wb = self.base.model, WEIGHT_BYTES[self.base.dtype]
        experts = m.num_layers * (m.num_experts // self.gpus) * m.expert_params * wb
        attn = m.num_layers * m.attn_params_per_layer * wb
        rest = (m.num_layers * (m.router_params_per_layer + m.norm_params_per_layer) + m.embedding_params
                + m.lm_head_params + m.hidden_size) * WEIGHT_BYTES["bf16"]
        return int(experts + attn + rest)

    def activation_reserve_bytes(self) -> int:
        return self.base.activation_reserve_bytes()

    def kv_budget_bytes_per_gpu(self) -> int:
        g = self.base.gpu
        budget = (g.memory_bytes * self.base.gpu_memory_utilization - self.weight_bytes_per_gpu()
                  - self.activation_reserve_bytes())
        return max(0, int(budget))

    def kv_bytes_per_token_per_gpu(self) -> int:
        if self.layout == "dp-ep":  # a sequence lives on one GPU with all its KV heads
            return self.base.model.kv_bytes_per_token(KV_BYTES[self.base.kv_dtype])
        return self.base.kv_bytes_per_token_per_gpu()

    def kv_bytes_per_token(self) -> int:
        return self.base.kv_bytes_per_token()

    def kv_blocks(self, block_size: int = 16) -> int:
        per_gpu = self.kv_budget_bytes_per_gpu() // (block_size * self.kv_bytes_per_token_per_gpu())
        return per_gpu * self.gpus if self.layout == "dp-ep" else per_gpu

    def kv_tokens(self, block_size: int = 16) -> int:
        return self.kv_blocks(block_size) * block_size

    # ---- time ---------------------------------------------------------------------------------

    def step_time_s(self, batch: BatchShape) -> float:
        return self.breakdown(batch).total_s

    def breakdown(self, batch: BatchShape) -> StepBreakdown:
        if self.layout == "tp":
            return self.base.breakdown(batch)
        prefill_tokens, attn_pairs, kv_read = 0, 0.0, 0
        for new, before in batch.prefill:
            prefill_tokens += new
            attn_pairs += new * (before + (new + 1) / 2)
            kv_read += before
        ctx = sum(batch.decode_context)
        attn_pairs += ctx + len(batch.decode_context)
        kv_read += ctx
        tokens = prefill_tokens + len(batch.decode_context)
        return self._breakdown(tokens, batch.num_seqs, attn_pairs, kv_read)

    def _breakdown(self, tokens: int, seqs: int, attn_pairs: float, kv_read_tokens: int) -> StepBreakdown:
        if tokens <= 0:
            return StepBreakdown(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        pm, m, g, f, G = self.base, self.base.model, self.base.gpu, self.base.factors, self.gpus
        wb = WEIGHT_BYTES[pm.dtype]
        peak = g.fp8_flops if (pm.dtype == "fp8" and g.fp8_flops) else g.bf16_flops
        load = hottest_load(tokens, m.top_k, G, self.expert_skew)  # expert assignments, busiest GPU
        # the busiest GPU reads each of its own experts that got at least one of its `load`
        # assignments: a whole expert even for one token (TP reads 1/G of every touched expert)
        local = m.num_experts // G
        touched = local * (1.0 - (1.0 - 1.0 / local) ** load) if local > 1 else min(1.0, load)

        # attention + router + LM head: sliced over G (ep) or 1/G of the sequences per GPU (dp-ep)
        dense_linear = 2.0 * tokens * m.num_layers * (m.attn_params_per_layer + m.router_params_per_layer)
        scores = 4.0 * m.num_layers * m.num_heads * m.head_dim * attn_pairs
        head = 2.0 * seqs * m.lm_head_params
        moe_flops = 2.0 * load * m.num_layers * m.expert_params
        compute_s = f.compute * (dense_linear / G / peak + (scores + head) / G / g.bf16_flops
                                 + moe_flops / peak)

        attn_bytes = m.num_layers * m.attn_params_per_layer * wb
        rest_bytes = (m.num_layers * m.router_params_per_layer + m.lm_head_params) * 2.0
        if self.layout == "ep":
            attn_bytes /= G
            rest_bytes /= G
        expert_bytes = m.num_layers * touched * m.expert_params * wb
        weights_s = (attn_bytes + rest_bytes + expert_bytes) / g.hbm_bandwidth_Bps * f.weight_read
        kv_s = (kv_read_tokens + tokens) * pm.kv_bytes_per_token() / G / g.hbm_bandwidth_Bps * f.kv_read

        bw = g.interconnect_one_way_Bps * f.allreduce_efficiency
        hidden_bytes = m.hidden_size * 2.0
        if self.layout == "ep":
            # all-reduce after attention and after the MoE, as TP does
            ring = 2.0 * (G - 1) / G * tokens * hidden_bytes / bw
            comm_s = 2 * m.num_layers * (f.allreduce_latency_s + ring)
        else:
            # all-to-all: each GPU sends its tokens' top-k copies out (dispatch) and receives the
            # results back (combine); the busiest GPU receives `load` of them in each direction
            sent = tokens / G * m.top_k * (G - 1) / G * hidden_bytes
            received = load * (G - 1) / G * hidden_bytes
            comm_s = 2 * m.num_layers * (ALL_TO_ALL_LATENCY_S + max(sent, received) / bw)
        overhead_s = f.step_overhead_s + f.per_seq_overhead_s * seqs
        return StepBreakdown(compute_s, weights_s, kv_s, comm_s, overhead_s, touched)

    def describe(self) -> dict[str, object]:
        d = self.base.describe()
        d.update(layout=self.layout, expert_skew=self.expert_skew,
                 weight_bytes_per_gpu=self.weight_bytes_per_gpu(),
                 kv_budget_bytes_per_gpu=self.kv_budget_bytes_per_gpu(), kv_blocks_16=self.kv_blocks(16),
                 all_to_all_latency_s=ALL_TO_ALL_LATENCY_S)
        return d
