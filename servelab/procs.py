"""Child processes that servelab starts, waits on and stops.

Used by the local stack, the benchmarks and the tests alike, so that every server servelab
starts binds to 127.0.0.1, is polled for readiness against a deadline (never slept on), and is
stopped by the PID we started, process group included, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_http_ok(url: str, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers 2xx; raise with the reason if the deadline passes or `proc` dies."""
    deadline = time.monotonic() + timeout_s
    last: str = "no answer yet"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                if 200 <= resp.status < 300:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s: {last}")


def wait_port(host: str, port: int, timeout_s: float = 15.0) -> None:
    """Poll until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} not accepting connections after {timeout_s:.0f}s")


@dataclass
class Child:
    """A started process with its own process group, and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None
    _log_file: object | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the group we started, then SIGKILL if it does not exit in time."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
        return self.popen.returncode

    def kill9(self) -> None:
        """SIGKILL the group at once (tests use this to simulate a crashed process)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=5)


def start(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    cwd: Path | None = None,
) -> Child:
    """Start `argv` in a new process group (so stop() reaches its children too)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    log_file = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed in Child.stop
    popen = subprocess.Popen(
        list(argv),
        env=full_env,
        cwd=cwd,
        stdout=log_file if log_file else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log_file else subprocess.DEVNULL,
        start_new_session=True,
    )
    return Child(name=name, popen=popen, log_path=log_path, _log_file=log_file)


def python_module(module: str, *args: str) -> list[str]:
    """argv that runs `python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]
