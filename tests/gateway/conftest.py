"""Gateway test fixtures: configs written to files, gateways on real sockets, keys via the admin API.

`gateway` runs one gateway in-process (uvicorn in a thread on a free port); `gateway_proc` runs
it as its own process (`python -m gateway`) for multi-replica and crash tests. Both talk to the
session's real redis-server and to real upstreams started by `fast_upstream`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from gwkit import ADMIN_TOKEN, GatewayHandle, plan

from gateway.app import create_app
from gateway.config import load_config
from gateway.settings import GatewaySettings
from servelab.procs import Child, free_port, python_module, wait_http_ok

log = logging.getLogger("tests.gateway")


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config with one model 'fast' on `backends` and tenants given as name -> plan dict."""

    def _write(backends: list[str], tenants: dict[str, dict[str, Any]] | None = None, **model: Any) -> Path:
        tenants = tenants or {"acme": plan()}
        data = {
            "plans": {f"plan-{name}": p for name, p in tenants.items()},
            "tenants": {name: {"plan": f"plan-{name}", "models": ["fast"]} for name in tenants},
            "models": {
                "fast": {
                    "backends": backends,
                    "input_price_per_million_usd": 0.5,
                    "output_price_per_million_usd": 1.5,
                    **model,
                },
                "other": {"backends": backends},
            },
        }
        path = tmp_path / f"gateway-{free_port()}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return _write


def _settings(redis_url: str, config_path: Path, **kw: Any) -> GatewaySettings:
    # Each gateway gets its own spool folder next to its config (never the repo's working dir).
    spool = config_path.with_name(config_path.stem + "-spool")
    return GatewaySettings(
        config_path=config_path,
        redis_url=redis_url,
        admin_token=ADMIN_TOKEN,
        **{"lease_ttl_s": 2.0, "upstream_read_timeout_s": 10.0, "spool_dir": spool, **kw},
    )


class _ThreadServer(uvicorn.Server):
    loop: asyncio.AbstractEventLoop | None = None

    def install_signal_handlers(self) -> None:  # the test thread is not the main thread
        pass

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()  # for `_stacks` if the thread does not exit
        await super().serve(sockets)


def _stacks(server: _ThreadServer, thread: threading.Thread) -> str:
    """Where a gateway thread that did not exit is stuck: its thread and its loop's tasks."""
    out = io.StringIO()
    frame = sys._current_frames().get(thread.ident or 0)
    if frame is not None:
        traceback.print_stack(frame, file=out)
    if server.loop is not None:
        for task in asyncio.all_tasks(server.loop):  # read from another thread: a best effort
            task.print_stack(file=out)
    return out.getvalue()


# Shutdown: uvicorn lets running requests finish for up to this long, then cancels them and
# runs the lifespan's shutdown; the thread must be gone within the join timeout, or the test
# fails. Some tests end with long streams still running (test_fairness_gateway's backlog: about
# 8 s); cancelling those leaves their upstream sockets to the garbage collector, whose
# ResourceWarning then fails a later test. A thread left running keeps its event loop (and
# redis-py's reconnect jitter, which draws from the global `random`) alive under later tests.
_GRACEFUL_SHUTDOWN_S = 30
_JOIN_TIMEOUT_S = 45.0


@pytest.fixture
def gateway(redis_url: str) -> Iterator[Callable[..., GatewayHandle]]:
    """Start in-process gateways (uvicorn in a thread); all stopped at test end, and the test
    fails if a gateway's thread does not exit."""
    handles: list[GatewayHandle] = []

    def _start(config_path: Path, **settings_kw: Any) -> GatewayHandle:
        settings = _settings(settings_kw.pop("redis_url", redis_url), config_path, **settings_kw)
        app = create_app(settings, load_config(config_path))
        port = free_port()
        server = _ThreadServer(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                access_log=False,
                lifespan="on",
                loop="asyncio",
                timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
            )
        )
        thread = threading.Thread(target=server.run, daemon=True, name=f"gateway-{port}")
        thread.start()

        def stop() -> bool:
            server.should_exit = True
            thread.join(timeout=_JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.error("Gateway thread %s still running: %s", thread.name, _stacks(server, thread))
            return not thread.is_alive()

        handles.append(GatewayHandle(url=f"http://127.0.0.1:{port}", config_path=config_path, stopper=stop))
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout_s=15)
        return handles[-1]

    yield _start
    for h in handles:
        h.close()
    leaked = [h.url for h in handles if not h.stop()]
    assert not leaked, f"gateway thread(s) still running {_JOIN_TIMEOUT_S:g}s after shutdown: {leaked}"


@pytest.fixture
def gateway_proc(
    redis_url: str, spawn: Callable[..., Child]
) -> Iterator[Callable[..., tuple[GatewayHandle, Child]]]:
    """Start a gateway as its own process (python -m gateway)."""
    handles: list[GatewayHandle] = []

    def _start(config_path: Path, lease_ttl_s: float = 2.0, **env: str) -> tuple[GatewayHandle, Child]:
        port = free_port()
        argv = python_module(
            "gateway",
            "--config",
            str(config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--lease-ttl-s",
            str(lease_ttl_s),
        )
        child = spawn(
            f"gateway-{port}",
            argv,
            env={
                "REDIS_URL": env.pop("redis_url", redis_url),
                "SERVELAB_ADMIN_TOKEN": ADMIN_TOKEN,
                "SERVELAB_SPOOL_DIR": str(config_path.with_name(f"spool-{port}")),
                **env,
            },
        )
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout_s=20, proc=child.popen)
        handles.append(GatewayHandle(url=f"http://127.0.0.1:{port}", config_path=config_path))
        return handles[-1], child

    yield _start
    for h in handles:
        h.close()


@pytest.fixture
def truth_upstream(spawn: Callable[..., Child]) -> Callable[..., str]:
    """Start tests/gateway/truth_upstream.py (own tokenizer, vLLM-like streams, GET /truth)."""

    def _start(itl_ms: float = 0.0) -> str:
        port = free_port()
        script = str(Path(__file__).with_name("truth_upstream.py"))
        child = spawn(f"truth-{port}", [sys.executable, script, "--port", str(port), "--itl-ms", str(itl_ms)])
        wait_http_ok(f"http://127.0.0.1:{port}/health", timeout_s=20, proc=child.popen)
        return f"http://127.0.0.1:{port}"

    return _start
