"""Process settings of the simulator server (`servelab serve --engine sim`), one pydantic-settings class.

The CLI fills these from its flags; the environment (prefix `SERVELAB_SIM_`) can too, which is how
a container would configure it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SimSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVELAB_SIM_", extra="forbid")

    model: str = Field("mixtral-8x7b", description="catalog model key")
    gpu: str = Field("h100", description="catalog GPU key")
    tp: int = Field(1, ge=1, description="tensor-parallel GPUs per replica")
    dtype: str = Field("bf16", description="weight dtype: bf16, fp8, int4")
    kv_dtype: str | None = Field(None, description="KV-cache dtype (default: bf16, or the weight dtype)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    served_model_name: str | None = Field(None, description="model id clients send (default: catalog key)")
    max_num_seqs: int = Field(1024, ge=1)
    max_num_batched_tokens: int = Field(8192, ge=1)
    max_model_len: int | None = Field(None, ge=2, description="default: model context, capped by KV")
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    enable_chunked_prefill: bool = Field(True, description="False: vLLM V0's prefill-first scheduler")
    block_size: int = Field(16, ge=1)
    num_kv_blocks: int | None = Field(None, ge=1, description="override the perf model's KV blocks")
    speedup: float = Field(1.0, gt=0, description="engine time runs this many times faster than real time")
    default_max_tokens: int = Field(
        256, ge=1, description="max_tokens when a request gives none (the simulated model has no EOS)")
    output_len: str | None = Field(
        None, description="length distribution of natural (EOS) output lengths, e.g. sharegpt-out; "
        "None: outputs run to max_tokens")
    cold_start: bool = Field(
        False, description="a freshly started vLLM 0.5.x: fused-MoE kernels compile on first use "
        "(server/sim/coldstart.py; MoE models only)")
    seed: int = 0

    @property
    def name(self) -> str:
        return self.served_model_name or self.model
