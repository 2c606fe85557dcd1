"""Launch `vllm serve` from a preset: build the exact command, start it, wait for /health, stop it cleanly.

This is the `--engine vllm` side of `servelab serve`. vLLM is an optional extra
(`pip install servelab[vllm]`) that only a GPU box has, so nothing here imports it: the command is
built from `server.presets`, `--dry-run` prints it, and a real launch runs the `vllm` executable in
its own process group (so stopping it reaches its tensor-parallel workers too).
"""

from __future__ import annotations

import shlex
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from servelab.procs import Child, start, wait_http_ok
from server.presets import Preset, preset


@dataclass(frozen=True)
class LaunchOptions:
    preset: str
    host: str = "127.0.0.1"
    port: int = 8000
    tiers: bool = False  # --scheduling-policy priority, so requests' `priority` field orders them
    model_path: str | None = None  # a local checkpoint directory instead of the preset's source
    load_format: str | None = None  # "dummy": random weights, config + tokenizer only
    extra_args: tuple[str, ...] = ()  # passed through verbatim after the preset's arguments
    health_timeout_s: float = 1800.0  # weights of a big model can take many minutes to load
    log_path: Path | None = None
    vllm_executable: str = "vllm"


def resolve(opts: LaunchOptions) -> Preset:
    return preset(opts.preset).with_overrides(
        tiers=opts.tiers,
        model_path=opts.model_path,
        load_format=opts.load_format,  # type: ignore[arg-type]
    )


def command(opts: LaunchOptions) -> list[str]:
    """The exact argv that `launch` runs."""
    p = resolve(opts)
    return [opts.vllm_executable, "serve", *p.vllm_args(opts.host, opts.port), *opts.extra_args]


def dry_run(opts: LaunchOptions) -> str:
    return shlex.join(command(opts))


class VllmNotInstalled(RuntimeError):
    """The `vllm` executable is not on PATH (install the `vllm` extra on a GPU machine)."""


def start_server(opts: LaunchOptions) -> Child:
    """Start vLLM and return once /health answers 200; raises if it exits or times out first."""
    exe = shutil.which(opts.vllm_executable)
    if exe is None:
        raise VllmNotInstalled(
            f"{opts.vllm_executable!r} is not on PATH: `pip install 'servelab[vllm]'` on a GPU machine, "
            "or use --dry-run to print the command"
        )
    argv = command(opts)
    argv[0] = exe
    child = start(f"vllm-{opts.preset}", argv, log_path=opts.log_path)
    try:
        wait_http_ok(f"http://{opts.host}:{opts.port}/health", opts.health_timeout_s, child.popen)
    except BaseException:
        child.stop()
        raise
    return child


def serve_forever(opts: LaunchOptions, on_ready: Callable[[Child], None] | None = None) -> int:
    """Run vLLM until it exits or we get SIGINT/SIGTERM, then stop it; returns its exit code."""
    child = start_server(opts)
    if on_ready is not None:
        on_ready(child)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            if not child.alive():
                break
    finally:
        code = child.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code or 0
