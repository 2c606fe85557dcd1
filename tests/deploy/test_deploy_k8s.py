"""k8s/: each overlay renders, every object validates against the Kubernetes schemas, and the
objects agree with each other (selectors, ports, probes, references) and with the presets.

Rendering uses tests/deploy/kustomize_render.py; where kubectl is on PATH its `kubectl kustomize`
output must be identical, object for object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from deploy_files import K8S, K8S_VERSION, OVERLAYS, kubectl, kubectl_kustomize, load_yaml, rendered
from kustomize_render import content_hash, render

Obj = dict[str, Any]
WORKLOADS = {"Deployment", "StatefulSet"}
ALL = [*sorted(OVERLAYS), "base"]


def _key(o: Obj) -> tuple[str, str, str, str]:
    return (o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def _by_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def _one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def _pod_spec(o: Obj) -> Obj:
    return dict(o["spec"]["template"]["spec"])


@pytest.mark.parametrize("overlay", ALL)
def test_overlay_renders_and_validates(overlay: str) -> None:
    objs = rendered(overlay)
    assert objs
    for o in objs:
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{o['kind']}/{o['metadata']['name']}: {exc.message} at {list(exc.path)}")
        assert o["metadata"].get("namespace", "servelab") == "servelab"
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "servelab"


def test_validation_catches_a_bad_object() -> None:
    bad = _one(rendered("kind"), "Deployment", "gateway")
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.skipif(kubectl() is None, reason="kubectl not on PATH: the Python renderer alone is used")
@pytest.mark.parametrize("overlay", ALL)
def test_python_renderer_equals_kubectl_kustomize(overlay: str) -> None:
    path = OVERLAYS.get(overlay, K8S / overlay)
    mine = {_key(o): o for o in render(path)}
    theirs = {_key(o): o for o in kubectl_kustomize(path)}
    assert set(mine) == set(theirs)
    for k in mine:
        assert mine[k] == theirs[k], k


def test_content_hash_matches_kustomize_for_known_values() -> None:
    # Values from `kubectl kustomize` (kustomize v5.5.0) on tiny generators.
    assert content_hash({"kind": "ConfigMap", "data": {"a": "b"}}) == "4h2mbtbbt6"
    assert content_hash({"kind": "ConfigMap", "data": {"x": "<&>é"}}) == "d6c88cf49m"
    assert (
        content_hash({"kind": "Secret", "type": "Opaque", "data": {"admin-token": "YTxiJmM+"}})
        == "9mgtt6kgmk"
    )


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_container_has_pinned_image_probes_and_resources(overlay: str) -> None:
    for o in rendered(overlay):
        if o["kind"] not in WORKLOADS:
            continue
        for c in _pod_spec(o)["containers"]:
            where = f"{o['kind']}/{o['metadata']['name']}/{c['name']}"
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{where}: {image}"
            assert c.get("imagePullPolicy") == "IfNotPresent", where
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{where}: probes missing"
            for kind in ("requests", "limits"):
                res = c.get("resources", {}).get(kind, {})
                assert res.get("cpu") and res.get("memory"), f"{where}: no {kind}"


def _container_ports(pod: Obj) -> dict[str | int, int]:
    """Port names and numbers a pod's containers declare -> the number."""
    out: dict[str | int, int] = {}
    for c in pod["containers"]:
        for p in c.get("ports", []):
            out[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                out[p["name"]] = p["containerPort"]
    return out


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_probes_target_declared_container_ports(overlay: str) -> None:
    for o in rendered(overlay):
        if o["kind"] not in WORKLOADS:
            continue
        pod = _pod_spec(o)
        ports = _container_ports(pod)
        for c in pod["containers"]:
            for probe_kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(probe_kind)
                if not probe:
                    continue
                action = probe.get("httpGet") or probe.get("tcpSocket")
                if action is None:
                    assert "exec" in probe
                    continue
                assert action["port"] in ports, (
                    f"{o['metadata']['name']}/{c['name']} {probe_kind}: {action['port']}"
                )


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_services_select_pods_and_target_their_ports(overlay: str) -> None:
    objs = rendered(overlay)
    for svc in _by_kind(objs, "Service"):
        selector = svc["spec"]["selector"]
        pods = [
            o
            for o in objs
            if o["kind"] in WORKLOADS
            and selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pods, f"Service {svc['metadata']['name']} selects no pods"
        for pod_owner in pods:
            ports = _container_ports(_pod_spec(pod_owner))
            for p in svc["spec"]["ports"]:
                assert p.get("targetPort", p["port"]) in ports, (
                    svc["metadata"]["name"],
                    pod_owner["metadata"]["name"],
                )
    # Workload selectors must match their own template labels, PDBs and HPAs must find their targets.
    for o in objs:
        if o["kind"] in WORKLOADS:
            assert (
                o["spec"]["selector"]["matchLabels"].items()
                <= o["spec"]["template"]["metadata"]["labels"].items()
            )
    for pdb in _by_kind(objs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert any(
            o["kind"] in WORKLOADS and sel.items() <= o["spec"]["template"]["metadata"]["labels"].items()
            for o in objs
        ), pdb["metadata"]["name"]
    for hpa in _by_kind(objs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = _one(objs, ref["kind"], ref["name"])
        cpu_requested = all("cpu" in c["resources"]["requests"] for c in _pod_spec(target)["containers"])
        assert cpu_requested, "an HPA on CPU utilization needs CPU requests"
    for sts in _by_kind(objs, "StatefulSet"):
        _one(objs, "Service", sts["spec"]["serviceName"])


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_referenced_configmaps_secrets_and_claims_exist(overlay: str) -> None:
    objs = rendered(overlay)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for o in objs:
        if o["kind"] not in WORKLOADS:
            continue
        pod = _pod_spec(o)
        claim_templates = {t["metadata"]["name"] for t in o["spec"].get("volumeClaimTemplates", [])}
        refs: list[tuple[str, str, bool]] = []
        for v in pod.get("volumes", []):
            if "configMap" in v:
                refs.append(("ConfigMap", v["configMap"]["name"], v["configMap"].get("optional", False)))
            if "secret" in v:
                refs.append(("Secret", v["secret"]["secretName"], v["secret"].get("optional", False)))
            if "persistentVolumeClaim" in v:
                refs.append(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], False))
        for c in pod["containers"]:
            for e in c.get("env", []):
                vf = e.get("valueFrom", {})
                for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if field in vf:
                        refs.append((kind, vf[field]["name"], vf[field].get("optional", False)))
                        if not vf[field].get("optional", False):
                            target = _one(objs, kind, vf[field]["name"])
                            assert vf[field]["key"] in target["data"], (kind, vf[field])
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in pod.get("volumes", [])} | claim_templates, c["name"]
        for kind, name, optional in refs:
            assert optional or (kind, name) in names, (
                f"{o['metadata']['name']} references missing {kind}/{name}"
            )


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_gateway_config_and_prometheus_targets_resolve(overlay: str) -> None:
    import yaml

    objs = rendered(overlay)
    services = {s["metadata"]["name"]: s for s in _by_kind(objs, "Service")}
    gw = _one(objs, "Deployment", "gateway")
    cm_name = next(v["configMap"]["name"] for v in _pod_spec(gw)["volumes"] if v["name"] == "config")
    cfg = yaml.safe_load(_one(objs, "ConfigMap", cm_name)["data"]["gateway.yaml"])
    for model in cfg["models"].values():
        for url in model["backends"]:
            host, port = url.removeprefix("http://").split(":")
            assert host in services and int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, url
    env = {e["name"]: e for e in _pod_spec(gw)["containers"][0]["env"]}
    assert env["REDIS_URL"]["value"] == "redis://redis:6379/0" and "redis" in services
    prom = next(
        o for o in _by_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("prometheus-config-")
    )
    prom_cfg = yaml.safe_load(prom["data"]["prometheus.yml"])
    for job in prom_cfg["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                svc = services[name]
                assert svc["spec"].get("clusterIP") == "None", f"{name} must be headless to list pods"
                assert sd["port"] in {p["port"] for p in svc["spec"]["ports"]}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_gateway_configs_are_the_demo_config_with_other_backends(overlay: str) -> None:
    import gateway.config
    from gateway.config import parse_config

    demo = gateway.config.load_config(Path(gateway.config.__file__).with_name("demo.yaml"))
    objs = rendered(overlay)
    cm = next(o for o in _by_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("gateway-config-"))
    import yaml

    mine = parse_config(yaml.safe_load(cm["data"]["gateway.yaml"]), f"{overlay}/gateway.yaml")
    assert mine.plans == demo.plans and mine.tenants == demo.tenants
    for name, model in mine.models.items():
        assert model.backends == ["http://backend:8000"]
        # vLLM and the simulator both stream running usage, so only the backend URLs differ.
        assert model.model_copy(update={"backends": demo.models[name].backends}) == demo.models[name]


def test_kind_overlay_runs_simulators_and_maps_nodeports_to_localhost() -> None:
    objs = rendered("kind")
    assert _one(objs, "Deployment", "simulator")["spec"]["replicas"] == 2
    assert not [o for o in objs if o["metadata"]["name"] == "vllm"]
    cluster = load_yaml(OVERLAYS["kind"] / "cluster.yaml")
    mappings = {m["containerPort"]: m for m in cluster["nodes"][0]["extraPortMappings"]}
    node_ports = {
        p["nodePort"]
        for s in _by_kind(objs, "Service")
        if s["spec"].get("type") == "NodePort"
        for p in s["spec"]["ports"]
    }
    assert node_ports == set(mappings) == {30080, 30030, 30090}
    assert all(m["listenAddress"] == "127.0.0.1" for m in mappings.values())
    assert not cluster["nodes"][0]["image"].endswith(":latest")
    gw = _one(objs, "Deployment", "gateway")
    assert _pod_spec(gw)["containers"][0]["image"] == "servelab:0.1.0"


def test_gpu_overlay_runs_the_preset_on_gpus() -> None:
    import yaml

    from server import presets

    objs = rendered("gpu")
    assert not [o for o in objs if o["metadata"]["name"] == "simulator"]
    vllm = _one(objs, "Deployment", "vllm")
    preset = presets.preset(vllm["spec"]["template"]["metadata"]["annotations"]["servelab.dev/preset"])
    fragment = yaml.safe_load(preset.render("k8s"))
    pod = _pod_spec(vllm)
    c = pod["containers"][0]
    assert c["command"] == fragment["command"]
    assert c["args"] == fragment["args"] == preset.vllm_args("0.0.0.0", 8000)
    gpus = str(preset.tp)
    assert (
        c["resources"]["limits"]["nvidia.com/gpu"]
        == fragment["resources"]["limits"]["nvidia.com/gpu"]
        == gpus
    )
    assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800, (
        "model load needs a long startupProbe"
    )
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert (
        anti["labelSelector"]["matchLabels"].items() <= vllm["spec"]["template"]["metadata"]["labels"].items()
    )
    assert _one(objs, "PodDisruptionBudget", "vllm")
    # The backend Service now routes to vLLM, whose served model name is the gateway's model id.
    backend = _one(objs, "Service", "backend")
    assert backend["spec"]["selector"].items() <= vllm["spec"]["template"]["metadata"]["labels"].items()
    cm = next(o for o in _by_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("gateway-config-"))
    assert set(yaml.safe_load(cm["data"]["gateway.yaml"])["models"]) == {preset.served_model_name}


def test_redis_keeps_usage_on_a_volume_with_aof() -> None:
    objs = rendered("kind")
    sts = _one(objs, "StatefulSet", "redis")
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    conf_cm = next(
        o for o in _by_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("redis-config-")
    )
    lines = conf_cm["data"]["redis.conf"].splitlines()
    assert "appendonly yes" in lines and "dir /data" in lines
    mounts = {m["mountPath"]: m["name"] for m in _pod_spec(sts)["containers"][0]["volumeMounts"]}
    assert mounts["/data"] == "data"
