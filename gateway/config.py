"""The gateway's domain config: plans, tenants and models, from one YAML file.

The file is validated with `extra="forbid"` so a misspelt field is an error, and every error
names the file, the field (as a dotted path) and the problem, e.g.
`demo.yaml: tenants.acme.plan: unknown plan 'gold' (known: free, pro)`.
Secrets never live here: the admin token and Redis URL come from the environment (settings.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """The YAML config is unreadable or invalid; the message names file, field and problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Plan(_Strict):
    requests_per_minute: PositiveInt = Field(
        description="Request token bucket: capacity and refill per minute."
    )
    tokens_per_minute: PositiveInt = Field(description="Token bucket: capacity and refill per minute.")
    tokens_per_month: PositiveInt = Field(description="Hard monthly quota of prompt+completion tokens.")
    max_concurrent_requests: PositiveInt = Field(description="Requests in flight at once, all replicas.")
    fair_share_weight: float = Field(default=1.0, gt=0, description="Weight in the fair queue.")
    default_max_tokens: PositiveInt = Field(
        default=256, description="max_tokens applied (and reserved) when a request does not set it."
    )
    tier: Literal["interactive", "standard", "batch"] = Field(
        default="standard", description="Strict priority tier in the fair queue; sent to vLLM as `priority`."
    )
    sheddable: bool = Field(default=False, description="Refused at once (429) when saturated.")
    max_queue_s: float | None = Field(
        default=None, gt=0, description="Longest wait in the fair queue (None: queue_timeout_s)."
    )


class PlanOverrides(_Strict):
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    tokens_per_month: PositiveInt | None = None
    max_concurrent_requests: PositiveInt | None = None
    fair_share_weight: float | None = Field(default=None, gt=0)
    default_max_tokens: PositiveInt | None = None
    tier: Literal["interactive", "standard", "batch"] | None = None
    sheddable: bool | None = None
    max_queue_s: float | None = Field(default=None, gt=0)


class PromptLogging(_Strict):
    """Per-tenant opt-in to keep prompts and outputs; off by default (nothing is written)."""

    enabled: bool = Field(default=False, description="Keep prompt and output text (opt-in).")
    retention_days: float = Field(
        default=30, gt=0, le=3650, description="Kept text is deleted after this many days."
    )


class Tenant(_Strict):
    plan: str
    models: list[str] | Literal["*"] = Field(default="*", description="Models this tenant may call.")
    overrides: PlanOverrides = Field(default_factory=PlanOverrides)
    regions: list[str] | Literal["*"] = Field(
        default="*",
        description="Regions (keys of the top-level `regions`) whose backends may serve this tenant.",
    )
    versions: dict[str, str] = Field(
        default_factory=dict, description="Pins: model alias -> version this tenant always gets."
    )
    prompt_logging: PromptLogging = Field(default_factory=PromptLogging)


def _backend_urls(value: list[str]) -> list[str]:
    for url in value:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"backend URL must start with http:// or https://, got {url!r}")
    return [url.rstrip("/") for url in value]


class ModelVersion(_Strict):
    """One version behind a model alias: its own backends, its share of traffic, its upstream id."""

    backends: list[str] = Field(min_length=1, description="Base URLs serving this version.")
    weight: float = Field(
        default=0, ge=0, description="Share of the alias's traffic (relative to the other versions)."
    )
    upstream_model: str | None = Field(default=None, description="Model id sent upstream for this version.")

    @field_validator("backends")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return _backend_urls(value)


class Fairness(_Strict):
    """When a model counts as saturated, from its backends' /metrics (gateway/saturation.py)."""

    max_num_seqs: PositiveInt = Field(description="The engines' max_num_seqs (runs at once).")
    max_waiting: int = Field(default=0, ge=0, description="Waiting in an engine when saturated.")
    max_kv_usage: float = Field(default=0.95, gt=0, le=1, description="KV usage when saturated.")
    gateway_replicas: PositiveInt = Field(default=1, description="Replicas sharing the backends.")
    scrape_interval_s: float = Field(default=0.5, gt=0, description="Scrape period (staleness).")
    burst_tokens: float = Field(
        default=8192, ge=0, description="Weighted tokens a returning tenant may stay below the lowest."
    )
    engine_priority: bool = Field(
        default=False, description="Send the tier as vLLM's `priority` (--scheduling-policy priority)."
    )


class Model(_Strict):
    backends: list[str] = Field(
        min_length=1,
        description="Base URLs of OpenAI-compatible servers (with `versions`: all of theirs, filled in).",
    )
    upstream_model: str | None = Field(default=None, description="Model id sent upstream (default: same).")
    input_price_per_million_usd: float = Field(default=0.0, ge=0)
    output_price_per_million_usd: float = Field(default=0.0, ge=0)
    max_in_flight_per_backend: PositiveInt | None = Field(
        default=None,
        description="Requests per backend beyond which requests wait in the fair queue (None: no queue).",
    )
    fairness: Fairness | None = Field(
        default=None, description="Saturation detection from the backends' metrics (gateway/saturation.py)."
    )
    continuous_usage_stats: bool = Field(
        default=False, description="Backend is vLLM-like and supports stream_options.continuous_usage_stats."
    )

    versions: dict[str, ModelVersion] | None = Field(
        default=None,
        description="Versions behind this alias with weights (e.g. 90/10); None: one version, 'default'.",
    )

    @model_validator(mode="before")
    @classmethod
    def _backends_from_versions(cls, data: Any) -> Any:
        # With versions, `backends` is the union of theirs, so routing, readiness and the fair
        # queue (which read `backends`) see every URL without knowing about versions.
        if isinstance(data, dict) and isinstance(data.get("versions"), dict):
            urls: list[str] = []
            for version in data["versions"].values():
                listed = version.get("backends") if isinstance(version, dict) else None
                for url in listed if isinstance(listed, list) else []:
                    if isinstance(url, str) and url.rstrip("/") not in urls:
                        urls.append(url.rstrip("/"))
            given = data.get("backends")
            if given is not None and sorted(str(u).rstrip("/") for u in given) != sorted(urls):
                raise ValueError("give either backends or versions (a version lists its own backends)")
            data = {**data, "backends": urls}
        return data

    @field_validator("backends")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return _backend_urls(value)

    @field_validator("versions")
    @classmethod
    def _weights(cls, value: dict[str, ModelVersion] | None) -> dict[str, ModelVersion] | None:
        if value is not None:
            if not value:
                raise ValueError("versions must name at least one version")
            if sum(v.weight for v in value.values()) <= 0:
                raise ValueError("at least one version needs a weight above 0")
        return value

    def version_table(self) -> dict[str, ModelVersion]:
        """The versions behind this alias; a model without `versions` has one, named 'default'."""
        if self.versions is not None:
            return dict(self.versions)
        return {
            "default": ModelVersion(
                backends=list(self.backends), weight=100, upstream_model=self.upstream_model
            )
        }


