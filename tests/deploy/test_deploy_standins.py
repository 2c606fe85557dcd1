"""The offline compose path: the stand-in override, compose v1, and the smoke script's own checks.

Fast and engine-free: the stand-in override is merged by the real compose v2 loader (and by compose
v1 where Debian's docker-compose is installed), the CA-certificate scan of scripts/compose_smoke.py
is run on a synthetic `docker save` archive (it must find a planted certificate and miss an absent
one), and the smoke script says why it cannot run when there is no Docker. The run itself is
tests/deploy/test_compose_live.py (make compose-smoke).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from deploy_files import (
    COMPOSE_BASE,
    COMPOSE_ENV,
    COMPOSE_OVERRIDES,
    DEPLOY,
    REPO,
    compose_config,
    load_module,
)

STANDINS = DEPLOY / "compose.standins.yaml"
SMOKE = load_module(REPO / "scripts" / "compose_smoke.py", "compose_smoke")


def _cert(seed: int) -> str:
    """A PEM-shaped block with distinctive 64-character base64 lines (content is not parsed)."""
    lines = [
        (f"{seed:02d}" + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")[:64]
        for _ in range(5)
    ]
    lines = [line[:-3] + f"{seed:03d}"[-3:] if i == 2 else line for i, line in enumerate(lines)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\nAB==\n-----END CERTIFICATE-----\n"


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_standins_override_swaps_only_the_third_party_images_and_parks_grafana() -> None:
    plain = compose_config(COMPOSE_BASE, COMPOSE_OVERRIDES["cpu"])
    offline = compose_config(COMPOSE_BASE, COMPOSE_OVERRIDES["cpu"], STANDINS)
    assert set(plain["services"]) - set(offline["services"]) == {"grafana"}  # profile needs-registry
    for name, svc in offline["services"].items():
        before: dict[str, Any] = plain["services"][name]
        if name in {"redis", "lb", "prometheus"}:
            assert svc["image"].startswith("servelab-standin/"), name
            assert svc["image"] != before["image"]
            assert Path(svc["build"]["context"]).is_dir()
        # Everything but image/build is what the real files say: commands, volumes, healthchecks.
        strip = {"image", "build"}
        assert {k: v for k, v in svc.items() if k not in strip} == {
            k: v for k, v in before.items() if k not in strip
        }, name


@pytest.mark.parametrize("service", ["redis", "nginx", "prometheus"])
def test_each_standin_builds_on_the_debootstrap_base_and_installs_a_debian_package(service: str) -> None:
    text = (DEPLOY / "standins" / service / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=servelab-base/debian-python:bookworm$", text, re.M)
    assert "FROM ${BASE}" in text
    assert "apt-get install" in text and "rm -rf /var/lib/apt/lists/*" in text
    assert SMOKE.BASE_IMAGE == "servelab-base/debian-python:bookworm"
    assert f"servelab-standin/{service}:bookworm" == SMOKE.STANDINS[service]


def test_compose_v1_loads_every_file() -> None:
    """Debian's docker-compose 1.29 (what apt gives here) must accept the files, overrides included."""
    v1 = shutil.which("docker-compose")
    if (
        v1 is None
        or "version 1." not in subprocess.run([v1, "version"], capture_output=True, text=True).stdout
    ):
        pytest.skip("compose v1 (Debian's docker-compose 1.29) is not installed: .ci/run installs it")
    env = {"PATH": "/usr/bin:/bin", **COMPOSE_ENV}
    for extra in (
        [COMPOSE_OVERRIDES["cpu"]],
        [COMPOSE_OVERRIDES["gpu"]],
        [COMPOSE_OVERRIDES["cpu"], STANDINS],
    ):
        argv = [v1, "-p", "servelab", "--project-directory", str(DEPLOY), "-f", str(COMPOSE_BASE)]
        for f in extra:
            argv += ["-f", str(f)]
        proc = subprocess.run([*argv, "config", "-q"], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, f"{[p.name for p in extra]}: {proc.stderr}"


def test_ca_scan_finds_a_planted_certificate_and_not_an_absent_one() -> None:
    planted, absent = _cert(1), _cert(2)
    (m_planted,), (m_absent,) = SMOKE.pem_markers(planted), SMOKE.pem_markers(absent)
    assert m_planted != m_absent
    layer_a = _tar({"etc/ssl/certs/ca-certificates.crt": b"system bundle\n" + planted.encode()})
    layer_b = _tar({"opt/servelab/bin/python": b"\x7fELF...", "etc/hostname": b"x"})
    saved = _tar({"manifest.json": b"[]", "aaa/layer.tar": layer_a, "bbb/layer.tar": layer_b})
    layers, files, hits = SMOKE.scan_saved_image(
        io.BytesIO(saved), {"planted": m_planted, "absent": m_absent}
    )
    assert (layers, files) == (2, 3)
    assert hits == {"planted": ["aaa/layer.tar:etc/ssl/certs/ca-certificates.crt"], "absent": []}


def test_pem_markers_ignores_short_blocks() -> None:
    assert SMOKE.pem_markers("-----BEGIN CERTIFICATE-----\nAB==\n-----END CERTIFICATE-----\n") == []
    assert len(SMOKE.pem_markers(_cert(3) + _cert(4))) == 2


def test_smoke_without_docker_says_it_cannot_run(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bash").symlink_to(shutil.which("bash") or "/bin/bash")
    proc = subprocess.run(
        ["/bin/bash", str(REPO / "scripts" / "compose-smoke.sh"), "--results", str(tmp_path / "r.md")],
        capture_output=True,
        text=True,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert "cannot run here: no docker CLI on PATH" in proc.stderr
    assert not (tmp_path / "r.md").exists(), "nothing ran, so no report is written"


def test_scripts_help() -> None:
    for argv in (["scripts/compose-smoke.sh", "--help"], ["scripts/build-base-image.sh", "--help"]):
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "debootstrap" in proc.stdout or "registry" in proc.stdout


def _fake_bin(tmp_path: Path, fakes: dict[str, str]) -> dict[str, str]:
    """PATH with the basics the scripts use plus the given stand-in commands (no real docker)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "grep", "python3", "curl", "cat", "env", "sleep", "mkdir"):
        real = shutil.which(tool)
        if real:
            (bin_dir / tool).symlink_to(real)
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {"PATH": str(bin_dir), "HOME": str(tmp_path), "LANG": "C.UTF-8"}


# A docker whose daemon answers but that has no compose plugin, and Debian's compose v1.
_DOCKER_NO_PLUGIN = 'case "$1" in compose) exit 1;; info) echo "{}";; *) exit 0;; esac'
_COMPOSE_V1 = 'echo "docker-compose version 1.29.2, build unknown"'


def _compose_up(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "compose-up.sh"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_compose_up_accepts_debians_compose_v1(tmp_path: Path) -> None:
    env = _fake_bin(tmp_path, {"docker": _DOCKER_NO_PLUGIN, "docker-compose": _COMPOSE_V1})
    proc = _compose_up("--check", "cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "prerequisites for compose-up cpu: ok" in proc.stdout


def test_compose_up_refuses_what_v1_and_the_standins_cannot_do(tmp_path: Path) -> None:
    env = _fake_bin(tmp_path, {"docker": _DOCKER_NO_PLUGIN, "docker-compose": _COMPOSE_V1})
    # A non-default preset's generated override uses compose v2's !override tag.
    proc = _compose_up("--check", "gpu", "mixtral-8x7b-bf16-tp2", env=env)
    assert proc.returncode == 2
    assert "Docker Compose v2 for a non-default preset" in proc.stderr
    # vLLM has no Debian package, so there is no offline gpu flavour.
    proc = _compose_up("--check", "gpu", env={**env, "SERVELAB_STANDINS": "1"})
    assert proc.returncode == 2
    assert "stand-ins are for cpu only" in proc.stderr
    assert "nothing was started" in proc.stderr
