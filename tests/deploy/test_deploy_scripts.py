"""scripts/*.sh and deploy/preset_override.py: the make targets' logic, run for real where it can be.

The scripts' prerequisite checks run here against controlled PATHs (no docker, a docker whose
daemon is down, everything present via stand-ins) and must name what is missing and start
nothing. The preset override is generated for every preset and merged by the real compose loader.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploy_files import COMPOSE_BASE, COMPOSE_OVERRIDES, DEPLOY, REPO, compose_config, compose_schema

SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))
# Tools the scripts may use besides the ones each test provides or withholds.
BASICS = ("bash", "dirname", "grep", "python3", "curl", "cat", "env", "sleep", "mkdir")


def test_scripts_parse() -> None:
    assert {p.name for p in SCRIPTS} >= {"compose-up.sh", "compose-down.sh", "kind-up.sh", "kind-down.sh"}
    for script in SCRIPTS:
        subprocess.run(["bash", "-n", str(script)], check=True)


def _bin(tmp_path: Path, fakes: dict[str, str]) -> dict[str, str]:
    """An environment whose PATH holds only the basics plus the given stand-in commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in BASICS:
        real = shutil.which(tool)
        if real:
            (bin_dir / tool).symlink_to(real)
    for name, body in fakes.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return {"PATH": str(bin_dir), "HOME": str(tmp_path), "LANG": "C.UTF-8"}


def _run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / script), *args], capture_output=True, text=True, env=env, timeout=30
    )


def test_compose_up_without_docker_names_what_is_missing(tmp_path: Path) -> None:
    proc = _run("compose-up.sh", "cpu", env=_bin(tmp_path, {}))
    assert proc.returncode == 2
    assert "missing: docker (not on PATH)" in proc.stderr
    assert "Docker Compose v2" in proc.stderr
    assert "nothing was started" in proc.stderr
    assert "building" not in proc.stdout


def test_compose_up_with_the_daemon_down_says_so(tmp_path: Path) -> None:
    # The situation of this machine: a docker CLI and no engine.
    proc = _run("compose-up.sh", "gpu", env=_bin(tmp_path, {"docker": "exit 1"}))
    assert proc.returncode == 2
    assert "a running Docker daemon" in proc.stderr
    assert "NVIDIA driver" in proc.stderr


def test_kind_up_without_kind_and_kubectl(tmp_path: Path) -> None:
    proc = _run("kind-up.sh", env=_bin(tmp_path, {"docker": "exit 0"}))
    assert proc.returncode == 2
    assert "missing: kind (not on PATH)" in proc.stderr
    assert "missing: kubectl (not on PATH)" in proc.stderr


def test_checks_pass_when_everything_is_there(tmp_path: Path) -> None:
    docker = """case "$1 $2" in
  "info --format") echo '{"io.containerd.runc.v2":{},"nvidia":{"path":"nvidia-container-runtime"}}';;
  *) exit 0;;
esac"""
    env = _bin(tmp_path, {"docker": docker, "nvidia-smi": "echo 'GPU 0: NVIDIA H100'", "kind": "exit 0",
                          "kubectl": "exit 0"})  # fmt: skip
    for script, args in (("compose-up.sh", ["--check", "cpu"]), ("compose-up.sh", ["--check", "gpu"]),
                         ("kind-up.sh", ["--check"])):  # fmt: skip
        proc = _run(script, *args, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "ok" in proc.stdout


def test_compose_up_usage() -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "compose-up.sh"), "tpu"], capture_output=True, text=True
    )
    assert proc.returncode == 64 and "usage:" in proc.stderr


def _preset_names() -> list[str]:
    from server.presets import PRESETS

    return sorted(PRESETS)


@pytest.mark.parametrize("name", _preset_names())
def test_preset_override_merges_to_that_presets_exact_args(name: str, tmp_path: Path) -> None:
    from deploy_files import load_module

    from server.presets import preset

    module = load_module(DEPLOY / "preset_override.py", "preset_override")
    generated = tmp_path / ".generated"
    override_path, config_path = module.write(name, generated)
    # The override names its gateway config relative to deploy/; point that at the generated one.
    text = override_path.read_text().replace("./.generated/gateway.yaml", str(config_path))
    override_path.write_text(text)
    errors = list(
        jsonschema.Draft7Validator(compose_schema()).iter_errors(
            yaml.safe_load(text.replace("!override", ""))
        )
    )
    assert not errors, [e.message for e in errors]

    project = compose_config(COMPOSE_BASE, COMPOSE_OVERRIDES["gpu"], override_path)
    p = preset(name)
    vllm = project["services"]["vllm"]
    assert vllm["command"] == p.vllm_args("0.0.0.0", 8000)
    assert vllm["entrypoint"] == ["vllm", "serve"]
    assert vllm["labels"]["servelab.dev/preset"] == name
    assert vllm["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": p.tp, "capabilities": ["gpu"]}
    ]
    mounts = [
        v for v in project["services"]["gateway"]["volumes"] if v["target"] == "/etc/servelab/gateway.yaml"
    ]
    assert [m["source"] for m in mounts] == [str(config_path)]
    from gateway.config import load_config

    cfg = load_config(config_path)
    assert list(cfg.models) == [p.served_model_name]
    assert cfg.models[p.served_model_name].backends == ["http://vllm:8000"]
