"""A small Python renderer for the subset of kustomize that k8s/ uses.

Why it exists: CI has no `kubectl` (and the tests install nothing system-wide), yet the issue asks
that every overlay be rendered and its objects validated. So this module renders exactly the
features k8s/ uses and refuses every other kustomization field loudly (NotImplementedError), so a
new feature in k8s/ cannot be silently ignored. Where `kubectl` is on PATH, a test renders each
overlay with `kubectl kustomize` too and requires the two outputs to be equal, object by object,
which is what keeps this renderer honest.

Supported: `resources` (files and directories), `components` (kind: Component), `namespace`,
`labels` (pairs with includeTemplates; includeSelectors must stay false), `configMapGenerator` and
`secretGenerator` (files, literals, envs; behavior create/replace/merge), `patches` (strategic
merge patches from a file, `$patch: delete` included; no `target`), `images` (newName/newTag).
Generated ConfigMaps and Secrets get kustomize's content-hash suffix, computed the way kustomize
v5 does (sha256 of the Go-JSON encoding of kind, an empty name, data and type), and references to
them from pod templates are rewritten.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

_KNOWN_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "labels",
    "configMapGenerator",
    "secretGenerator",
    "patches",
    "images",
}
# Kinds that are not namespaced, among those k8s/ could plausibly use.
_CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
}
_WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# Strategic-merge keys of the lists k8s/ patches (from the Kubernetes API's patchMergeKey tags).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


@dataclass
class _Res:
    """One object being rendered; generated ConfigMaps/Secrets get their hash suffix at the end."""

    obj: Obj
    generated: bool = False
    base_name: str = ""


@dataclass
class _State:
    resources: list[_Res] = field(default_factory=list)


def render(directory: Path) -> list[Obj]:
    """Render the kustomization in `directory` to a list of Kubernetes objects."""
    state = _State()
    _apply_kustomization(Path(directory), state, expect_component=False)
    _finalize_generated_names(state.resources)
    return [r.obj for r in state.resources]


def _load_kustomization(directory: Path) -> Obj:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = directory / name
        if path.exists():
            data = yaml.safe_load(path.read_text()) or {}
            unknown = set(data) - _KNOWN_FIELDS
            if unknown:
                raise NotImplementedError(f"{path}: fields this renderer does not support: {sorted(unknown)}")
            return data
    raise FileNotFoundError(f"no kustomization file in {directory}")


def _load_docs(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _apply_kustomization(directory: Path, state: _State, *, expect_component: bool) -> None:
    k = _load_kustomization(directory)
    is_component = k.get("kind") == "Component"
    if is_component != expect_component:
        raise ValueError(
            f"{directory}: kind {k.get('kind')!r} used as {'component' if expect_component else 'resource'}"
        )
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            sub = _State()
            _apply_kustomization(path, sub, expect_component=False)
            state.resources.extend(sub.resources)
        else:
            state.resources.extend(_Res(obj=doc) for doc in _load_docs(path))
    for entry in k.get("components", []):
        _apply_kustomization(directory / entry, state, expect_component=True)
    for gen in k.get("configMapGenerator", []):
        _generate(directory, state, gen, kind="ConfigMap")
    for gen in k.get("secretGenerator", []):
        _generate(directory, state, gen, kind="Secret")
    # Same order as kustomize's builtin transformers: patches, namespace, labels, images.
    for patch in k.get("patches", []):
        _apply_patch_entry(directory, state, patch)
    if "namespace" in k:
        for r in state.resources:
            if r.obj["kind"] == "Namespace":
                r.obj["metadata"]["name"] = k["namespace"]
            elif r.obj["kind"] not in _CLUSTER_SCOPED:
                r.obj["metadata"]["namespace"] = k["namespace"]
    for entry in k.get("labels", []):
        _apply_labels(state, entry)
    for entry in k.get("images", []):
        _apply_image(state, entry)


def _generate(directory: Path, state: _State, gen: Obj, *, kind: str) -> None:
    unknown = set(gen) - {"name", "files", "literals", "envs", "behavior", "type"}
    if unknown:
        raise NotImplementedError(f"{directory}: {kind} generator fields not supported: {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in gen.get("files", []):
        key, _, rel = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
        data[key] = (directory / rel).read_text()
    for literal in gen.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for env_file in gen.get("envs", []):
        for line in (directory / env_file).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                data[key.strip()] = value
    name = gen["name"]
    behavior = gen.get("behavior", "create")
    existing = [r for r in state.resources if r.generated and r.obj["kind"] == kind and r.base_name == name]
    if behavior == "create":
        if existing:
            raise ValueError(f"{directory}: {kind} {name} generated twice; use behavior: merge or replace")
        obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
        if kind == "Secret":
            obj["type"] = gen.get("type", "Opaque")
            obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        else:
            obj["data"] = data
        state.resources.append(_Res(obj=obj, generated=True, base_name=name))
        return
    if not existing:
        raise ValueError(f"{directory}: {kind} {name} has behavior {behavior} but no generator to act on")
    target = existing[0].obj
    encoded = (
        data if kind == "ConfigMap" else {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    )
    if behavior == "replace":
        target["data"] = encoded
    elif behavior == "merge":
        target.setdefault("data", {}).update(encoded)
    else:
        raise ValueError(f"{directory}: unknown generator behavior {behavior!r}")


def _apply_patch_entry(directory: Path, state: _State, entry: Obj) -> None:
    if set(entry) - {"path", "patch"}:
        raise NotImplementedError(
            f"{directory}: patch fields not supported: {sorted(set(entry) - {'path', 'patch'})}"
        )
    docs = (
        _load_docs(directory / entry["path"]) if "path" in entry else list(yaml.safe_load_all(entry["patch"]))
    )
    for patch in docs:
        matches = [
            r
            for r in state.resources
            if r.obj["kind"] == patch["kind"]
            and (r.base_name or r.obj["metadata"]["name"]) == patch["metadata"]["name"]
            and _group(r.obj["apiVersion"]) == _group(patch["apiVersion"])
        ]
        if len(matches) != 1:
            raise ValueError(
                f"{directory}: patch for {patch['kind']}/{patch['metadata']['name']} "
                f"matches {len(matches)} objects"
            )
        if patch.get("$patch") == "delete":
            state.resources.remove(matches[0])
            continue
        matches[0].obj = _merge(matches[0].obj, patch, key="")


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def _merge(base: Any, patch: Any, *, key: str) -> Any:
    """Strategic merge of `patch` into `base` for the list kinds in _MERGE_KEYS."""
    if isinstance(patch, dict) and isinstance(base, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if k == "$patch":
                continue
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _merge(out[k], v, key=k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(patch, list) and isinstance(base, list):
        merge_key = _list_merge_key(key, base + patch)
        if merge_key is None:
            return copy.deepcopy(patch)
        out_list = copy.deepcopy(base)
        for item in patch:
            found = next((i for i, b in enumerate(out_list) if b.get(merge_key) == item.get(merge_key)), None)
            if found is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[found] = _merge(out_list[found], item, key="")
        return out_list
    return copy.deepcopy(patch)


def _list_merge_key(key: str, items: list[Any]) -> str | None:
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    if key in _MERGE_KEYS:
        return _MERGE_KEYS[key]
    if key == "ports":  # container ports merge on containerPort, Service ports on port
        return "containerPort" if all("containerPort" in i for i in items) else "port"
    return None


def _pod_templates(obj: Obj) -> list[Obj]:
    if obj["kind"] in _WORKLOADS:
        return [obj["spec"]["template"]]
    if obj["kind"] == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]]
    return []


def _apply_labels(state: _State, entry: Obj) -> None:
    if entry.get("includeSelectors"):
        raise NotImplementedError("labels.includeSelectors: k8s/ keeps selectors explicit")
    pairs: dict[str, str] = entry["pairs"]
    for r in state.resources:
        r.obj["metadata"].setdefault("labels", {}).update(pairs)
        if entry.get("includeTemplates"):
            for template in _pod_templates(r.obj):
                template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
            if r.obj["kind"] == "StatefulSet":  # kustomize labels the PVC templates too
                for claim in r.obj["spec"].get("volumeClaimTemplates", []):
                    claim.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _containers(obj: Obj) -> list[Obj]:
    out: list[Obj] = []
    for template in _pod_templates(obj):
        spec = template["spec"]
        out += spec.get("containers", []) + spec.get("initContainers", [])
    return out


def _apply_image(state: _State, entry: Obj) -> None:
    for r in state.resources:
        for container in _containers(r.obj):
            image = container["image"]
            name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
            if name != entry["name"]:
                continue
            new_name = entry.get("newName", name)
            new_tag = entry.get("newTag", tag)
            container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def _go_json(value: Any) -> str:
    """json.Marshal's output: sorted keys, compact, UTF-8 kept, and <, >, & escaped as Go does."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


