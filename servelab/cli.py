"""The `servelab` command line: one Typer app that each package extends.

Each package owns its commands in its own `cli.py` and exposes `register(app)`. Those modules
import their heavy dependencies (FastAPI apps, Locust with its gevent monkey-patching, numpy)
inside the command functions, so `servelab --help` stays fast and one command's imports never
leak into another's process.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="servelab",
    help="Multi-tenant LLM gateway, a vLLM-like MoE serving simulator, and load tests that measure them.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Packages that contribute commands. A package whose cli module is not written yet is skipped,
# so the tool works while the parts land one by one.
_COMMAND_MODULES = (
    "servelab.stackcli",
    "servelab.top",
    "servelab.scenarios",
    "servelab.rollout",
    "gateway.cli",
    "server.cli",
    "loadtest.cli",
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