class GatewayConfig(_Strict):
    plans: dict[str, Plan] = Field(min_length=1)
    tenants: dict[str, Tenant] = Field(min_length=1)
    models: dict[str, Model] = Field(min_length=1)
    regions: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Region name -> backend URLs located there. A backend in no region serves only "
        "tenants whose `regions` is '*'.",
    )

    @field_validator("regions")
    @classmethod
    def _region_urls(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {name: [u.rstrip("/") for u in urls] for name, urls in value.items()}

    def region_of(self, url: str) -> str | None:
        for name, urls in self.regions.items():
            if url in urls:
                return name
        return None

    def effective_plan(self, tenant: str) -> EffectivePlan:
        t = self.tenants[tenant]
        base = self.plans[t.plan].model_dump()
        base.update({k: v for k, v in t.overrides.model_dump().items() if v is not None})
        return EffectivePlan(name=t.plan, **base)

    def allowed_models(self, tenant: str) -> list[str]:
        t = self.tenants[tenant]
        return list(self.models) if t.models == "*" else list(t.models)

    def with_backends(self, model: str, backends: list[str]) -> GatewayConfig:
        """A copy whose `model` points at other backend URLs (the local stack uses this)."""
        if self.models[model].versions is not None:
            # Which URL would belong to which version is not knowable here: refuse, don't guess.
            raise ConfigError(f"models.{model}: has versions; rewrite each version's backends instead")
        models = dict(self.models)
        models[model] = models[model].model_copy(update={"backends": [b.rstrip("/") for b in backends]})
        return self.model_copy(update={"models": models})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=False), sort_keys=False)


@dataclass(frozen=True)
class EffectivePlan:
    """A tenant's plan after its overrides: the numbers the limiter enforces."""

    name: str
    requests_per_minute: int
    tokens_per_minute: int
    tokens_per_month: int
    max_concurrent_requests: int
    fair_share_weight: float
    default_max_tokens: int
    tier: Literal["interactive", "standard", "batch"] = "standard"
    sheddable: bool = False
    max_queue_s: float | None = None


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _cross_check(cfg: GatewayConfig) -> list[str]:
    problems: list[str] = []
    placed: dict[str, str] = {}
    backends = {u for m in cfg.models.values() for u in m.backends}
    for region, urls in cfg.regions.items():
        for i, url in enumerate(urls):
            if url not in backends:
                problems.append(f"regions.{region}.{i}: {url!r} is not a backend of any model")
            elif url in placed and placed[url] != region:
                problems.append(f"regions.{region}.{i}: {url!r} is already in region {placed[url]!r}")
            placed[url] = region
    for name, tenant in cfg.tenants.items():
        if tenant.regions != "*":
            for i, region in enumerate(tenant.regions):
                if region not in cfg.regions:
                    known = ", ".join(cfg.regions) or "none configured"
                    problems.append(f"tenants.{name}.regions.{i}: unknown region {region!r} (known: {known})")
        for model, version in tenant.versions.items():
            if model not in cfg.models:
                known = ", ".join(cfg.models)
                problems.append(f"tenants.{name}.versions.{model}: unknown model {model!r} (known: {known})")
            elif version not in cfg.models[model].version_table():
                known = ", ".join(cfg.models[model].version_table())
                problems.append(
                    f"tenants.{name}.versions.{model}: unknown version {version!r} (known: {known})"
                )
        if tenant.plan not in cfg.plans:
            problems.append(
                f"tenants.{name}.plan: unknown plan {tenant.plan!r} (known: {', '.join(cfg.plans)})"
            )
        if tenant.models != "*":
            for i, model in enumerate(tenant.models):
                if model not in cfg.models:
                    problems.append(
                        f"tenants.{name}.models.{i}: unknown model {model!r} (known: {', '.join(cfg.models)})"
                    )
    return problems


def parse_config(data: Any, source: str) -> GatewayConfig:
    """Validate already-parsed YAML; `source` names the file in error messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping with plans, tenants, models")
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"{source}: {_loc(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        ]
        raise ConfigError("\n".join(lines)) from None
    problems = _cross_check(cfg)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return cfg


def load_config(path: Path | str) -> GatewayConfig:
    """Read and validate the YAML file at `path`; raise ConfigError naming file, field and problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(unknown position)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {where}: invalid YAML: {problem}") from None
    return parse_config(data, str(path))
