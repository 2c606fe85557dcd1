"""The local stack: Redis + simulated backends + one gateway on 127.0.0.1, as child processes.

`servelab up` and `make demo` use it, and so do tests that need the whole platform. It owns
start-up order (Redis, backends, gateway), readiness (each part is polled against a deadline),
the demo tenants' API keys (created through the gateway's admin API, the way an operator would),
and shutdown (reverse order, by the PIDs it started, process groups included). What it started
is written to `<state_dir>/stack.json` so other tools (load tests, curl) can find the URLs and keys.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from servelab.procs import Child, free_port, python_module, start, wait_http_ok
from servelab.redisproc import RedisServer, start_redis


@dataclass(frozen=True)
class StackConfig:
    """What to bring up. Ports of 0 mean "pick a free one"."""

    state_dir: Path = Path("runs/stack")
    gateway_port: int = 8080
    backend_port: int = 8100
    backends: int = 1
    model: str = "mixtral-8x7b"
    gpu: str = "h100"
    tp: int = 2
    dtype: str = "bf16"
    sim_args: tuple[str, ...] = ()
    config_path: Path | None = None
    redis_url: str | None = None
    admin_token: str | None = None
    ready_timeout_s: float = 60.0


@dataclass
class StackInfo:
    """The machine-readable description written to stack.json."""

    gateway_url: str
    backend_urls: list[str]
    redis_url: str
    model: str
    admin_token: str
    config_path: str
    keys: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)


def demo_config_path() -> Path:
    return Path(str(resources.files("gateway").joinpath("demo.yaml")))


def rewrite_backends(config: dict[str, Any], model: str, urls: list[str]) -> dict[str, Any]:
    """Point `model`'s backends at the simulators we started; other models are left as written."""
    models = config.get("models") or {}
    if model not in models:
        raise ValueError(f"model {model!r} is not in the gateway config (models: {sorted(models)})")
    models[model]["backends"] = list(urls)
    return config


class Stack:
    """Context manager around the child processes of one local stack."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.children: list[Child] = []
        self.redis: RedisServer | None = None
        self.info: dict[str, Any] = {}

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start-up -------------------------------------------------------------------------------

    def start(self, progress: Any = None) -> dict[str, Any]:
        cfg = self.config
        state = cfg.state_dir.resolve()
        state.mkdir(parents=True, exist_ok=True)
        say = progress or (lambda msg: None)

        redis_url = cfg.redis_url or os.environ.get("REDIS_URL")
        if not redis_url:
            say("starting redis-server")
            self.redis = start_redis(state / "redis")
            redis_url = self.redis.url
            self.children.append(self.redis.child)

        backend_urls = []
        for i in range(cfg.backends):
            port = (cfg.backend_port + i) if cfg.backend_port else free_port()
            argv = python_module(
                "servelab.cli",
                "serve",
                "--engine",
                "sim",
                "--model",
                cfg.model,
                "--gpu",
                cfg.gpu,
                "--tp",
                str(cfg.tp),
                "--dtype",
                cfg.dtype,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *cfg.sim_args,
            )
            say(f"starting simulator {i} ({cfg.model} on {cfg.tp}x{cfg.gpu} {cfg.dtype}) on port {port}")
            child = start(f"sim-{i}", argv, log_path=state / f"sim-{i}.log")
            self.children.append(child)
            backend_urls.append(f"http://127.0.0.1:{port}")
        for url, child in zip(backend_urls, self.children[-cfg.backends :], strict=True):
            wait_http_ok(f"{url}/health", cfg.ready_timeout_s, child.popen)

        source = cfg.config_path or demo_config_path()
        config = yaml.safe_load(source.read_text())
        config = rewrite_backends(config, cfg.model, backend_urls)
        gw_config = state / "gateway.yaml"
        gw_config.write_text(yaml.safe_dump(config, sort_keys=False))

        admin_token = cfg.admin_token or os.environ.get("SERVELAB_ADMIN_TOKEN") or secrets.token_urlsafe(24)
        gw_port = cfg.gateway_port or free_port()
        gateway_url = f"http://127.0.0.1:{gw_port}"
        say(f"starting gateway on port {gw_port}")
        gw = start(
            "gateway",
            python_module(
                "servelab.cli",
                "gateway",
                "--config",
                str(gw_config),
                "--host",
                "127.0.0.1",
                "--port",
                str(gw_port),
            ),
            env={"REDIS_URL": redis_url, "SERVELAB_ADMIN_TOKEN": admin_token},
            log_path=state / "gateway.log",
        )
        self.children.append(gw)
        wait_http_ok(f"{gateway_url}/readyz", cfg.ready_timeout_s, gw.popen)

        keys = {
            tenant: self._create_key(gateway_url, admin_token, tenant)
            for tenant in (config.get("tenants") or {})
        }
        info = StackInfo(
            gateway_url=gateway_url,
            backend_urls=backend_urls,
            redis_url=redis_url,
            model=cfg.model,
            admin_token=admin_token,
            config_path=str(gw_config),
            keys=keys,
            pids={c.name: c.pid for c in self.children},
        )
        self.info = asdict(info)
        (state / "stack.json").write_text(json.dumps(self.info, indent=2))
        return self.info

    @staticmethod
    def _create_key(gateway_url: str, admin_token: str, tenant: str) -> str:
        req = urllib.request.Request(
            f"{gateway_url}/admin/v1/tenants/{tenant}/keys",
            data=json.dumps({"name": "stack"}).encode(),
            headers={"authorization": f"Bearer {admin_token}", "content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(json.loads(resp.read())["key"])

    # -- running and shutdown ---------------------------------------------------------------------

    def dead_children(self) -> list[Child]:
        return [c for c in self.children if not c.alive()]

    def stop(self) -> None:
        """Stop in reverse start order: gateway first (it drains), Redis last (settles land)."""
        while self.children:
            child = self.children.pop()
            child.stop()
