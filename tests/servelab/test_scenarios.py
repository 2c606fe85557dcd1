"""The scenarios that pass reliably on a small shared machine, in short form, against one stack.

Each runs as a user runs it (`servelab scenario NAME --short` against a `servelab up` process) and
must exit 0 with every check of its verdict passed. The longer ones (scale-out, cold-start,
noisy-neighbour, overload) are in long_scenarios.py, run by `make scenarios`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scenario_stack import run_scenario, scenario_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with scenario_stack(tmp_path_factory.mktemp("scn") / "stack") as state:
        yield state


@pytest.mark.parametrize("name", ["burst", "backend-down", "redis-down"])
def test_scenario_verdict(stack: Path, tmp_path: Path, name: str) -> None:
    code, verdict, text = run_scenario(stack, name, tmp_path)
    assert verdict.get("scenario") == name, text
    failed = [c for c in verdict["checks"] if not c["ok"]]
    assert code == 0 and verdict["ok"] and not failed, f"{failed}\n{text}"
    assert len(verdict["checks"]) >= 3


def test_unknown_scenario_and_missing_stack_are_clear_errors(tmp_path: Path) -> None:
    code, _, text = run_scenario(tmp_path, "burst", tmp_path)
    assert code == 2 and "servelab up" in text
    code, _, text = run_scenario(tmp_path, "no-such", tmp_path)
    assert code == 2 and "unknown scenario" in text
