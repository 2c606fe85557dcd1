"""What the deployment claims about running servers, checked against running servers.

One local stack for the module (real redis-server started with deploy/redis/redis.conf, the
simulator and a gateway, as child processes on 127.0.0.1), then:
- every metric name in every dashboard's PromQL is one that the gateway's or the simulator's
  /metrics really exports (each series is made to exist first: ordinary, streaming, rate-limited,
  disconnected and failing requests);
- usage metered by the gateway survives a Redis restart, graceful and kill -9, with the deployed
  Redis config (AOF on), and only the AOF can have restored it (the RDB file is removed first).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_files import DEPLOY, load_module
from openai import APIStatusError, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from servelab.procs import Child, free_port, start, wait_port
from servelab.redisproc import find_redis_server

# PromQL words that are not metric names.
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "rate", "increase", "irate",
    "histogram_quantile", "and", "or", "unless", "on", "ignoring", "group_left", "group_right",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, groupings and ranges removed)."""
    expr = re.sub(r'"[^"]*"', "", expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # groupings
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {n for n in names if n not in _PROMQL_WORDS and not re.fullmatch(r"e\d*", n)}


def test_promql_metric_names() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, model) "
        '(rate(vllm:e2e_request_latency_seconds_bucket{model_name="x"}[$__rate_interval]))) '
        "+ sum without (instance) (servelab_gateway_in_flight_requests) * 3600 / 1e6"
    )
    assert promql_metric_names(expr) == {
        "vllm:e2e_request_latency_seconds_bucket",
        "servelab_gateway_in_flight_requests",
    }


