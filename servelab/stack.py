"""The local stack: Redis + simulated backends + gateway replicas on 127.0.0.1, as child processes.

`servelab up`, `make demo`, the scenarios and tests that need the whole platform use it. It owns
start-up order (Redis, backends, gateways), readiness (each part is polled against a deadline),
the demo tenants' API keys (created through the gateway's admin API, the way an operator would),
and shutdown (reverse order, by the PIDs it started, process groups included).

What it started is written to `<state_dir>/stack.json` so other tools (`servelab top`,
`servelab scenario`, load tests, curl) find the URLs, keys and processes. A scenario that needs
to kill or restart a part (a backend replica, Redis) asks the supervisor that owns the processes
through `<state_dir>/control/` (see `StackControl`), so the supervisor still stops everything it
started at the end, restarted parts included.

Spare backends are replicas listed in the gateway's config whose processes are not started: the
gateway routes around a backend that refuses connections, so starting one later is how the
scale-out and cold-start scenarios add capacity without a gateway restart (as a Kubernetes
Service gains an endpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from servelab.procs import Child, free_port, python_module, start, wait_http_ok, wait_port
from servelab.redisproc import find_redis_server


@dataclass(frozen=True)
class StackConfig:
    """What to bring up. Ports of 0 mean "pick a free one"."""

    state_dir: Path = Path("runs/stack")
    gateway_port: int = 8080
    backend_port: int = 8100
    backends: int = 1
    spare_backends: int = 0
    gateways: int = 1
    model: str = "mixtral-8x7b"
    gpu: str = "h100"
    tp: int = 2
    dtype: str = "bf16"
    sim_args: tuple[str, ...] = ()
    max_num_seqs: int | None = None
    second_model: str | None = None
    second_model_tp: int = 1
    config_path: Path | None = None
    redis_url: str | None = None
    admin_token: str | None = None
    gateway_args: tuple[str, ...] = ()
    ready_timeout_s: float = 60.0


@dataclass
class ChildInfo:
    """How to find, and restart, one process of the stack."""

    name: str
    argv: list[str]
    log: str
    url: str
    health: str
    pid: int | None = None
    started: bool = True


@dataclass
class StackInfo:
    """The machine-readable description written to stack.json."""

    gateway_url: str
    gateway_urls: list[str]
    backend_urls: list[str]
    redis_url: str
    model: str
    admin_token: str
    config_path: str
    models: dict[str, list[str]] = field(default_factory=dict)
    spare_backend_urls: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    children: dict[str, dict[str, Any]] = field(default_factory=dict)


def demo_config_path() -> Path:
    return Path(str(resources.files("gateway").joinpath("demo.yaml")))


def rewrite_backends(config: dict[str, Any], model: str, urls: list[str]) -> dict[str, Any]:
    """Point `model`'s backends at the simulators we started; other models are left as written."""
    models = config.get("models") or {}
    if model not in models:
        raise ValueError(f"model {model!r} is not in the gateway config (models: {sorted(models)})")
    models[model]["backends"] = list(urls)
    return config


def add_model(config: dict[str, Any], model: str, urls: list[str], like: str) -> dict[str, Any]:
    """Add `model` to the config with `urls`, priced like `like` unless the config already has it.

    The fairness block is not copied: it describes `like`'s engines (their batch slots, their
    priority scheduling), not the new model's."""
    models = config.setdefault("models", {})
    copied = {k: v for k, v in models[like].items() if k not in ("backends", "fairness")}
    entry = dict(models.get(model) or copied)
    entry["backends"] = list(urls)
    models[model] = entry
    return config


def _sim_argv(model: str, gpu: str, tp: int, dtype: str, port: int, extra: tuple[str, ...]) -> list[str]:
    return python_module(
        "servelab.cli", "serve", "--engine", "sim", "--model", model, "--gpu", gpu, "--tp", str(tp),
        "--dtype", dtype, "--host", "127.0.0.1", "--port", str(port), *extra,
    )  # fmt: skip