# kustomize maps these hex digits to letters so a suffix never looks like a number or a word.
_HASH_ALPHABET = str.maketrans("013ae", "ghkmt")


def content_hash(obj: Obj) -> str:
    """kustomize's name suffix for a generated ConfigMap or Secret."""
    encoded: Obj = {"kind": obj["kind"], "name": "", "data": obj.get("data", {})}
    if obj["kind"] == "Secret":
        encoded["type"] = obj.get("type", "Opaque")
    digest = hashlib.sha256(_go_json(encoded).encode()).hexdigest()[:10]
    return digest.translate(_HASH_ALPHABET)


def _finalize_generated_names(resources: list[_Res]) -> None:
    renames: dict[tuple[str, str], str] = {}
    for r in resources:
        if r.generated:
            new_name = f"{r.base_name}-{content_hash(r.obj)}"
            r.obj["metadata"]["name"] = new_name
            renames[(r.obj["kind"], r.base_name)] = new_name
    for r in resources:
        for template in _pod_templates(r.obj):
            _rename_pod_refs(template["spec"], renames)


def _rename_pod_refs(spec: Obj, renames: dict[tuple[str, str], str]) -> None:
    def fix(ref: Obj | None, kind: str, key: str = "name") -> None:
        if ref and (kind, ref.get(key)) in renames:
            ref[key] = renames[(kind, ref[key])]

    for volume in spec.get("volumes", []):
        fix(volume.get("configMap"), "ConfigMap")
        fix(volume.get("secret"), "Secret", key="secretName")
        for source in (volume.get("projected") or {}).get("sources", []):
            fix(source.get("configMap"), "ConfigMap")
            fix(source.get("secret"), "Secret")
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for env in container.get("env", []):
            value_from = env.get("valueFrom") or {}
            fix(value_from.get("configMapKeyRef"), "ConfigMap")
            fix(value_from.get("secretKeyRef"), "Secret")
        for env_from in container.get("envFrom", []):
            fix(env_from.get("configMapRef"), "ConfigMap")
            fix(env_from.get("secretRef"), "Secret")
