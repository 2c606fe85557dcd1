"""Run a command under a pseudo-terminal and keep a pyte screen of what it drew."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Sequence

import pyte


class PtyScreen:
    def __init__(
        self,
        argv: Sequence[str],
        cols: int = 160,
        rows: int = 60,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        full_env = {
            **os.environ,
            **(env or {}),
            "TERM": "xterm-256color",
            "COLUMNS": str(cols),
            "LINES": str(rows),
        }
        self.proc = subprocess.Popen(
            list(argv), stdin=slave, stdout=slave, stderr=slave, env=full_env, cwd=cwd, start_new_session=True
        )
        os.close(slave)
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()

    def pump(self, timeout_s: float = 0.1) -> bool:
        """Feed what the program wrote (waiting up to timeout_s for something); True if it wrote."""
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:
            return False
        self.raw += data
        self.stream.feed(data)
        return bool(data)

    def drain(self) -> str:
        """Everything written so far, drawn: the screen as it is now, not as it was frames ago."""
        while self.pump(0.02):
            pass
        return self.text()

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float, what: str) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump()
            text = self.text()
            if predicate(text):
                return text
            if self.proc.poll() is not None:
                self.pump(0.2)
                raise AssertionError(
                    f"process exited ({self.proc.returncode}) waiting for {what}:\n{self.text()}\n"
                    f"{self.raw[-2000:]!r}"
                )
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; screen:\n{self.text()}")

    def interrupt(self, timeout_s: float = 10.0) -> int:
        """Ctrl-C as a terminal sends it (to the foreground process group)."""
        os.killpg(self.proc.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pump()
        if self.proc.poll() is None:
            # Still running: ask for its threads' stacks (servelab top registers SIGUSR1 with
            # faulthandler) so the failure says where it is stuck.
            os.kill(self.proc.pid, signal.SIGUSR1)
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                self.pump()
            raise AssertionError(
                f"still running {timeout_s:.0f}s after Ctrl-C; its output, stacks last:\n"
                + self.raw[-6000:].decode(errors="replace")
            )
        return self.proc.wait(timeout=1)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)
