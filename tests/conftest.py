"""Fixtures shared by every test package: a real redis-server and real upstream servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from servelab.procs import Child, free_port, python_module, start, wait_http_ok
from servelab.redisproc import RedisServer, start_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests isolate themselves with FLUSHALL or own prefixes."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database for each test that asks for it."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start child processes that are stopped (by PID, group included) when the test ends."""
    children: list[Child] = []

    def _spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = start(name, argv, env=env, log_path=tmp_path / f"{name}.log")
        children.append(child)
        return child

    yield _spawn
    for child in reversed(children):
        child.stop()


@pytest.fixture
def fast_upstream(spawn: Callable[..., Child]) -> Callable[..., str]:
    """Start loadtest.bench.upstream on a free port; returns its base URL (…/v1 not included)."""

    def _start(tokens: int = 16, ttft_ms: float = 0.0, itl_ms: float = 0.0, model: str = "fast") -> str:
        port = free_port()
        argv = python_module(
            "loadtest.bench.upstream",
            "--port",
            str(port),
            "--tokens",
            str(tokens),
            "--ttft-ms",
            str(ttft_ms),
            "--itl-ms",
            str(itl_ms),
            "--model",
            model,
        )
        child = spawn(f"upstream-{port}", argv)
        wait_http_ok(f"http://127.0.0.1:{port}/health", timeout_s=20, proc=child.popen)
        return f"http://127.0.0.1:{port}"

    return _start


@pytest.fixture
def sim_server(spawn: Callable[..., Child]) -> Callable[..., str]:
    """Start `servelab serve --engine sim` (Mixtral-8x7B, 2x H100, bf16) on a free port; return its URL."""

    def _start(*extra_args: str, model: str = "mixtral-8x7b", gpu: str = "h100", tp: int = 2) -> str:
        port = free_port()
        argv = python_module(
            "servelab.cli", "serve", "--engine", "sim", "--model", model, "--gpu", gpu, "--tp", str(tp),
            "--dtype", "bf16", "--host", "127.0.0.1", "--port", str(port), *extra_args,
        )  # fmt: skip
        child = spawn(f"sim-{port}", argv)
        wait_http_ok(f"http://127.0.0.1:{port}/health", timeout_s=60, proc=child.popen)
        return f"http://127.0.0.1:{port}"

    return _start
