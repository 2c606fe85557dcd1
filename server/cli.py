"""`servelab` commands of the serving half.

Two modules contribute: `cli_engine` (serve, simulate: the engine and its servers) and
`cli_tools` (capacity, presets, checkpoint: the catalog-driven tools). Each imports its heavy
dependencies inside the command functions.
"""

from __future__ import annotations

import importlib

import typer


def register(app: typer.Typer) -> None:
    for name in ("server.cli_engine", "server.cli_tools"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(app)
