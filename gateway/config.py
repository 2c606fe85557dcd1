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
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator


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


class PlanOverrides(_Strict):
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    tokens_per_month: PositiveInt | None = None
    max_concurrent_requests: PositiveInt | None = None
    fair_share_weight: float | None = Field(default=None, gt=0)
    default_max_tokens: PositiveInt | None = None


class Tenant(_Strict):
    plan: str
    models: list[str] | Literal["*"] = Field(default="*", description="Models this tenant may call.")
    overrides: PlanOverrides = Field(default_factory=PlanOverrides)


class Model(_Strict):
    backends: list[str] = Field(min_length=1, description="Base URLs of OpenAI-compatible servers.")
    upstream_model: str | None = Field(default=None, description="Model id sent upstream (default: same).")
    input_price_per_million_usd: float = Field(default=0.0, ge=0)
    output_price_per_million_usd: float = Field(default=0.0, ge=0)
    max_in_flight_per_backend: PositiveInt | None = Field(
        default=None,
        description="Requests per backend beyond which requests wait in the fair queue (None: no queue).",
    )
    continuous_usage_stats: bool = Field(
        default=False, description="Backend is vLLM-like and supports stream_options.continuous_usage_stats."
    )

    @field_validator("backends")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"backend URL must start with http:// or https://, got {url!r}")
        return [url.rstrip("/") for url in value]


class GatewayConfig(_Strict):
    plans: dict[str, Plan] = Field(min_length=1)
    tenants: dict[str, Tenant] = Field(min_length=1)
    models: dict[str, Model] = Field(min_length=1)

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


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _cross_check(cfg: GatewayConfig) -> list[str]:
    problems: list[str] = []
    for name, tenant in cfg.tenants.items():
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
