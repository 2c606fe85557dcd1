"""Admin routes of the on-prem controls: model versions, rollouts, the audit log and kept
prompt text (same admin token as admin.py).

    GET    /admin/v1/models/{model}/versions      versions, live weights, the rollout if any
    PUT    /admin/v1/models/{model}/weights       set weights by hand, on every replica (audited)
    DELETE /admin/v1/models/{model}/weights       back to the YAML weights (audited)
    POST   /admin/v1/rollouts                     start an SLO-gated rollout of a canary version
    GET    /admin/v1/rollouts/{model}             its state, step and last decision
    POST   /admin/v1/rollouts/{model}/promote     canary to 100% now (audited)
    POST   /admin/v1/rollouts/{model}/abort       back to 100% baseline now (audited)
    GET    /admin/v1/audit?model=&count=          the audit stream, newest first
    GET    /admin/v1/tenants/{tenant}/prompts     text kept for an opted-in tenant, and its policy
    DELETE /admin/v1/tenants/{tenant}/prompts     erase it all now (audited)

`servelab rollout start|status|promote|abort|audit` is a thin client of these routes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from gateway import audit, retention, rollout
from gateway.admin import admin_runtime
from gateway.errors import InvalidRequest, NotFound
from gateway.runtime import Runtime
from gateway.versions import UnknownVersion


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WeightsBody(_Body):
    weights: dict[str, float] = Field(description="Version -> weight; versions left out get 0.")
    reason: str = Field(default="", max_length=500)


class ThresholdsBody(_Body):
    max_error_rate_increase: float = Field(default=0.02, ge=0, le=1)
    max_latency_ratio: float = Field(default=1.5, ge=1)
    min_latency_increase_s: float = Field(default=0.05, ge=0)
    min_requests: int = Field(default=20, ge=1)


class StartBody(_Body):
    model: str
    canary: str = Field(description="The version being rolled out.")
    baseline: str | None = Field(default=None, description="Compared against (default: the heaviest other).")
    steps: list[float] = Field(default=[5, 25, 50], description="Canary percent at each step.")
    window_s: float = Field(default=300, gt=0, le=86_400, description="Observation time per step.")
    thresholds: ThresholdsBody = Field(default_factory=ThresholdsBody)


class FinishBody(_Body):
    reason: str = Field(default="", max_length=500)


def _model(rt: Runtime, model: str) -> str:
    if model not in rt.config.models:
        raise NotFound(f"No model {model!r} in the config.", param="model")
    return model


async def _versions_view(rt: Runtime, model: str) -> dict[str, Any]:
    table = rt.config.models[model].version_table()
    r = await rollout.load(rt.redis, model)
    return {
        "model": model,
        "versions": [
            {
                "version": v,
                "weight": w,
                "yaml_weight": table[v].weight,
                "backends": [{"url": u, "region": rt.config.region_of(u)} for u in table[v].backends],
                "upstream_model": table[v].upstream_model,
            }
            for v, w in rt.versions.weights[model]
        ],
        "weights_overridden": model in rt.versions.overridden,
        "rollout": _rollout_view(r),
    }


def _rollout_view(r: rollout.Rollout | None) -> dict[str, Any] | None:
    if r is None:
        return None
    d = dataclasses.asdict(r)
    d["steps"] = list(r.steps)
    d["canary_percent"] = r.canary_percent
    d["weights"] = r.weights()
    return d


def build_router() -> APIRouter:
    router = APIRouter(prefix="/admin/v1")

    @router.get("/models/{model}/versions")
    async def get_versions(model: str, rt: Runtime = Depends(admin_runtime)) -> dict[str, Any]:
        return await _versions_view(rt, _model(rt, model))

    @router.put("/models/{model}/weights")
    async def set_weights(
        model: str, body: WeightsBody, rt: Runtime = Depends(admin_runtime)
    ) -> dict[str, Any]:
        """Set the weights by hand (refused while a rollout runs: it owns them then)."""
        _model(rt, model)
        running = await rollout.load(rt.redis, model)
        if running is not None and running.status == "running":
            raise InvalidRequest(
                f"A rollout is running on {model!r}; promote or abort it instead.", code="rollout_running"
            )
        try:
            table = await rt.versions.set_weights(model, body.weights)
        except (UnknownVersion, ValueError) as exc:
            raise InvalidRequest(str(exc), param="weights") from None
        await audit.record(
            rt.redis,
            model=model,
            action="set-weights",
            actor="admin",
            reason=body.reason,
            weights=dict(table),
        )
        return await _versions_view(rt, model)

    @router.delete("/models/{model}/weights")
    async def reset_weights(model: str, rt: Runtime = Depends(admin_runtime)) -> dict[str, Any]:
        _model(rt, model)
        table = await rt.versions.clear(model)
        await audit.record(rt.redis, model=model, action="reset-weights", actor="admin", weights=dict(table))
        return await _versions_view(rt, model)

    @router.post("/rollouts", status_code=201)
    async def start(body: StartBody, rt: Runtime = Depends(admin_runtime)) -> dict[str, Any]:
        _model(rt, body.model)
        try:
            r = await rollout.start(
                rt.redis,
                rt.versions,
                model=body.model,
                canary=body.canary,
                baseline=body.baseline,
                steps=tuple(body.steps),
                window_s=body.window_s,
                thresholds=rollout.Thresholds(**body.thresholds.model_dump()),
            )
        except rollout.RolloutConflict as exc:
            raise InvalidRequest(str(exc), code="rollout_conflict") from None
        return _rollout_view(r) or {}

    @router.get("/rollouts/{model}")
    async def status(model: str, rt: Runtime = Depends(admin_runtime)) -> dict[str, Any]:
        _model(rt, model)
        r = await rollout.load(rt.redis, model)
        if r is None:
            raise NotFound(f"No rollout has been started on {model!r}.", param="model")
        return {
            **(_rollout_view(r) or {}),
            "audit": [e.as_dict() for e in await audit.read(rt.redis, count=20, model=model)],
        }

    async def _finish(
        rt: Runtime, model: str, status: Literal["promoted", "aborted"], reason: str
    ) -> dict[str, Any]:
        _model(rt, model)
        try:
            r = await rollout.finish(rt.redis, rt.versions, model=model, status=status, reason=reason)
        except rollout.RolloutConflict as exc:
            raise InvalidRequest(str(exc), code="rollout_conflict") from None
        return _rollout_view(r) or {}

    @router.post("/rollouts/{model}/promote")
    async def promote(
        model: str, body: FinishBody | None = None, rt: Runtime = Depends(admin_runtime)
    ) -> dict[str, Any]:
        return await _finish(
            rt, model, "promoted", (body or FinishBody()).reason or "promoted by an operator"
        )

    @router.post("/rollouts/{model}/abort")
    async def abort(
        model: str, body: FinishBody | None = None, rt: Runtime = Depends(admin_runtime)
    ) -> dict[str, Any]:
        return await _finish(rt, model, "aborted", (body or FinishBody()).reason or "aborted by an operator")

    @router.get("/audit")
    async def read_audit(
        model: str | None = None, count: int = 100, rt: Runtime = Depends(admin_runtime)
    ) -> dict[str, Any]:
        entries = await audit.read(rt.redis, count=max(1, min(count, 1000)), model=model)
        return {"data": [e.as_dict() for e in entries]}

    def _tenant(rt: Runtime, tenant: str) -> str:
        if tenant not in rt.config.tenants:
            raise NotFound(f"No tenant {tenant!r} in the config.", param="tenant")
        return tenant

    @router.get("/tenants/{tenant}/prompts")
    async def kept_prompts(
        tenant: str, count: int = 20, rt: Runtime = Depends(admin_runtime)
    ) -> dict[str, Any]:
        policy = rt.config.tenants[_tenant(rt, tenant)].prompt_logging
        return {
            "tenant": tenant,
            "policy": policy.model_dump(),
            "data": await retention.read(rt.redis, tenant, max(1, min(count, 1000))),
        }

    @router.delete("/tenants/{tenant}/prompts")
    async def erase_prompts(tenant: str, rt: Runtime = Depends(admin_runtime)) -> dict[str, Any]:
        deleted = await retention.erase(rt.redis, _tenant(rt, tenant))
        await audit.record(
            rt.redis, model="", action="erase-prompts", actor="admin", tenant=tenant, deleted=deleted
        )
        return {"tenant": tenant, "deleted": deleted}

    return router
