"""How long one engine step takes and how much KV cache fits: a roofline with measured overheads.

The simulator (server/sim) asks this model for the duration of every scheduler step, and the
capacity calculator asks it how many KV blocks a replica has. It is deliberately one small,
inspectable formula rather than a fitted black box, so that every number the simulator prints
can be traced to catalog inputs and the handful of efficiency factors in `Factors`:

    step = max(compute, memory) + tensor-parallel all-reduce + fixed per-step overhead
    compute = (linear FLOPs / peak(dtype) + attention FLOPs / peak(bf16)) * factors.compute / tp
    memory  = (weight bytes read * factors.weight_read + KV bytes read/written * factors.kv_read)
              / HBM bandwidth / tp

Weight bytes read per step count each MoE layer's *distinct experts touched* by the batch's T
tokens, N * (1 - ((N - k) / N) ** T) with N experts and top-k routing (uniform routing assumed),
so a batch of 1 reads 2 of Mixtral's 8 experts and a batch of 16 reads ~7.9: that is why MoE
decode gets expensive fast as the batch grows and then flattens.

The factors are global (one set, `V1_FACTORS`, describes vLLM V1 with CUDA graphs on Hopper);
they are never fitted per workload. docs/results/fidelity.md shows how close this lands to
published vLLM measurements and which rows informed which factor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from server import catalog
from server.catalog import GiB, GpuSpec, ModelSpec

WeightDtype = Literal["bf16", "fp16", "fp8", "int4"]
KvDtype = Literal["bf16", "fp16", "fp8"]

# Bytes per parameter of the quantised linear layers. int4 is GPTQ/AWQ-style with one fp16 scale
# per group of 128 weights (+2/128 bytes). Embeddings, LM head, router and norms stay bf16: vLLM's
# fp8 and int4 paths leave them unquantised.
WEIGHT_BYTES: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int4": 0.5 + 2 / 128}
KV_BYTES: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0}


@dataclass(frozen=True)
class BatchShape:
    """What one engine step computes."""

    prefill: tuple[tuple[int, int], ...]  # (new_tokens_this_step, tokens_already_computed_before) per seq
    decode_context: tuple[int, ...]  # context (tokens already in KV) per decoding seq, 1 new token each

    @property
    def num_tokens(self) -> int:
        return sum(n for n, _ in self.prefill) + len(self.decode_context)

    @property
    def num_seqs(self) -> int:
        return len(self.prefill) + len(self.decode_context)


@dataclass(frozen=True)
class Factors:
    """Every efficiency factor of the model, in one place. Defaults describe vLLM V1 on Hopper.

    weight_read: achieved HBM time for weights over the ideal (bytes / peak bandwidth). 1.3 means
        the weight stream runs at ~77% of peak: ~90% is the best a streaming kernel reaches on
        H100, and the fused-MoE and small-M GEMM kernels of decode lose more (the reference notes
        quote x1.4; P1 and P3 together pull it to 1.3, see docs/results/fidelity.md).
    kv_read: the same for KV-cache traffic in paged attention (scattered 16-token blocks, x1.9 from
        the reference notes).
    compute: achieved FLOP time over ideal (1 / MFU). 1.8 = ~55% MFU, typical of vLLM prefill on
        H100 at a few thousand tokens per step.
    step_overhead_s: fixed time per step that no roofline sees: scheduler, input preparation,
        sampling, CUDA-graph launch (the reference notes: 2-3 ms on V1).
    per_seq_overhead_s: CPU time per scheduled sequence per step (detokenisation, output
        processing). ~0 on V1, whose output processing overlaps the GPU.
    allreduce_latency_s: one all-reduce's fixed cost (vLLM's custom all-reduce on NVLink: ~10 us).
    allreduce_efficiency: achieved fraction of one-way link bandwidth in ring all-reduce.
    non_torch_reserve_bytes: memory vLLM cannot give to the KV cache besides weights and
        activations: CUDA graphs, NCCL buffers, the CUDA context (vLLM logs show 1-2 GiB).
    activation_bytes_per_token: peak activation memory per batched token of the profiling run,
        as multiples of (hidden + top_k * intermediate / tp) bf16 elements.
    """

    weight_read: float = 1.3
    kv_read: float = 1.9
    compute: float = 1.8
    step_overhead_s: float = 0.0025
    per_seq_overhead_s: float = 0.0
    allreduce_latency_s: float = 10e-6
    allreduce_efficiency: float = 0.7
    non_torch_reserve_bytes: int = int(1.5 * GiB)
    activation_bytes_per_token: float = 8.0


V1_FACTORS = Factors()

# vLLM 0.5.x ran scheduling, input preparation, output processing and the HTTP server in one
# process, serially with the GPU. vLLM's v0.6.0 release post (blog.vllm.ai, 2024-09-05) profiled
# Llama-3-8B on one H100 under v0.5.3: 38% of the time GPU execution, 33% API server, 29%
# scheduling and input/output preparation. Applied to this model's GPU time for a full batch
# (256 sequences, ~330 tokens of context: 12.1 ms), the other 62% is 19.8 ms per step, i.e.
# (19.8 - 2.5) ms / 256 = 67.5 us per scheduled sequence on top of the fixed 2.5 ms. Only the
# fidelity rows measured on vLLM 0.5.4 use this profile; everything else simulates V1.
VLLM_0_5_FACTORS = Factors(per_seq_overhead_s=67.5e-6)

PROFILES: dict[str, Factors] = {"vllm-v1": V1_FACTORS, "vllm-0.5": VLLM_0_5_FACTORS}


@dataclass(frozen=True)
class FactorRange:
    """How sure a factor is: a low and a high value it could plausibly take, and why."""

    low: float
    high: float
    why: str


# The documented uncertainty of each time factor of V1_FACTORS. `servelab capacity` re-sizes the
# fleet at each end (one factor at a time, then all together) to show how sure its answer is.
FACTOR_RANGES: dict[str, FactorRange] = {
    "weight_read": FactorRange(
        1.2, 1.4,
        "the reference notes' x1.4 puts P1 at +15%; P1 and P3 pulled it to 1.3 (+8% / -3%); "
        "1.2 would put P3 at about -10%",
    ),
    "kv_read": FactorRange(
        1.5, 2.3,
        "the reference notes' x1.9 for scattered 16-token blocks; no published row isolates it",
    ),
    "compute": FactorRange(
        1.4, 2.5,
        "x1.8 = ~55% MFU is an assumption no published row tests (none is prefill-bound); "
        "70% to 40% MFU is our guess at a span wide enough to hold the real value, not a measurement",
    ),
    "step_overhead_s": FactorRange(
        0.002, 0.003,
        "the reference notes give 2-3 ms per V1 step (scheduler, input prep, sampling, graph launch)",
    ),
}


@dataclass(frozen=True)
class StepBreakdown:
    """One step's time split into its parts (all seconds); `total_s` is what the engine uses."""

    compute_s: float
    weights_s: float
    kv_s: float
    allreduce_s: float
    overhead_s: float
    experts_touched: float

    @property
    def memory_s(self) -> float:
        return self.weights_s + self.kv_s

    @property
    def total_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.allreduce_s + self.overhead_s


