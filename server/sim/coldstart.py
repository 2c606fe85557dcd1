"""A cold vLLM 0.5.x server compiling its fused-MoE Triton kernels on first use.

Why this exists: every published vLLM 0.5.4 run of Mixtral that we calibrate against (the
LambdaLabsML/vllm-benchmark files in loadtest/bench/data) was taken on a server started in a
fresh container moments before, with no warm-up. Their per-request timelines show the engine
stopping for 1.1-1.5 s at a time, early in the run, each time a prefill step of a size it had not
seen yet ran, and never again for the same sizes later in the run. The dense Mistral-7B run of
the same series has no such stalls. docs/results/fidelity.md has the timestamps.

The mechanism, from vLLM 0.5.4's `fused_moe.py` and Triton's JIT:

- Prefill steps run eagerly (only decode batches of <= 256 sequences replay CUDA graphs), so
  every prefill step launches `fused_moe_kernel` for its own token count M.
- The kernel's tile configuration is looked up by M in a tuned table: the entry whose key is
  closest to M (`min(keys, key=lambda k: abs(k - M))`). Different tiles are different kernels.
- Triton compiles one binary per (constexpr values, integer-argument specialisation). Integer
  arguments are specialised on "divisible by 16". Two of them move with M: `num_valid_tokens`
  = top_k * M and `EM` = top_k * M + E * (BLOCK_SIZE_M - 1) (the padded length from
  `moe_align_block_size`). For Mixtral (E = 8, top_k = 2) the first is divisible by 16 when
  M % 8 == 0 and the second when M % 8 == 4, so each tile has three binaries.
- Startup compiles some of them: the memory-profiling run (one prefill of
  max_num_batched_tokens tokens) and the CUDA-graph capture of decode batch sizes 1, 2, 4 and
  8..256 in steps of 8. Any other (tile, specialisation) met by a prefill is compiled in the
  middle of serving, while every running request waits.

Only MoE models are affected, and only on a cold server: the Triton cache lives in the
container. The simulator's default is a warm server; the fidelity harness turns this on for the
rows that were measured cold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.perfmodel import BatchShape, PerfModel

# Seconds the whole engine stops to compile one new (tile, specialisation): both the w1 and the
# w2 launch of the kernel. Measured on the len32000 sibling of row P4 (same model, engine and
# prompts, not the row itself): its five isolated stalls last 1.25, 1.18, 1.52, 1.08 and 1.32 s
# beyond the prefill work they contain; 1.25 s is their median. docs/results/fidelity.md.
VLLM_0_5_MOE_COMPILE_S = 1.25

# Decode batch sizes vLLM 0.5.x captures as CUDA graphs (vllm/worker/model_runner.py,
# _BATCH_SIZES_TO_CAPTURE), each run once eagerly before capture, which compiles its kernels.
CUDA_GRAPH_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, *range(8, 257, 8))

# vLLM's tuned fused-MoE table for E=8, N=7168 (Mixtral-8x7B at TP2) on H100 80GB HBM3, as
# (BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, GROUP_SIZE_M, num_warps, num_stages) per M key:
# vllm/model_executor/layers/fused_moe/configs/E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json,
# read from a 2025 checkout; the Mixtral tables date from early 2024 and we assume 0.5.4 shipped
# the same. Keys with equal tiles share one binary (16/24/32, 48/64, 2/8).
MIXTRAL_TP2_H100_TILES: dict[int, tuple[int, ...]] = {
    1: (16, 64, 128, 64, 4, 4),
    2: (16, 128, 128, 32, 8, 4),
    4: (16, 32, 256, 16, 4, 4),
    8: (16, 128, 128, 32, 8, 4),
    16: (16, 128, 128, 1, 4, 4),
    24: (16, 128, 128, 1, 4, 4),
    32: (16, 128, 128, 1, 4, 4),
    48: (32, 128, 128, 1, 4, 4),
    64: (32, 128, 128, 1, 4, 4),
    96: (32, 128, 128, 64, 4, 4),
    128: (64, 128, 128, 1, 4, 4),
    256: (64, 128, 128, 64, 4, 4),
    512: (64, 256, 64, 32, 4, 4),
    1024: (128, 256, 64, 16, 8, 4),
    1536: (128, 256, 64, 64, 8, 4),
    2048: (128, 256, 64, 32, 8, 4),
    3072: (128, 256, 64, 64, 8, 4),
    4096: (128, 256, 64, 16, 8, 4),
}


# Tuned tables vLLM 0.5.x ships, by (num_experts, intermediate size per GPU, GPU).
TUNED_TILES: dict[tuple[int, int, str], dict[int, tuple[int, ...]]] = {
    (8, 7168, "h100"): MIXTRAL_TP2_H100_TILES,
}

Variant = tuple[tuple[int, ...], bool, bool]


def kernel_variant(
    num_tokens: int, tiles: dict[int, tuple[int, ...]] | None, num_experts: int = 8, top_k: int = 2
) -> Variant:
    """The compiled binary `fused_moe_kernel` needs for a step of `num_tokens` tokens.

    (tile, num_valid_tokens % 16 == 0, EM % 16 == 0); see the module docstring. Without a tuned
    table vLLM uses its default tile: 16x32x64 for M <= E, else 64x64x32 (GROUP_SIZE_M 8).
    """
    if tiles:
        tile = tiles[min(tiles, key=lambda k: abs(k - num_tokens))]
    else:
        tile = (16, 32, 64, 1) if num_tokens <= num_experts else (64, 64, 32, 8)
    valid = top_k * num_tokens
    em = valid + num_experts * (tile[0] - 1)
    return tile, valid % 16 == 0, em % 16 == 0


@dataclass
class ColdMoeKernels:
    """Step costs of one cold vLLM 0.5.x replica: `inner`'s time plus a compile stall on new kernels.

    Stateful (it remembers what this replica compiled), so give each simulated replica its own.
    Build it with `for_model`, which picks the tuned table vLLM would load.
    """

    inner: PerfModel
    tiles: dict[int, tuple[int, ...]] | None
    compile_s: float = VLLM_0_5_MOE_COMPILE_S
    max_num_seqs: int = 256
    compiled: set[Variant] = field(default_factory=set)
    num_compiles: int = 0

    @classmethod
    def for_model(cls, pm: PerfModel, *, max_num_seqs: int = 256,
                  compile_s: float = VLLM_0_5_MOE_COMPILE_S) -> ColdMoeKernels:  # fmt: skip
        m = pm.model
        if not m.is_moe:
            raise ValueError(f"{m.key} is dense: it has no fused-MoE kernels to compile")
        tiles = TUNED_TILES.get((m.num_experts, m.intermediate_size // pm.tp, pm.gpu.key))
        return cls(pm, tiles, compile_s, max_num_seqs)

    def __post_init__(self) -> None:
        warm = [b for b in CUDA_GRAPH_BATCH_SIZES if b <= self.max_num_seqs]
        warm.append(self.inner.max_num_batched_tokens)  # the memory-profiling prefill
        self.compiled.update(self._variant(m) for m in warm)

    def _variant(self, num_tokens: int) -> Variant:
        return kernel_variant(num_tokens, self.tiles, self.inner.model.num_experts, self.inner.model.top_k)

    def step_time_s(self, batch: BatchShape) -> float:
        t = self.inner.step_time_s(batch)
        if batch.prefill:  # eager step: the kernel runs at this step's exact token count
            variant = self._variant(sum(n for n, _ in batch.prefill) + len(batch.decode_context))
            if variant not in self.compiled:
                self.compiled.add(variant)
                self.num_compiles += 1
                t += self.compile_s
        return t

    def kv_blocks(self, block_size: int = 16) -> int:
        return self.inner.kv_blocks(block_size)