class Stack:
    """Context manager around the child processes of one local stack."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.children: list[Child] = []
        self.specs: dict[str, ChildInfo] = {}
        self.expected_down: set[str] = set()
        self.info: dict[str, Any] = {}
        self._env: dict[str, dict[str, str]] = {}

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def state(self) -> Path:
        return self.config.state_dir.resolve()

    # -- start-up -------------------------------------------------------------------------------

    def _launch(self, spec: ChildInfo, extra_args: tuple[str, ...] = ()) -> Child:
        child = start(spec.name, [*spec.argv, *extra_args], env=self._env.get(spec.name),
                      log_path=Path(spec.log))  # fmt: skip
        self.children.append(child)
        spec.pid = child.pid
        spec.started = True
        return child

    def _wait(self, spec: ChildInfo, child: Child) -> None:
        if spec.health.startswith("tcp:"):
            host, port = spec.health[4:].rsplit(":", 1)
            wait_port(host, int(port), self.config.ready_timeout_s)
        else:
            wait_http_ok(spec.health, self.config.ready_timeout_s, child.popen)

    def start(self, progress: Any = None) -> dict[str, Any]:
        cfg = self.config
        state = self.state
        state.mkdir(parents=True, exist_ok=True)
        (state / "control").mkdir(exist_ok=True)
        say = progress or (lambda msg: None)

        redis_url = cfg.redis_url or os.environ.get("REDIS_URL")
        if not redis_url:
            # AOF on, so a scenario that restarts Redis finds its tenants, keys and usage again.
            port = free_port()
            data = state / "redis"
            data.mkdir(exist_ok=True)
            spec = ChildInfo(
                name="redis",
                argv=[find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
                      "--save", "", "--appendonly", "yes", "--protected-mode", "yes", "--daemonize", "no"],
                log=str(data / "redis.log"), url=f"redis://127.0.0.1:{port}/0",
                health=f"tcp:127.0.0.1:{port}",
            )  # fmt: skip
            self.specs["redis"] = spec
            say("starting redis-server")
            self._wait(spec, self._launch(spec))
            redis_url = spec.url

        def backend_port(i: int) -> int:
            return (cfg.backend_port + i) if cfg.backend_port else free_port()

        models: dict[str, list[str]] = {cfg.model: []}
        sim_args = cfg.sim_args
        if cfg.max_num_seqs:
            # The engines order their waiting queue by the priority the fair queue sends (tier, and
            # one better for a tenant sent ahead of a backlog), as vLLM does with this policy.
            sim_args = ("--max-num-seqs", str(cfg.max_num_seqs), "--scheduling-policy", "priority", *sim_args)
        waiting: list[tuple[ChildInfo, Child]] = []
        spare_urls = []
        for i in range(cfg.backends + cfg.spare_backends):
            port = backend_port(i)
            url = f"http://127.0.0.1:{port}"
            spec = ChildInfo(
                name=f"sim-{i}", argv=_sim_argv(cfg.model, cfg.gpu, cfg.tp, cfg.dtype, port, sim_args),
                log=str(state / f"sim-{i}.log"), url=url, health=f"{url}/health", started=False,
            )  # fmt: skip
            self.specs[spec.name] = spec
            models[cfg.model].append(url)
            if i >= cfg.backends:
                spare_urls.append(url)
                self.expected_down.add(spec.name)
                continue
            say(f"starting simulator {i} ({cfg.model} on {cfg.tp}x{cfg.gpu} {cfg.dtype}) on port {port}")
            waiting.append((spec, self._launch(spec)))
        if cfg.second_model:
            port = backend_port(cfg.backends + cfg.spare_backends)
            url = f"http://127.0.0.1:{port}"
            spec = ChildInfo(
                name="sim-m2",
                argv=_sim_argv(cfg.second_model, cfg.gpu, cfg.second_model_tp, cfg.dtype, port, ()),
                log=str(state / "sim-m2.log"), url=url, health=f"{url}/health",
            )  # fmt: skip
            self.specs[spec.name] = spec
            models[cfg.second_model] = [url]
            say(f"starting simulator for {cfg.second_model} on port {port}")
            waiting.append((spec, self._launch(spec)))
        for spec, child in waiting:
            self._wait(spec, child)

        source = cfg.config_path or demo_config_path()
        config = yaml.safe_load(source.read_text())
        config = rewrite_backends(config, cfg.model, models[cfg.model])
        if cfg.max_num_seqs:
            # The gateway's fair queue engages when these engines are saturated (gateway/saturation.py).
            entry = config["models"][cfg.model]
            entry.setdefault(
                "fairness",
                {"max_num_seqs": cfg.max_num_seqs, "gateway_replicas": cfg.gateways, "engine_priority": True},
            )
        if cfg.second_model:
            config = add_model(config, cfg.second_model, models[cfg.second_model], like=cfg.model)
        gw_config = state / "gateway.yaml"
        gw_config.write_text(yaml.safe_dump(config, sort_keys=False))

        admin_token = cfg.admin_token or os.environ.get("SERVELAB_ADMIN_TOKEN") or secrets.token_urlsafe(24)
        gateway_urls = []
        gateways: list[tuple[ChildInfo, Child]] = []
        for g in range(cfg.gateways):
            gw_port = (cfg.gateway_port + g) if cfg.gateway_port else free_port()
            url = f"http://127.0.0.1:{gw_port}"
            name = "gateway" if g == 0 else f"gateway-{g}"
            spec = ChildInfo(
                name=name,
                argv=python_module("servelab.cli", "gateway", "--config", str(gw_config), "--host",
                                   "127.0.0.1", "--port", str(gw_port), *cfg.gateway_args),
                log=str(state / f"{name}.log"), url=url, health=f"{url}/readyz",
            )  # fmt: skip
            self.specs[name] = spec
            self._env[name] = {"REDIS_URL": redis_url, "SERVELAB_ADMIN_TOKEN": admin_token}
            say(f"starting {name} on port {gw_port}")
            gateways.append((spec, self._launch(spec)))
            gateway_urls.append(url)
        for spec, child in gateways:
            self._wait(spec, child)

        keys = {
            tenant: self._create_key(gateway_urls[0], admin_token, tenant)
            for tenant in (config.get("tenants") or {})
        }
        info = StackInfo(
            gateway_url=gateway_urls[0],
            gateway_urls=gateway_urls,
            backend_urls=[u for u in models[cfg.model] if u not in spare_urls],
            spare_backend_urls=spare_urls,
            redis_url=redis_url,
            model=cfg.model,
            models=models,
            admin_token=admin_token,
            config_path=str(gw_config),
            keys=keys,
        )
        self.info = asdict(info)
        self._write_info()
        return self.info

    def _write_info(self) -> None:
        self.info["pids"] = {c.name: c.pid for c in self.children if c.alive()}
        self.info["children"] = {n: asdict(s) for n, s in self.specs.items()}
        tmp = self.state / "stack.json.tmp"
        tmp.write_text(json.dumps(self.info, indent=2))
        tmp.replace(self.state / "stack.json")

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

    # -- run-time control (scenarios) -------------------------------------------------------------

    def _child(self, name: str) -> Child | None:
        for child in reversed(self.children):
            if child.name == name and child.alive():
                return child
        return None

    def kill(self, name: str, hard: bool = True) -> None:
        """Kill one part (SIGKILL by default: a crash, not a drain); it is expected down from now."""
        if name not in self.specs:
            raise KeyError(f"no process named {name!r} in this stack (known: {', '.join(self.specs)})")
        self.expected_down.add(name)
        child = self._child(name)
        if child is not None:
            if hard:
                child.kill9()
            else:
                child.stop()
        self.specs[name].pid = None
        self._write_info()

    def restart(self, name: str, extra_args: tuple[str, ...] = ()) -> None:
        """Start a part that is down (killed, or a spare) with its recorded argv; wait until ready."""
        if name not in self.specs:
            raise KeyError(f"no process named {name!r} in this stack (known: {', '.join(self.specs)})")
        if self._child(name) is not None:
            raise RuntimeError(f"{name} is already running")
        spec = self.specs[name]
        self._wait(spec, self._launch(spec, extra_args))
        self.expected_down.discard(name)
        self._write_info()

    def handle_control(self) -> None:
        """Serve requests a scenario dropped in <state>/control/ (one JSON file each, answered once)."""
        control = self.state / "control"
        for req_path in sorted(control.glob("*.req.json")):
            answer: dict[str, Any] = {"ok": True}
            try:
                req = json.loads(req_path.read_text())
                action, name = req["action"], req["name"]
                if action == "kill":
                    self.kill(name, hard=True)
                elif action == "stop":
                    self.kill(name, hard=False)
                elif action == "start":
                    self.restart(name, tuple(req.get("extra_args") or ()))
                else:
                    raise ValueError(f"unknown action {action!r} (kill, stop, start)")
            except Exception as exc:  # answered to the scenario, which reports it
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            done = req_path.with_name(req_path.name.replace(".req.json", ".done.json"))
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(answer))
            tmp.replace(done)
            req_path.unlink(missing_ok=True)

    # -- running and shutdown ---------------------------------------------------------------------

    def dead_children(self) -> list[Child]:
        """Children that died without a scenario asking for it."""
        running = {c.name for c in self.children if c.alive()}
        return [
            c for c in self.children
            if not c.alive() and c.name not in self.expected_down and c.name not in running
        ]  # fmt: skip

    def stop(self) -> None:
        """Stop in reverse start order: gateways first (they drain), Redis last (settles land)."""
        while self.children:
            child = self.children.pop()
            child.stop()


class StackControl:
    """A scenario's handle on a stack that another process (`servelab up`) supervises."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        path = state_dir / "stack.json"
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: start a stack first (`servelab up --state-dir {state_dir}`)"
            )
        self.info: dict[str, Any] = json.loads(path.read_text())

    def reload(self) -> dict[str, Any]:
        self.info = json.loads((self.state_dir / "stack.json").read_text())
        return self.info

    def request(
        self, action: str, name: str, extra_args: tuple[str, ...] = (), timeout_s: float = 90.0
    ) -> None:
        """Ask the supervisor to kill/stop/start a part; wait for its answer (raise if it failed)."""
        control = self.state_dir / "control"
        rid = f"{time.time_ns()}-{secrets.token_hex(3)}"
        tmp = control / f"{rid}.tmp"
        tmp.write_text(json.dumps({"action": action, "name": name, "extra_args": list(extra_args)}))
        tmp.replace(control / f"{rid}.req.json")
        done = control / f"{rid}.done.json"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done.exists():
                answer = json.loads(done.read_text())
                with contextlib.suppress(FileNotFoundError):
                    done.unlink()
                if not answer.get("ok"):
                    raise RuntimeError(f"{action} {name}: {answer.get('error')}")
                self.reload()
                return
            time.sleep(0.05)
        raise TimeoutError(
            f"no answer to '{action} {name}' after {timeout_s:.0f}s: is `servelab up` running for "
            f"{self.state_dir}?"
        )
