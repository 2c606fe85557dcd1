"""The catalog: models and GPUs as data, each number next to where it comes from.

The simulator's performance model, the vLLM presets and the capacity calculator all read these
entries, so an architecture number or a bandwidth is written exactly once. Model numbers are
copied from each model's Hugging Face `config.json`; GPU numbers from NVIDIA's datasheets (dense
figures: the datasheets print tensor-core FLOP/s "with sparsity", which are halved here).
Parameter counts are *computed* from the architecture (see `ModelSpec.params_total`) and checked
in the tests against the publisher's figure stored in `published_params_b`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

GiB = 1024**3

ModelKey = Literal[
    "mixtral-8x7b", "mixtral-8x22b", "mistral-7b", "llama-3.1-8b", "llama-3.1-70b", "mixtral-mini"
]
GpuKey = Literal["h100", "h200", "a100-80g", "l40s", "l4"]


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a decoder-only transformer (dense when `num_experts == 1`)."""

    key: str
    name: str
    hf_repo: str  # what `vllm serve` is given; local checkpoints from server.checkpoint work too
    architecture: Literal["MixtralForCausalLM", "MistralForCausalLM", "LlamaForCausalLM"]
    num_layers: int
    hidden_size: int
    intermediate_size: int  # per expert for MoE
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    num_experts: int  # 1 = dense MLP
    top_k: int  # experts per token (1 for dense)
    tokenizer: str  # mistral-common tokenizer used for token counts (see tokenizer_for)
    tokenizer_exact: bool  # False: the model's own tokenizer is not a Mistral one; counts approximate
    published_params_b: tuple[float, float]  # (total, active) in billions, as the publisher states them
    source: str

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def attn_params_per_layer(self) -> int:
        q_out = self.num_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        return self.hidden_size * q_out + 2 * self.hidden_size * kv_out + q_out * self.hidden_size

    @property
    def expert_params(self) -> int:
        """One expert (or the dense MLP): gate, up and down projections (SwiGLU)."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def router_params_per_layer(self) -> int:
        return self.hidden_size * self.num_experts if self.is_moe else 0

    @property
    def norm_params_per_layer(self) -> int:
        return 2 * self.hidden_size

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size  # none of these models ties embeddings

    @property
    def params_total(self) -> int:
        per_layer = (
            self.attn_params_per_layer
            + self.num_experts * self.expert_params
            + self.router_params_per_layer
            + self.norm_params_per_layer
        )
        return self.num_layers * per_layer + self.embedding_params + self.lm_head_params + self.hidden_size

    @property
    def params_active(self) -> int:
        """Parameters one token touches (top-k experts), embeddings and LM head included (Mistral's count)."""
        per_layer = (
            self.attn_params_per_layer
            + self.top_k * self.expert_params
            + self.router_params_per_layer
            + self.norm_params_per_layer
        )
        return self.num_layers * per_layer + self.embedding_params + self.lm_head_params + self.hidden_size

    def kv_bytes_per_token(self, bytes_per_elem: float = 2.0) -> int:
        """K and V, every layer, every KV head: 2 * layers * kv_heads * head_dim * bytes."""
        return int(2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_elem)


@dataclass(frozen=True)
class GpuSpec:
    """One GPU. FLOP/s are dense tensor-core peaks; bandwidths in bytes/s."""

    key: str
    name: str
    memory_bytes: int  # as the driver reports it (nvidia-smi memory.total), what vLLM's utilisation scales
    hbm_bandwidth_Bps: float
    bf16_flops: float
    fp8_flops: float | None  # None: no FP8 tensor cores (FP8 weights run as W8A16 on bf16 units)
    interconnect_Bps: float  # per GPU, both directions summed, as the datasheet quotes it
    interconnect: str
    source: str

    @property
    def interconnect_one_way_Bps(self) -> float:
        return self.interconnect_Bps / 2


MODELS: dict[str, ModelSpec] = {
    m.key: m
    for m in (
        ModelSpec(
            key="mixtral-8x7b",
            name="Mixtral-8x7B-Instruct-v0.1",
            hf_repo="mistralai/Mixtral-8x7B-Instruct-v0.1",
            architecture="MixtralForCausalLM",
            num_layers=32,
            hidden_size=4096,
            intermediate_size=14336,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=32000,
            max_position_embeddings=32768,
            rope_theta=1e6,
            num_experts=8,
            top_k=2,
            tokenizer="v1",
            tokenizer_exact=True,
            published_params_b=(46.7, 12.9),
            source="huggingface.co/mistralai/Mixtral-8x7B-Instruct-v0.1 config.json; params: Mistral AI "
            "'Mixtral of experts' (Dec 2023) 46.7B total / 12.9B active",
        ),
        ModelSpec(
            key="mixtral-8x22b",
            name="Mixtral-8x22B-Instruct-v0.1",
            hf_repo="mistralai/Mixtral-8x22B-Instruct-v0.1",
            architecture="MixtralForCausalLM",
            num_layers=56,
            hidden_size=6144,
            intermediate_size=16384,
            num_heads=48,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=32768,
            max_position_embeddings=65536,
            rope_theta=1e6,
            num_experts=8,
            top_k=2,
            tokenizer="v3",
            tokenizer_exact=True,
            published_params_b=(140.6, 39.2),
            source="huggingface.co/mistralai/Mixtral-8x22B-Instruct-v0.1 config.json; params: Mistral AI "
            "'Cheaper, Better, Faster, Stronger' (Apr 2024) 141B / 39B, model card 140.6B",
        ),
        ModelSpec(
            key="mistral-7b",
            name="Mistral-7B-Instruct-v0.3",
            hf_repo="mistralai/Mistral-7B-Instruct-v0.3",
            architecture="MistralForCausalLM",
            num_layers=32,
            hidden_size=4096,
            intermediate_size=14336,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=32768,
            max_position_embeddings=32768,
            rope_theta=1e6,
            num_experts=1,
            top_k=1,
            tokenizer="v3",
            tokenizer_exact=True,
            published_params_b=(7.25, 7.25),
            source="huggingface.co/mistralai/Mistral-7B-Instruct-v0.3 config.json; 7.25B from the model card",
        ),
        ModelSpec(
            key="llama-3.1-8b",
            name="Llama-3.1-8B-Instruct",
            hf_repo="meta-llama/Llama-3.1-8B-Instruct",
            architecture="LlamaForCausalLM",
            num_layers=32,
            hidden_size=4096,
            intermediate_size=14336,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=128256,
            max_position_embeddings=131072,
            rope_theta=500000.0,
            num_experts=1,
            top_k=1,
            # Llama 3's tiktoken BPE (128k vocab) is not in mistral-common; Tekken (131k-vocab tiktoken
            # BPE) is the closest Mistral tokenizer, so prompt counts are approximate for this model.
            tokenizer="tekken",
            tokenizer_exact=False,
            published_params_b=(8.03, 8.03),
            source="huggingface.co/meta-llama/Llama-3.1-8B-Instruct config.json; 8.03B from the model card",
        ),
        ModelSpec(
            key="llama-3.1-70b",
            name="Llama-3.1-70B-Instruct",
            hf_repo="meta-llama/Llama-3.1-70B-Instruct",
            architecture="LlamaForCausalLM",
            num_layers=80,
            hidden_size=8192,
            intermediate_size=28672,
            num_heads=64,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=128256,
            max_position_embeddings=131072,
            rope_theta=500000.0,
            num_experts=1,
            top_k=1,
            tokenizer="tekken",
            tokenizer_exact=False,
            published_params_b=(70.6, 70.6),
            source="huggingface.co/meta-llama/Llama-3.1-70B-Instruct config.json; 70.6B from the model card",
        ),
        ModelSpec(
            # Our own choice: Mixtral's architecture at ~1/8 width and 4 layers (86M params, 172 MB in
            # bf16), so a random-weight checkpoint is written in seconds and loads on any GPU. Its
            # vocabulary is Mixtral-8x7B's, so the v1 tokenizer is exact for it.
            key="mixtral-mini",
            name="Mixtral-mini (servelab random-weight MoE)",
            hf_repo="servelab/mixtral-mini",
            architecture="MixtralForCausalLM",
            num_layers=4,
            hidden_size=512,
            intermediate_size=1024,
            num_heads=8,
            num_kv_heads=4,
            head_dim=64,
            vocab_size=32000,
            max_position_embeddings=32768,
            rope_theta=1e6,
            num_experts=8,
            top_k=2,
            tokenizer="v1",
            tokenizer_exact=True,
            published_params_b=(0.086, 0.049),
            source="servelab's own dimensions (server/catalog.py); params computed from them",
        ),
    )
}

GPUS: dict[str, GpuSpec] = {
    g.key: g
    for g in (
        GpuSpec(
            key="h100",
            name="NVIDIA H100 SXM5 80GB",
            memory_bytes=81559 * 1024**2,
            hbm_bandwidth_Bps=3.35e12,
            bf16_flops=989.4e12,
            fp8_flops=1978.9e12,
            interconnect_Bps=900e9,
            interconnect="NVLink 4",
            source="NVIDIA H100 Tensor Core GPU datasheet (SXM column: 80 GB HBM3, 3.35 TB/s, BF16 1,979 and "
            "FP8 3,958 TFLOPS with sparsity, NVLink 900 GB/s); 81559 MiB as nvidia-smi reports it",
        ),
        GpuSpec(
            key="h200",
            name="NVIDIA H200 SXM 141GB",
            memory_bytes=143771 * 1024**2,
            hbm_bandwidth_Bps=4.8e12,
            bf16_flops=989.4e12,
            fp8_flops=1978.9e12,
            interconnect_Bps=900e9,
            interconnect="NVLink 4",
            source="NVIDIA H200 Tensor Core GPU datasheet (SXM: 141 GB HBM3e, 4.8 TB/s, same tensor cores as "
            "H100 SXM, NVLink 900 GB/s); 143771 MiB as nvidia-smi reports it",
        ),
        GpuSpec(
            key="a100-80g",
            name="NVIDIA A100 SXM4 80GB",
            memory_bytes=81920 * 1024**2,
            hbm_bandwidth_Bps=2.039e12,
            bf16_flops=312e12,
            fp8_flops=None,
            interconnect_Bps=600e9,
            interconnect="NVLink 3",
            source="NVIDIA A100 Tensor Core GPU datasheet (80GB SXM: HBM2e 2,039 GB/s, BF16 312 TFLOPS "
            "dense, NVLink 600 GB/s, no FP8); 81920 MiB as nvidia-smi reports it",
        ),
        GpuSpec(
            key="l40s",
            name="NVIDIA L40S 48GB",
            memory_bytes=46068 * 1024**2,
            hbm_bandwidth_Bps=864e9,
            bf16_flops=362.05e12,
            fp8_flops=733e12,
            interconnect_Bps=64e9,
            interconnect="PCIe Gen4 x16",
            source="NVIDIA L40S datasheet (48 GB GDDR6 with ECC, 864 GB/s, BF16 362.05 / 733 TFLOPS dense / "
            "sparse, FP8 733 / 1,466, PCIe Gen4 x16 64 GB/s, no NVLink); 46068 MiB per nvidia-smi (ECC on)",
        ),
        GpuSpec(
            key="l4",
            name="NVIDIA L4 24GB",
            memory_bytes=23034 * 1024**2,
            hbm_bandwidth_Bps=300e9,
            bf16_flops=121e12,
            fp8_flops=242.5e12,
            interconnect_Bps=64e9,
            interconnect="PCIe Gen4 x16",
            source="NVIDIA L4 datasheet (24 GB GDDR6, 300 GB/s, BF16 242 and FP8 485 TFLOPS with sparsity, "
            "PCIe Gen4 x16 64 GB/s); 23034 MiB per nvidia-smi (ECC on)",
        ),
    )
}


def model(key: str) -> ModelSpec:
    try:
        return MODELS[key]
    except KeyError:
        raise KeyError(f"unknown model {key!r}; known: {', '.join(MODELS)}") from None


def gpu(key: str) -> GpuSpec:
    try:
        return GPUS[key]
    except KeyError:
        raise KeyError(f"unknown GPU {key!r}; known: {', '.join(GPUS)}") from None


@cache
def tokenizer_for(model_key: str) -> MistralTokenizer:
    """The mistral-common tokenizer whose counts the simulator reports as `usage.prompt_tokens`.

    Cached: loading a SentencePiece model takes ~50 ms, Tekken ~1 s. Mixtral-8x7B uses v1,
    Mixtral-8x22B and Mistral-7B v0.3 use v3 (SentencePiece); the Llama entries use Tekken as an
    approximation (`ModelSpec.tokenizer_exact` is False for them).
    """
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    name = model(model_key).tokenizer
    if name == "v1":
        return MistralTokenizer.v1()
    if name == "v3":
        return MistralTokenizer.v3()
    if name == "tekken":
        return MistralTokenizer.v3(is_tekken=True)
    raise ValueError(f"no loader for tokenizer {name!r}")


def tokenizer_file(model_key: str) -> str:
    """Path of the tokenizer file inside the mistral-common wheel (copied into checkpoints)."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    files = {
        "v1": "tokenizer.model.v1",
        "v3": "mistral_instruct_tokenizer_240323.model.v3",
        "tekken": "tekken_240718.json",
    }
    return str(MistralTokenizer._data_path() / files[model(model_key).tokenizer])