def experts_touched(num_experts: int, top_k: int, num_tokens: int) -> float:
    """Expected distinct experts a layer reads for `num_tokens` tokens routed uniformly to top-k of N."""
    if num_tokens <= 0:
        return 0.0
    return num_experts * (1.0 - ((num_experts - top_k) / num_experts) ** num_tokens)


@dataclass(frozen=True)
class PerfModel:
    """Step time and memory of one model replica (tp GPUs) of one model on one GPU type."""

    model: ModelSpec
    gpu: GpuSpec
    tp: int
    dtype: str
    kv_dtype: str
    gpu_memory_utilization: float
    max_num_batched_tokens: int = 8192
    factors: Factors = field(default=V1_FACTORS)

    @classmethod
    def build(
        cls,
        model: str,
        gpu: str,
        tp: int = 1,
        dtype: str = "bf16",
        kv_dtype: str | None = None,
        gpu_memory_utilization: float = 0.9,
        *,
        max_num_batched_tokens: int = 8192,
        factors: Factors = V1_FACTORS,
    ) -> PerfModel:
        if dtype not in WEIGHT_BYTES:
            raise ValueError(f"dtype must be one of {sorted(WEIGHT_BYTES)}, got {dtype!r}")
        kv = kv_dtype or ("bf16" if dtype in ("fp8", "int4") else dtype)
        if kv not in KV_BYTES:
            raise ValueError(f"kv_dtype must be one of {sorted(KV_BYTES)}, got {kv!r}")
        if tp < 1:
            raise ValueError("tp must be >= 1")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        return cls(
            model=catalog.model(model),
            gpu=catalog.gpu(gpu),
            tp=tp,
            dtype=dtype,
            kv_dtype=kv,
            gpu_memory_utilization=gpu_memory_utilization,
            max_num_batched_tokens=max_num_batched_tokens,
            factors=factors,
        )

    # ---- memory -------------------------------------------------------------------------------

    @property
    def _unquantised_params(self) -> int:
        m = self.model
        per_layer = m.router_params_per_layer + m.norm_params_per_layer
        return m.num_layers * per_layer + m.embedding_params + m.lm_head_params + m.hidden_size

    def weight_bytes(self) -> int:
        """All weights of the replica (summed over its tp GPUs)."""
        m = self.model
        quantised = m.num_layers * (m.attn_params_per_layer + m.num_experts * m.expert_params)
        return int(quantised * WEIGHT_BYTES[self.dtype] + self._unquantised_params * WEIGHT_BYTES["bf16"])

    def weight_bytes_per_gpu(self) -> int:
        return math.ceil(self.weight_bytes() / self.tp)

    def kv_bytes_per_token(self) -> int:
        """KV bytes per token for the whole replica (all layers, all KV heads)."""
        return self.model.kv_bytes_per_token(KV_BYTES[self.kv_dtype])

    def kv_bytes_per_token_per_gpu(self) -> int:
        # KV heads are split across tp ranks; with more ranks than KV heads they are replicated.
        m = self.model
        heads = math.ceil(m.num_kv_heads / self.tp)
        return int(2 * m.num_layers * heads * m.head_dim * KV_BYTES[self.kv_dtype])

    def activation_reserve_bytes(self) -> int:
        """Peak activations of vLLM's profiling pass (max_num_batched_tokens) plus non-torch memory."""
        m = self.model
        width = m.hidden_size + m.top_k * m.intermediate_size / self.tp
        act = self.max_num_batched_tokens * width * 2 * self.factors.activation_bytes_per_token
        return int(act + self.factors.non_torch_reserve_bytes)

    def kv_budget_bytes_per_gpu(self) -> int:
        budget = (
            self.gpu.memory_bytes * self.gpu_memory_utilization
            - self.weight_bytes_per_gpu()
            - self.activation_reserve_bytes()
        )
        return max(0, int(budget))

    def fits(self) -> bool:
        return self.kv_budget_bytes_per_gpu() > 0

    def kv_blocks(self, block_size: int = 16) -> int:
        """KV blocks (of `block_size` tokens) that fit after weights and the activation reserve."""
        return self.kv_budget_bytes_per_gpu() // (block_size * self.kv_bytes_per_token_per_gpu())

    def kv_tokens(self, block_size: int = 16) -> int:
        return self.kv_blocks(block_size) * block_size

    # ---- time ---------------------------------------------------------------------------------

    def step_time_s(self, batch: BatchShape) -> float:
        """Seconds one engine step takes for this batch (0 for an empty batch)."""
        return self.breakdown(batch).total_s

    def breakdown(self, batch: BatchShape) -> StepBreakdown:
        prefill_tokens = 0
        attn_pairs = 0.0  # (query, key) pairs attended, summed over sequences
        kv_read_tokens = 0
        for new, before in batch.prefill:
            prefill_tokens += new
            attn_pairs += new * (before + (new + 1) / 2)
            kv_read_tokens += before
        decode = batch.decode_context
        ctx_sum = sum(decode)
        attn_pairs += ctx_sum + len(decode)
        kv_read_tokens += ctx_sum
        return self.breakdown_from_totals(
            num_tokens=prefill_tokens + len(decode),
            num_seqs=len(batch.prefill) + len(decode),
            attn_pairs=attn_pairs,
            kv_read_tokens=kv_read_tokens,
        )

    def breakdown_from_totals(
        self, *, num_tokens: int, num_seqs: int, attn_pairs: float, kv_read_tokens: int
    ) -> StepBreakdown:
        """The same model from a batch's totals, for callers that keep running sums (the offline sim)."""
        if num_tokens <= 0:
            return StepBreakdown(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        m, g, f, tp = self.model, self.gpu, self.factors, self.tp
        wb = WEIGHT_BYTES[self.dtype]

        # compute: linear layers at the weight dtype's peak, attention and LM head at bf16
        linear_peak = g.fp8_flops if (self.dtype == "fp8" and g.fp8_flops) else g.bf16_flops
        linear_flops = (
            2.0
            * num_tokens
            * m.num_layers
            * (m.attn_params_per_layer + m.top_k * m.expert_params + m.router_params_per_layer)
        )
        head_flops = 2.0 * num_seqs * m.lm_head_params
        attn_flops = 4.0 * m.num_layers * m.num_heads * m.head_dim * attn_pairs
        compute_s = (linear_flops / linear_peak + (attn_flops + head_flops) / g.bf16_flops) * f.compute / tp

        # memory: weights actually read (distinct experts touched), then KV read + written
        touched = experts_touched(m.num_experts, m.top_k, num_tokens)
        weight_read = (
            m.num_layers * (m.attn_params_per_layer + touched * m.expert_params) * wb
            + (m.num_layers * m.router_params_per_layer + m.lm_head_params) * 2.0
        )
        kv_bytes = (kv_read_tokens + num_tokens) * self.kv_bytes_per_token()
        weights_s = weight_read / tp / g.hbm_bandwidth_Bps * f.weight_read
        kv_s = kv_bytes / tp / g.hbm_bandwidth_Bps * f.kv_read

        # tensor parallel: two all-reduces of the bf16 hidden states per layer (after attention, after MLP)
        allreduce_s = 0.0
        if tp > 1:
            payload = num_tokens * m.hidden_size * 2.0
            ring = 2.0 * (tp - 1) / tp * payload / (g.interconnect_one_way_Bps * f.allreduce_efficiency)
            allreduce_s = 2 * m.num_layers * (f.allreduce_latency_s + ring)

        overhead_s = f.step_overhead_s + f.per_seq_overhead_s * num_seqs
        return StepBreakdown(compute_s, weights_s, kv_s, allreduce_s, overhead_s, touched)

    # ---- reporting ----------------------------------------------------------------------------

    def describe(self) -> dict[str, object]:
        """Every input and factor, for printing beside results."""
        m, g = self.model, self.gpu
        return {
            "model": m.key,
            "gpu": g.key,
            "tp": self.tp,
            "dtype": self.dtype,
            "kv_dtype": self.kv_dtype,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "params_total": m.params_total,
            "params_active": m.params_active,
            "num_experts": m.num_experts,
            "top_k": m.top_k,
            "weight_bytes": self.weight_bytes(),
            "weight_bytes_per_gpu": self.weight_bytes_per_gpu(),
            "kv_bytes_per_token": self.kv_bytes_per_token(),
            "activation_reserve_bytes_per_gpu": self.activation_reserve_bytes(),
            "kv_budget_bytes_per_gpu": self.kv_budget_bytes_per_gpu(),
            "kv_blocks_16": self.kv_blocks(16),
            "gpu_memory_bytes": g.memory_bytes,
            "hbm_bandwidth_Bps": g.hbm_bandwidth_Bps,
            "bf16_flops": g.bf16_flops,
            "fp8_flops": g.fp8_flops,
            "interconnect_Bps": g.interconnect_Bps,
            "factors": asdict(self.factors),
        }
