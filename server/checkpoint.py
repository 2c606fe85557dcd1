"""Write a random-weight checkpoint of a catalog model, with a real Mistral tokenizer, for offline GPU boxes.

vLLM on a machine without internet needs a model directory: `config.json` (Hugging Face format,
which vLLM reads to build the architecture), weights (`*.safetensors`, Hugging Face tensor names)
and a tokenizer. The tokenizer is copied from the mistral-common wheel, so `--tokenizer-mode
mistral` counts tokens exactly as the simulator does. With `weights=False` only the config and the
tokenizer are written: `vllm serve DIR --load-format dummy` then fills the real architecture with
random weights itself, which gives real timings for Mixtral-8x7B without 93 GB of files.

Weights are float16 (numpy has no bfloat16; vLLM casts them to `--dtype` on load). Their values
are random with magnitudes between 2^-7 and 2^-4 (norms are 1.0), built from random bits rather
than a normal sampler because that is 25x faster and the values only have to be finite and small.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.catalog import ModelSpec, model, tokenizer_file

SHARD_BYTES = 4 * 1024**3  # Hugging Face's usual shard size; vLLM reads the index file either way

_TOKENIZER_NAMES = {"v1": "tokenizer.model.v1", "v3": "tokenizer.model.v3", "tekken": "tekken.json"}


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    model: str
    params: int
    weight_files: tuple[str, ...]
    weight_bytes: int
    tokenizer: str


def hf_config(m: ModelSpec) -> dict[str, object]:
    """The Hugging Face `config.json` of the architecture (what vLLM reads to build the model)."""
    model_type = {
        "MixtralForCausalLM": "mixtral",
        "MistralForCausalLM": "mistral",
        "LlamaForCausalLM": "llama",
    }
    cfg: dict[str, object] = {
        "architectures": [m.architecture],
        "model_type": model_type[m.architecture],
        "hidden_size": m.hidden_size,
        "intermediate_size": m.intermediate_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.num_kv_heads,
        "head_dim": m.head_dim,
        "vocab_size": m.vocab_size,
        "max_position_embeddings": m.max_position_embeddings,
        "rope_theta": m.rope_theta,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if m.is_moe:
        cfg.update(num_local_experts=m.num_experts, num_experts_per_tok=m.top_k, router_aux_loss_coef=0.02)
    if m.architecture != "LlamaForCausalLM":
        cfg["sliding_window"] = None
    return cfg


def tensor_shapes(m: ModelSpec) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every tensor of the checkpoint under its Hugging Face name, in file order."""
    h, q, kv = m.hidden_size, m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    yield "model.embed_tokens.weight", (m.vocab_size, h)
    for i in range(m.num_layers):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (h,)
        yield f"{p}.self_attn.q_proj.weight", (q, h)
        yield f"{p}.self_attn.k_proj.weight", (kv, h)
        yield f"{p}.self_attn.v_proj.weight", (kv, h)
        yield f"{p}.self_attn.o_proj.weight", (h, q)
        yield f"{p}.post_attention_layernorm.weight", (h,)
        if m.is_moe:
            yield f"{p}.block_sparse_moe.gate.weight", (m.num_experts, h)
            for e in range(m.num_experts):
                ep = f"{p}.block_sparse_moe.experts.{e}"
                yield f"{ep}.w1.weight", (m.intermediate_size, h)
                yield f"{ep}.w2.weight", (h, m.intermediate_size)
                yield f"{ep}.w3.weight", (m.intermediate_size, h)
        else:
            yield f"{p}.mlp.gate_proj.weight", (m.intermediate_size, h)
            yield f"{p}.mlp.up_proj.weight", (m.intermediate_size, h)
            yield f"{p}.mlp.down_proj.weight", (h, m.intermediate_size)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (m.vocab_size, h)


def _random_fp16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    bits = rng.integers(0, 2**16, size=n, dtype=np.uint16)
    # sign and 10 mantissa bits random; biased exponent 8..10, i.e. magnitudes in [2^-7, 2^-4)
    exponent = (8 + (bits >> 10) % 3).astype(np.uint16) << 10
    out = (bits & 0x83FF) | exponent
    return out.view(np.float16).reshape(shape)


def write_checkpoint(model_key: str, out_dir: Path, *, weights: bool = True, seed: int = 0) -> CheckpointInfo:
    """Write config.json, the tokenizer and (unless weights=False) random safetensors weights."""
    from safetensors.numpy import save_file

    m = model(model_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(hf_config(m), indent=2) + "\n")
    (out_dir / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2) + "\n"
    )
    tok_name = _TOKENIZER_NAMES[m.tokenizer]
    shutil.copyfile(tokenizer_file(model_key), out_dir / tok_name)

    files: list[str] = []
    total_bytes = 0
    params = 0
    if weights:
        rng = np.random.default_rng(seed)
        # Group tensors into shards of at most SHARD_BYTES, then write each shard with its index entry.
        shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
        size = 0
        for name, shape in tensor_shapes(m):
            nbytes = int(np.prod(shape)) * 2
            if shards[-1] and size + nbytes > SHARD_BYTES:
                shards.append([])
                size = 0
            shards[-1].append((name, shape))
            size += nbytes
        weight_map: dict[str, str] = {}
        for k, shard in enumerate(shards):
            fname = (
                "model.safetensors"
                if len(shards) == 1
                else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            )
            tensors = {}
            for name, shape in shard:
                is_norm = name.endswith("norm.weight")
                tensors[name] = np.ones(shape, np.float16) if is_norm else _random_fp16(rng, shape)
                weight_map[name] = fname
                params += int(np.prod(shape))
            save_file(tensors, out_dir / fname, metadata={"format": "pt"})
            (out_dir / fname).chmod(0o644)  # safetensors creates 0600; containers often run as another user
            total_bytes += sum(t.nbytes for t in tensors.values())
            files.append(fname)
            del tensors
        if len(shards) > 1:
            index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
            (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return CheckpointInfo(
        path=out_dir,
        model=model_key,
        params=params if weights else m.params_total,
        weight_files=tuple(files),
        weight_bytes=total_bytes,
        tokenizer=tok_name,
    )
