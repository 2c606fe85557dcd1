"""Numbers for the docs, produced by the repo's own commands inside cog blocks.

docs/walkthrough/*.md quote numbers only through `[[[cog ... ]]]` blocks that call these helpers;
`cog --check` (tests/servelab/test_walkthrough.py, part of `make test`) fails when what a command
prints now differs from what the page says. Regenerate with `make walkthrough`.

Two sources, both named on the page next to the number:
- `capacity(...)`, `simulate(...)`: the deterministic calculators, run now (seeded, seconds each);
- `measured(path, label)`: a number a benchmark wrote into a docs/results/ file (a live
  measurement cannot be re-run in a test); the page then drifts only if the results file changes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _run(args: tuple[str, ...]) -> str:
    argv = [sys.executable, "-m", "servelab.cli", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=None, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"`servelab {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


@cache
def capacity(*args: str) -> dict[str, Any]:
    """`servelab capacity ARGS --json`, parsed."""
    return dict(json.loads(_run(("capacity", *args, "--json"))))


@cache
def simulate(*args: str) -> dict[str, Any]:
    """`servelab simulate ARGS --json FILE`, parsed (inputs and results)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "sim.json"
        _run(("simulate", *args, "--json", str(out)))
        return dict(json.loads(out.read_text()))


def command(name: str, *args: str) -> str:
    """The command line as a reader would type it."""
    return f"servelab {name} {' '.join(args)}"


def demo_config() -> dict[str, Any]:
    """The packaged gateway config that `servelab up` and `make demo` run with."""
    return dict(yaml.safe_load((ROOT / "gateway" / "demo.yaml").read_text()))


def measured(path: str, pattern: str) -> str:
    """The first match group of `pattern` in a docs/results file (raises if the file no longer says it)."""
    text = (ROOT / path).read_text()
    m = re.search(pattern, text)
    if not m:
        raise LookupError(f"{path} no longer matches {pattern!r}: re-run its benchmark or fix the page")
    return m.group(1)
