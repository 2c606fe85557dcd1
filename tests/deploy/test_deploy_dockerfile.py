"""The Dockerfile, read as text: no Docker engine runs here, so `docker build` is not exercised.

What can be checked without building: pinned bases, a non-root user, a healthcheck, no secrets in
the image's environment, the packages copied are the ones pyproject installs, and the build
context leaves secrets and local state out.
"""

from __future__ import annotations

import re
import tomllib

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