class AofRedis:
    """redis-server with the deployed deploy/redis/redis.conf; only bind, port and dir differ here.

    redis-server acts on `dir` while it reads the file (chdir to /data), before command-line
    arguments could override it, so the test runs a copy with those lines replaced.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        local = {"bind": "bind 127.0.0.1", "port": f"port {self.port}", "dir": f"dir {self.data_dir}",
                 "protected-mode": "protected-mode yes"}  # fmt: skip
        lines = [
            local.get(line.split(" ")[0], line)
            for line in (DEPLOY / "redis" / "redis.conf").read_text().splitlines()
        ]
        conf = self.data_dir.parent / "redis-test.conf"
        conf.write_text("\n".join(lines) + "\n")
        argv = [find_redis_server(), str(conf), "--daemonize", "no"]
        self.child = start("redis-aof", argv, log_path=self.data_dir / "redis.log")
        wait_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import gateway.config
    from servelab.stack import Stack, StackConfig

    state = tmp_path_factory.mktemp("stack")
    redis = AofRedis(state / "redis-data")
    # The demo config plus a model whose backend refuses connections (for the backend-error series).
    config = yaml.safe_load(Path(gateway.config.__file__).with_name("demo.yaml").read_text())
    config["models"]["broken"] = {"backends": [f"http://127.0.0.1:{free_port()}"]}
    config_path = state / "demo-plus-broken.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cfg = StackConfig(state_dir=state, gateway_port=0, backend_port=0, config_path=config_path,
                      redis_url=redis.url, ready_timeout_s=60)  # fmt: skip
    try:
        redis.start()
        with Stack(cfg) as s:
            yield {"info": s.info, "redis": redis, "stack": s}
    finally:
        redis.stop()


def _client(stack: dict[str, Any], tenant: str) -> OpenAI:
    return OpenAI(
        base_url=stack["info"]["gateway_url"] + "/v1", api_key=stack["info"]["keys"][tenant], max_retries=0
    )


def _scrape(url: str) -> set[str]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def _poll(predicate: Any, what: str, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} not true after {timeout_s}s")


def _dashboard_exprs() -> dict[str, list[str]]:
    build = load_module(DEPLOY / "grafana" / "build_dashboards.py", "build_dashboards")
    out: dict[str, list[str]] = {}
    for name, text in build.dashboards().items():
        out[name] = [t["expr"] for p in json.loads(text)["panels"] for t in p.get("targets", [])]
    return out


def test_every_dashboard_metric_is_exported_by_a_live_server(stack: dict[str, Any]) -> None:
    acme, tiny = _client(stack, "acme"), _client(stack, "tiny")
    msgs: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Say something about mixture-of-experts routing."}
    ]
    acme.chat.completions.create(model="mixtral-8x7b", messages=msgs, max_tokens=8)
    for _ in acme.chat.completions.create(model="mixtral-8x7b", messages=msgs, max_tokens=8, stream=True):
        pass
    # A stream the client abandons after the first chunk (the client-disconnect series).
    abandoned = acme.chat.completions.create(model="mixtral-8x7b", messages=msgs, max_tokens=400, stream=True)
    next(iter(abandoned))
    abandoned.close()
    # More tokens than tiny's whole per-minute bucket: a 429 from the token limit.
    with pytest.raises(APIStatusError) as err:
        tiny.chat.completions.create(model="mixtral-8x7b", messages=msgs, max_tokens=5000)
    assert err.value.status_code == 429
    # A backend that refuses connections: the backend-error series.
    with pytest.raises(APIStatusError) as err:
        acme.chat.completions.create(model="broken", messages=msgs, max_tokens=8)
    assert err.value.status_code >= 500

    info = stack["info"]
    exprs = _dashboard_exprs()
    wanted = {n for name_exprs in exprs.values() for e in name_exprs for n in promql_metric_names(e)}

    def exported() -> set[str]:
        names = _scrape(info["gateway_url"])
        for url in info["backend_urls"]:
            names |= _scrape(url)
        return names

    with contextlib.suppress(TimeoutError):  # the assertion below names what is missing
        _poll(lambda: wanted <= exported(), "every dashboard series present")
    missing = {e: sorted(promql_metric_names(e) - exported()) for es in exprs.values() for e in es}
    assert not {e: m for e, m in missing.items() if m}, "dashboard PromQL uses metrics no server exports"
    # Both views really use both sources.
    assert any(n.startswith("servelab_gateway_") for n in wanted) and any(
        n.startswith("vllm:") for n in wanted
    )


def _usage(stack: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        stack["info"]["gateway_url"] + "/v1/usage",
        headers={"authorization": "Bearer " + stack["info"]["keys"]["steady"]},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return dict(json.loads(resp.read())["totals"])


@pytest.mark.parametrize("how", ["graceful", "kill9"])
def test_usage_counters_survive_a_redis_restart(stack: dict[str, Any], how: str) -> None:
    steady = _client(stack, "steady")
    before = _usage(stack)
    reply = steady.chat.completions.create(
        model="mixtral-8x7b", messages=[{"role": "user", "content": "count to three"}], max_tokens=6
    )
    assert reply.usage is not None
    metered = _poll(lambda: (u := _usage(stack))["requests"] == before["requests"] + 1 and u, "usage metered")
    assert metered["prompt_tokens"] == before["prompt_tokens"] + reply.usage.prompt_tokens
    assert metered["completion_tokens"] == before["completion_tokens"] + reply.usage.completion_tokens
    assert metered["cost_micro_usd"] > before["cost_micro_usd"]

    redis: AofRedis = stack["redis"]
    assert redis.child is not None
    if how == "graceful":
        redis.stop()  # SIGTERM: Redis fsyncs the AOF (and, with save points, writes an RDB) and exits
    else:
        redis.child.kill9()  # a crashed container: no shutdown work at all
        redis.stop()  # reaps nothing more; closes the log file that kill9 leaves open
    rdb = redis.data_dir / "dump.rdb"
    rdb.unlink(missing_ok=True)  # so nothing but the append-only file can restore the counters
    assert any(p.name.startswith("appendonly") for p in redis.data_dir.iterdir())
    redis.start()

    after = _poll(lambda: _try_usage(stack), "gateway answers /v1/usage after the restart", timeout_s=15)
    assert after == metered
    # And the gateway meters on top of the restored counters.
    steady.chat.completions.create(
        model="mixtral-8x7b", messages=[{"role": "user", "content": "again"}], max_tokens=4
    )
    _poll(lambda: _usage(stack)["requests"] == metered["requests"] + 1, "usage metered after restart")


def _try_usage(stack: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return _usage(stack)
    except OSError:  # urllib's HTTPError (a 503 while Redis is reconnecting) is an OSError too
        return None


def _swap(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def test_container_commands_start_the_real_servers(spawn: Any, redis_url: str, tmp_path: Path) -> None:
    """The exact commands compose and k8s give the servelab image, run here on 127.0.0.1."""
    from deploy_files import COMPOSE_BASE, COMPOSE_OVERRIDES, compose_config, rendered

    from servelab.procs import python_module, wait_http_ok

    project = compose_config(COMPOSE_BASE, COMPOSE_OVERRIDES["cpu"])
    objs = rendered("kind")
    k8s_args = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]["args"]
        for o in objs
        if o["kind"] == "Deployment" and o["metadata"]["name"] in {"gateway", "simulator"}
    }
    sim_cmd = project["services"]["sim-1"]["command"]
    gw_cmd = project["services"]["gateway"]["command"]
    assert k8s_args == {"simulator": sim_cmd, "gateway": gw_cmd}, "compose and k8s run the same commands"

    sim_port, gw_port = free_port(), free_port()
    sim = spawn(
        "sim",
        python_module("servelab.cli", *_swap(_swap(sim_cmd, "--host", "127.0.0.1"), "--port", str(sim_port))),
    )
    wait_http_ok(f"http://127.0.0.1:{sim_port}/health", timeout_s=30, proc=sim.popen)

    config = yaml.safe_load((DEPLOY / "gateway" / "cpu.yaml").read_text())
    config["models"]["mixtral-8x7b"]["backends"] = [f"http://127.0.0.1:{sim_port}"]
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    argv = _swap(
        _swap(_swap(gw_cmd, "--config", str(tmp_path / "gateway.yaml")), "--host", "127.0.0.1"),
        "--port",
        str(gw_port),
    )
    env = {"REDIS_URL": redis_url, "SERVELAB_ADMIN_TOKEN": "test-admin"}
    gw = spawn("gateway", python_module("servelab.cli", *argv), env=env)
    wait_http_ok(f"http://127.0.0.1:{gw_port}/readyz", timeout_s=30, proc=gw.popen)
    wait_http_ok(f"http://127.0.0.1:{gw_port}/healthz", timeout_s=5, proc=gw.popen)
    # The image's HEALTHCHECK and the compose healthchecks probe these same paths.
    assert "/readyz" in " ".join(project["services"]["gateway"]["healthcheck"]["test"])
    assert "/health" in " ".join(project["services"]["sim-1"]["healthcheck"]["test"])
