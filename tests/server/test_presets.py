"""Presets render exact `vllm serve` arguments; the launcher runs them; checkpoints load."""

from __future__ import annotations

import json
import shlex
import stat
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import typer
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from typer.testing import CliRunner

from servelab.procs import free_port
from server import cli_tools
from server.catalog import model
from server.checkpoint import tensor_shapes, write_checkpoint
from server.launcher import LaunchOptions, VllmNotInstalled, command, dry_run, start_server
from server.presets import PRESETS, preset


def _app() -> typer.Typer:
    app = typer.Typer()
    cli_tools.register(app)
    return app


def test_required_presets_exist() -> None:
    assert {"mixtral-8x7b-fp8-h100", "mixtral-8x7b-bf16-tp2", "mixtral-8x22b-fp8-tp4", "mixtral-mini"} <= set(
        PRESETS
    )


def test_mixtral_8x7b_fp8_exact_args() -> None:
    assert preset("mixtral-8x7b-fp8-h100").command() == [
        "vllm", "serve", "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "--served-model-name", "mixtral-8x7b",
        "--host", "127.0.0.1", "--port", "8000",
        "--dtype", "bfloat16", "--quantization", "fp8",
        "--tensor-parallel-size", "1",
        "--max-num-seqs", "256", "--max-model-len", "16384",
        "--gpu-memory-utilization", "0.9",
    ]  # fmt: skip


def test_mixtral_8x22b_tp4_expert_parallel_mistral_tokenizer_and_tiers() -> None:
    args = preset("mixtral-8x22b-fp8-tp4").with_overrides(tiers=True).vllm_args(port=9001)
    assert args[0] == "mistralai/Mixtral-8x22B-Instruct-v0.1"
    line = " ".join(args)
    assert "--tensor-parallel-size 4 --enable-expert-parallel" in line
    assert "--quantization fp8" in line
    assert line.endswith("--tokenizer-mode mistral --scheduling-policy priority")
    assert "--port 9001" in line
    assert "--scheduling-policy" not in " ".join(preset("mixtral-8x22b-fp8-tp4").vllm_args())


def test_bf16_tp2_and_mini_and_dummy() -> None:
    tp2 = " ".join(preset("mixtral-8x7b-bf16-tp2").vllm_args())
    assert "--dtype bfloat16 --tensor-parallel-size 2" in tp2 and "--quantization" not in tp2
    mini = preset("mixtral-mini").vllm_args()
    assert mini[0] == "checkpoints/mixtral-mini" and "--tokenizer-mode" in mini
    dummy = " ".join(preset("mixtral-8x7b-dummy-tp2").vllm_args())
    assert dummy.startswith("checkpoints/mixtral-8x7b ") and dummy.endswith("--load-format dummy")


def test_presets_show_cli_prints_the_same_command_as_the_launcher_dry_run() -> None:
    res = CliRunner().invoke(_app(), ["presets", "show", "mixtral-8x7b-bf16-tp2", "--port", "8123"])
    assert res.exit_code == 0, res.output
    opts = LaunchOptions(preset="mixtral-8x7b-bf16-tp2", port=8123)
    assert res.output.strip() == dry_run(opts)
    assert shlex.split(res.output) == command(opts)


def test_presets_show_compose_and_k8s_carry_the_same_args() -> None:
    p = preset("mixtral-8x22b-fp8-tp4")
    compose = CliRunner().invoke(_app(), ["presets", "show", p.name, "--format", "compose"]).output
    line = next(ln for ln in compose.splitlines() if ln.startswith("command:"))
    assert json.loads(line.removeprefix("command:")) == p.vllm_args(host="0.0.0.0")
    k8s = CliRunner().invoke(_app(), ["presets", "show", p.name, "--format", "k8s"]).output
    args = [json.loads(ln.strip().removeprefix("- ")) for ln in k8s.splitlines() if ln.startswith("  - ")]
    assert args == p.vllm_args(host="0.0.0.0")
    assert 'nvidia.com/gpu: "4"' in k8s


def test_presets_show_unknown_name_fails_with_known_names() -> None:
    res = CliRunner().invoke(_app(), ["presets", "show", "nope"])
    assert res.exit_code != 0
    assert "mixtral-mini" in res.output


def test_dry_run_prints_exact_command_with_overrides() -> None:
    opts = LaunchOptions(
        preset="mixtral-mini", port=8555, tiers=True, model_path="/models/mini", extra_args=("--seed", "1")
    )
    assert dry_run(opts) == (
        "vllm serve /models/mini --served-model-name mixtral-mini --host 127.0.0.1 --port 8555 "
        "--dtype bfloat16 --tensor-parallel-size 1 --max-num-seqs 256 --max-model-len 4096 "
        "--gpu-memory-utilization 0.5 --tokenizer-mode mistral --scheduling-policy priority --seed 1"
    )


