"""The Dockerfile, read as text (fast, no engine); `make compose-smoke` builds and runs it for real.

What can be checked without building: pinned bases, the base as a build argument, extra CA
certificates only through a build-stage secret, a non-root user, a healthcheck, no secrets in the
image's environment, the packages copied are the ones pyproject installs, and the build context
leaves secrets and local state out.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from deploy_files import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
INSTRUCTIONS = [line.strip() for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()]
INSTRUCTIONS = [line for line in INSTRUCTIONS if line and not line.startswith("#")]


def _all(keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in INSTRUCTIONS if line.split(None, 1)[0].upper() == keyword]


def test_base_images_are_pinned() -> None:
    args = dict(a.split("=", 1) for a in _all("ARG") if "=" in a)
    for base in _all("FROM"):
        image = base.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), f"unpinned base image {image}"


def test_runs_as_non_root_with_a_healthcheck_and_the_cli_entrypoint() -> None:
    users = _all("USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert users[-1].split(":")[0].isdigit(), "a numeric UID lets Kubernetes check runAsNonRoot"
    assert _all("HEALTHCHECK") and "SERVELAB_HEALTH_URL" in _all("HEALTHCHECK")[0]
    assert _all("ENTRYPOINT") == ['["servelab"]']


def test_no_secrets_in_the_image() -> None:
    env_and_args = " ".join(_all("ENV") + _all("ARG")).upper()
    for word in ("TOKEN", "PASSWORD", "SECRET", "API_KEY", "REDIS_URL"):
        assert word not in env_and_args


def test_copies_exactly_the_packages_pyproject_installs() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {c.split()[0] for c in _all("COPY") if not c.startswith("--from")}
    assert packages <= copied
    assert "." not in copied, "copying the whole context would pull in tests, runs and secrets"


def test_build_context_excludes_local_state_and_secrets() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "**/.env", "runs", "tests"} <= ignored


def test_the_image_install_step_ships_code_and_package_data(tmp_path: Path) -> None:
    """What `pip install .` in the build stage gets: only the COPY'd files, built as a wheel."""
    context = tmp_path / "context"
    context.mkdir()
    for source in (c.split()[0] for c in _all("COPY") if not c.startswith("--from")):
        src = REPO / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for source in _all("COPY")[0].split()[:-1]:  # pyproject.toml README.md
        shutil.copy(REPO / source, context / source)
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-c", f"import setuptools.build_meta as b; b.build_wheel({str(out)!r})"],
        cwd=context, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (wheel,) = out.glob("servelab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # The gateway's Lua scripts and demo config are package data: an image without them cannot start.
    for needed in ("gateway/lua/admit.lua", "gateway/lua/settle.lua", "gateway/demo.yaml", "servelab/cli.py",
                   "server/sim/api.py", "loadtest/runner.py"):  # fmt: skip
        assert needed in names, needed
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "servelab = servelab.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for line in INSTRUCTIONS:
        if line.split(None, 1)[0].upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_base_is_a_build_argument_for_both_stages() -> None:
    # Machines without a registry pass a debootstrap base (scripts/build-base-image.sh).
    assert _all("FROM") == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    assert any(a.startswith("PYTHON_IMAGE=python:") for a in _all("ARG"))


def test_extra_ca_certificates_reach_only_the_build_stage_as_a_secret() -> None:
    build, final = _stages()
    build_runs = [line for line in build if line.startswith("RUN")]
    pip_runs = [line for line in build_runs if "pip install" in line]
    assert len(pip_runs) == 2
    for run in pip_runs:
        assert "--mount=type=secret,id=extra-ca,required=false" in run
        assert "rm -f /tmp/pip-ca.pem" in run, "the combined bundle is removed in the same RUN"
    # The final stage takes only the venv from the build stage; no certificate is copied anywhere.
    assert [line for line in final if line.startswith("COPY")] == [
        "COPY --from=build /opt/servelab /opt/servelab"
    ]
    assert not [line for line in INSTRUCTIONS if line.startswith(("COPY", "ADD")) and ".crt" in line]
    assert "extra-ca" not in " ".join(final)
    # The index is a build-stage argument, not part of the published image's environment.
    assert not [line for line in final if "PIP_INDEX_URL" in line]
