"""Grafana: the dashboard JSON parses, is what the generator writes, and is provisioned the same way
by compose and by the Kubernetes component. (Metric names are checked live in test_deploy_live.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deploy_files import DEPLOY, K8S, load_module, load_yaml

COMPOSE_DASHBOARDS = DEPLOY / "grafana" / "dashboards"
K8S_GRAFANA = K8S / "components" / "grafana"


def _generated() -> dict[str, str]:
    return dict(load_module(DEPLOY / "grafana" / "build_dashboards.py", "build_dashboards").dashboards())


@pytest.mark.parametrize("folder", [COMPOSE_DASHBOARDS, K8S_GRAFANA / "dashboards"], ids=["compose", "k8s"])
def test_committed_dashboards_are_the_generators_output(folder: Path) -> None:
    generated = _generated()
    committed = {p.name: p.read_text() for p in folder.glob("*.json")}
    assert committed == generated, "run: .venv/bin/python deploy/grafana/build_dashboards.py"


def test_dashboards_parse_and_cover_both_views() -> None:
    titles: dict[str, list[str]] = {}
    for name, text in _generated().items():
        board = json.loads(text)
        assert board["uid"] and board["panels"]
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
            assert panel["targets"] and all(t["expr"] for t in panel["targets"])
        titles[name] = [p["title"] for p in board["panels"]]
    platform = " ".join(titles["servelab-platform.json"]).lower()
    for needle in (
        "requests/s by tenant",
        "tokens/s by tenant",
        "429s/s by tenant and limit",
        "spend",
        "quota",
    ):
        assert needle in platform
    serving = " ".join(titles["servelab-serving.json"]).lower()
    serving_needles = ("first token", "per output token", "end-to-end", "running / waiting", "kv-cache")
    for needle in (*serving_needles, "tokens/s", "preemptions"):
        assert needle in serving


def test_provisioning_is_the_same_in_compose_and_k8s() -> None:
    pairs = [
        (
            DEPLOY / "grafana/provisioning/datasources/prometheus.yaml",
            K8S_GRAFANA / "provisioning/datasource.yaml",
        ),
        (
            DEPLOY / "grafana/provisioning/dashboards/servelab.yaml",
            K8S_GRAFANA / "provisioning/dashboards.yaml",
        ),
    ]
    for compose_file, k8s_file in pairs:
        assert compose_file.read_text() == k8s_file.read_text()
    datasource = load_yaml(pairs[0][0])["datasources"][0]
    assert datasource["uid"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = load_yaml(pairs[1][0])["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
