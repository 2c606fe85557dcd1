"""vLLM presets: catalog entries turned into the exact `vllm serve` arguments, in one place.

The launcher (`servelab serve --engine vllm --preset NAME`), `servelab presets show NAME
--format {cli,compose,k8s}` and the deploy files all render the same `Preset`, so the command a
GPU box runs cannot drift from the one the docs and manifests show. Each preset also names the
simulator configuration that mirrors it (`model`, `gpu`, `tp`, `dtype`), which is how the
simulator, capacity math and a real vLLM run are compared like for like.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, replace
from typing import Literal

from server import catalog

Format = Literal["cli", "compose", "k8s"]

# vLLM's names for our dtypes: weights are loaded as bfloat16 and, for "fp8", quantised on load
# (`--quantization fp8`: dynamic per-tensor W8A8 on Hopper/Ada, W8A16 Marlin on Ampere).
_VLLM_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp8": "bfloat16"}


@dataclass(frozen=True)
class Speculative:
    """vLLM's `--speculative-config`: how tokens are drafted, and how many per step.

    `ngram` drafts by matching the last tokens against the prompt and output so far (no second
    model, no GPU memory); `draft_model` runs a smaller model with the same vocabulary on the same
    GPUs (vLLM V1 has it since PR #24322, 2025). server/specdecode.py models what either does to
    TPOT for an acceptance rate.
    """

    method: Literal["ngram", "draft_model"]
    num_speculative_tokens: int
    draft_model: str | None = None  # catalog key
    prompt_lookup_max: int = 4  # ngram: longest n-gram matched

    def config(self) -> dict[str, object]:
        if self.method == "ngram":
            return {"method": "ngram", "num_speculative_tokens": self.num_speculative_tokens,
                    "prompt_lookup_max": self.prompt_lookup_max}
        assert self.draft_model is not None
        return {"method": "draft_model", "model": catalog.model(self.draft_model).hf_repo,
                "num_speculative_tokens": self.num_speculative_tokens}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: str  # catalog key
    gpu: str  # catalog key: the GPU the preset is sized for
    tp: int = 1
    dtype: Literal["bf16", "fp16", "fp8"] = "bf16"
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    enable_expert_parallel: bool = False
    max_num_seqs: int = 256
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.9
    # A local directory from `servelab checkpoint` instead of the Hugging Face repo (offline boxes).
    model_path: str | None = None
    load_format: Literal["auto", "dummy"] = "auto"
    tokenizer_mode: Literal["auto", "mistral"] = "mistral"
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    speculative: Speculative | None = None

    @property
    def served_model_name(self) -> str:
        return self.model

    def source(self) -> str:
        return self.model_path or catalog.model(self.model).hf_repo

    def vllm_args(self, host: str = "127.0.0.1", port: int = 8000) -> list[str]:
        """Arguments after `vllm serve`, in a fixed order."""
        args = [
            self.source(),
            "--served-model-name",
            self.served_model_name,
            "--host",
            host,
            "--port",
            str(port),
            "--dtype",
            _VLLM_DTYPE[self.dtype],
        ]
        if self.dtype == "fp8":
            args += ["--quantization", "fp8"]
        if self.kv_cache_dtype != "auto":
            args += ["--kv-cache-dtype", self.kv_cache_dtype]
        args += ["--tensor-parallel-size", str(self.tp)]
        if self.enable_expert_parallel:
            args.append("--enable-expert-parallel")
        args += [
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--max-model-len",
            str(self.max_model_len),
            "--gpu-memory-utilization",
            f"{self.gpu_memory_utilization:g}",
        ]
        if self.tokenizer_mode == "mistral":
            args += ["--tokenizer-mode", "mistral"]
        if self.load_format != "auto":
            args += ["--load-format", self.load_format]
        if self.scheduling_policy == "priority":
            args += ["--scheduling-policy", "priority"]
        if self.speculative is not None:
            args += ["--speculative-config", json.dumps(self.speculative.config(), separators=(",", ":"))]
        return args

    def command(self, host: str = "127.0.0.1", port: int = 8000) -> list[str]:
        return ["vllm", "serve", *self.vllm_args(host, port)]

    def with_overrides(
        self,
        *,
        tiers: bool = False,
        model_path: str | None = None,
        load_format: Literal["auto", "dummy"] | None = None,
    ) -> Preset:
        """The preset with tier scheduling, a local checkpoint or dummy weights switched on."""
        p = self
        if tiers:
            p = replace(p, scheduling_policy="priority")
        if model_path:
            p = replace(p, model_path=model_path)
        if load_format:
            p = replace(p, load_format=load_format)
        return p

    def render(self, fmt: Format, host: str | None = None, port: int = 8000) -> str:
        """The command as a shell line, a docker-compose fragment or a Kubernetes container fragment."""
        if fmt == "cli":
            return shlex.join(self.command(host or "127.0.0.1", port))
        # In a container the server must listen on all interfaces; the entrypoint is spelled out so
        # the fragment does not depend on which entrypoint a vLLM image version ships with.
        args = self.vllm_args(host or "0.0.0.0", port)
        if fmt == "compose":
            return "\n".join(
                [
                    f"# servelab preset {self.name}: {self.description}",
                    'entrypoint: ["vllm", "serve"]',
                    f"command: {json.dumps(args)}",
                ]
            )
        if fmt == "k8s":
            lines = [
                f"# servelab preset {self.name}: {self.description}",
                'command: ["vllm", "serve"]',
                "args:",
            ]
            lines += [f"  - {json.dumps(a)}" for a in args]
            lines += ["resources:", "  limits:", f'    nvidia.com/gpu: "{self.tp}"']
            return "\n".join(lines)
        raise ValueError(f"format must be cli, compose or k8s, got {fmt!r}")


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="mixtral-8x7b-fp8-h100",
            description="Mixtral-8x7B, FP8 weights quantised on load, one H100 80GB",
            model="mixtral-8x7b",
            gpu="h100",
            tp=1,
            dtype="fp8",
            max_model_len=16384,
            # The Hugging Face repo of 8x7B ships the HF tokenizer files only, not mistral-common's
            # tokenizer.model.v1; vLLM's mistral mode needs the latter, so use the HF tokenizer.
            tokenizer_mode="auto",
        ),
        Preset(
            name="mixtral-8x7b-bf16-tp2",
            description="Mixtral-8x7B, bf16, tensor parallel over two H100 80GB",
            model="mixtral-8x7b",
            gpu="h100",
            tp=2,
            dtype="bf16",
            max_model_len=32768,
            tokenizer_mode="auto",
        ),
        Preset(
            name="mixtral-8x22b-fp8-tp4",
            description="Mixtral-8x22B, FP8, four H100 80GB, experts spread by expert parallelism",
            model="mixtral-8x22b",
            gpu="h100",
            tp=4,
            dtype="fp8",
            enable_expert_parallel=True,
            max_model_len=32768,
        ),
        Preset(
            name="mixtral-8x22b-fp8-tp4-ngram",
            description="mixtral-8x22b-fp8-tp4 with n-gram speculative decoding (4 drafted tokens): "
            "pays off on workloads that repeat their prompt (RAG, code edits, summaries)",
            model="mixtral-8x22b",
            gpu="h100",
            tp=4,
            dtype="fp8",
            enable_expert_parallel=True,
            max_model_len=32768,
            speculative=Speculative("ngram", 4),
        ),
        Preset(
            name="mixtral-8x22b-fp8-tp4-draft",
            description="mixtral-8x22b-fp8-tp4 drafting 4 tokens with Mistral-7B-Instruct-v0.3 (same v3 "
            "tokenizer and 32,768-token vocabulary) on the same four GPUs",
            model="mixtral-8x22b",
            gpu="h100",
            tp=4,
            dtype="fp8",
            enable_expert_parallel=True,
            max_model_len=32768,
            speculative=Speculative("draft_model", 4, draft_model="mistral-7b"),
        ),
        Preset(
            name="mixtral-mini",
            description="the small random-weight Mixtral-architecture MoE of `servelab checkpoint`, one GPU",
            model="mixtral-mini",
            gpu="h100",
            tp=1,
            dtype="bf16",
            max_model_len=4096,
            gpu_memory_utilization=0.5,
            model_path="checkpoints/mixtral-mini",
        ),
        Preset(
            name="mixtral-8x7b-dummy-tp2",
            description="Mixtral-8x7B architecture, random (dummy) weights from a config-only checkpoint: "
            "real timings on a GPU box without internet",
            model="mixtral-8x7b",
            gpu="h100",
            tp=2,
            dtype="bf16",
            max_model_len=8192,
            model_path="checkpoints/mixtral-8x7b",
            load_format="dummy",
        ),
        Preset(
            name="mixtral-8x7b-dummy-h200",
            description="Mixtral-8x7B architecture, dummy weights, bf16 on ONE H200 (93 GB of weights fit "
            "in 141 GB): the single-GPU shape for simulator-vs-vLLM timings",
            model="mixtral-8x7b",
            gpu="h200",
            tp=1,
            dtype="bf16",
            max_model_len=8192,
            model_path="checkpoints/mixtral-8x7b",
            load_format="dummy",
        ),
        Preset(
            name="mistral-7b-h100",
            description="Mistral-7B-Instruct-v0.3, bf16, one H100 80GB (dense reference)",
            model="mistral-7b",
            gpu="h100",
            tp=1,
            dtype="bf16",
            max_model_len=32768,
        ),
    )
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
