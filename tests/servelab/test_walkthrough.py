"""The walkthrough pages quote only numbers their commands print now (`cog --check`).

A page that drifted fails here with cog's own message; `make walkthrough` regenerates them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["docs/walkthrough/serving.md", "docs/walkthrough/platform.md"]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("page", PAGES)
def test_walkthrough_numbers_match_their_commands(page: str) -> None:
    text = (ROOT / page).read_text()
    assert "[[[cog" in text and "[[[end]]]" in text, f"{page} has no cog blocks: its numbers are not checked"
    proc = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", "--verbosity=1", page],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"{page} drifted from its commands; run `make walkthrough`:\n{proc.stdout}{proc.stderr}"
    )


def test_the_check_catches_a_drifted_number(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        (ROOT / "docs/walkthrough/platform.md").read_text().replace("| tight | 5 |", "| tight | 6 |")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", str(page)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
