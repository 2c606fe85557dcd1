"""The longer scenarios in short form (`make scenarios`; not part of `make test`).

Named without the test_ prefix so the default collection skips it; the make target names it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scenario_stack import run_scenario, scenario_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with scenario_stack(tmp_path_factory.mktemp("scn") / "stack", spare=True) as state:
        yield state


@pytest.mark.parametrize("name", ["scale-out", "cold-start", "overload", "noisy-neighbour"])
def test_long_scenario_verdict(stack: Path, tmp_path: Path, name: str) -> None:
    code, verdict, text = run_scenario(stack, name, tmp_path, timeout_s=400)
    assert verdict.get("scenario") == name, text
    failed = [c for c in verdict["checks"] if not c["ok"]]
    assert code == 0 and verdict["ok"] and not failed, f"{failed}\n{text}"