def test_launch_without_vllm_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(VllmNotInstalled, match=r"servelab\[vllm\]"):
        start_server(LaunchOptions(preset="mixtral-mini", vllm_executable=str(tmp_path / "no-vllm")))


_FAKE_VLLM = """#!{python}
# Stands in for `vllm serve` in tests: records its argv, serves /health on --port, exits on SIGTERM.
import http.server, json, sys
argv = sys.argv[1:]
open({record!r}, "w").write(json.dumps(argv))
port = int(argv[argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_launcher_starts_waits_for_health_and_stops(tmp_path: Path) -> None:
    record = tmp_path / "argv.json"
    fake = tmp_path / "vllm"
    fake.write_text(_FAKE_VLLM.format(python=sys.executable, record=str(record)))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    port = free_port()
    opts = LaunchOptions(
        preset="mixtral-8x7b-fp8-h100", port=port, vllm_executable=str(fake), health_timeout_s=20
    )
    child = start_server(opts)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            assert resp.status == 200
        assert json.loads(record.read_text()) == command(opts)[1:]  # "serve", then the preset
    finally:
        code = child.stop()
    assert not child.alive()
    assert code is not None


def test_checkpoint_mini_writes_loadable_config_tokenizer_and_weights(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    info = write_checkpoint("mixtral-mini", tmp_path / "mini")
    m = model("mixtral-mini")
    cfg = json.loads((tmp_path / "mini" / "config.json").read_text())
    assert cfg["architectures"] == ["MixtralForCausalLM"] and cfg["model_type"] == "mixtral"
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"]) == (8, 2)
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (512, 4, 32000)
    tensors = load_file(str(tmp_path / "mini" / "model.safetensors"))
    assert {k: v.shape for k, v in tensors.items()} == dict(tensor_shapes(m))
    assert sum(v.size for v in tensors.values()) == m.params_total == info.params
    w = tensors["model.layers.0.block_sparse_moe.experts.3.w1.weight"]
    assert np.isfinite(w).all() and 0.005 < float(np.abs(w).mean()) < 0.07
    tok = MistralTokenizer.from_file(str(tmp_path / "mini" / "tokenizer.model.v1"))
    assert tok.instruct_tokenizer.tokenizer.n_words == cfg["vocab_size"]


def test_checkpoint_cli_no_weights_for_load_format_dummy(tmp_path: Path) -> None:
    out = tmp_path / "x22b"
    res = CliRunner().invoke(
        _app(), ["checkpoint", "--model", "mixtral-8x22b", "--out", str(out), "--no-weights"]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "tokenizer.model.v3",
    ]
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (56, 6144, 16384)
    assert "load-format dummy" in res.output


def test_servelab_serve_engine_vllm_dry_run_prints_the_exact_command() -> None:
    """The real command line, in a subprocess: `servelab serve --engine vllm --preset ... --dry-run`."""
    import subprocess

    exe = Path(sys.executable).with_name("servelab")
    argv = [
        str(exe),
        "serve",
        "--engine",
        "vllm",
        "--preset",
        "mixtral-8x7b-bf16-tp2",
        "--port",
        "8555",
        "--dry-run",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == dry_run(LaunchOptions(preset="mixtral-8x7b-bf16-tp2", port=8555))
    assert out.startswith("vllm serve mistralai/Mixtral-8x7B-Instruct-v0.1 --served-model-name mixtral-8x7b")


def test_speculative_presets_render_vllm_speculative_config() -> None:
    ngram = preset("mixtral-8x22b-fp8-tp4-ngram").vllm_args()
    assert ngram[-2:] == ["--speculative-config",
                          '{"method":"ngram","num_speculative_tokens":4,"prompt_lookup_max":4}']
    draft = preset("mixtral-8x22b-fp8-tp4-draft").vllm_args()
    cfg = json.loads(draft[draft.index("--speculative-config") + 1])
    assert cfg == {"method": "draft_model", "model": "mistralai/Mistral-7B-Instruct-v0.3",
                   "num_speculative_tokens": 4}
    # the draft must share the target's vocabulary for vLLM's rejection sampler
    assert model("mistral-7b").vocab_size == model("mixtral-8x22b").vocab_size
    assert "--speculative-config" not in preset("mixtral-8x22b-fp8-tp4").vllm_args()
