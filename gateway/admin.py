"""The admin HTTP API under /admin/v1, guarded by the admin bearer token from the environment.

Tenants and plans come from the YAML config; a tenant's limits can be changed at run time
(liveplans.py); keys and usage live in Redis.
The `servelab tenants|keys|usage` commands are thin clients of these routes.

    GET    /admin/v1/tenants                       tenants with their effective plans
    GET    /admin/v1/tenants/{tenant}              one tenant
    PUT    /admin/v1/tenants/{tenant}/plan         change limits at run time, on every replica
    DELETE /admin/v1/tenants/{tenant}/plan         back to the YAML config
    POST   /admin/v1/tenants/{tenant}/keys         -> 201 {"key": "sk-...", "key_id", "tenant"} (shown once)
    GET    /admin/v1/tenants/{tenant}/keys         key records (never the key itself)
    DELETE /admin/v1/keys/{key_id}                 revoke; every replica stops accepting it within 1 s
    GET    /admin/v1/tenants/{tenant}/usage        usage report (?month=YYYY-MM&events=0..1000)
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from gateway.config import PlanOverrides
from gateway.errors import AdminAuthFailed, AdminDisabled, NotFound, RedisUnavailable
from gateway.metering import MONTH_PATTERN, recent_events, tenant_usage
from gateway.runtime import Runtime, runtime


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=100, description="A label for the key, e.g. 'ci'.")


def admin_runtime(request: Request) -> Runtime:
    rt = runtime(request)
    token = rt.settings.admin_token
    if token is None:
        raise AdminDisabled("The admin API is disabled: SERVELAB_ADMIN_TOKEN is not set.")
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise AdminAuthFailed("Missing or wrong admin token.")
    return rt


def _tenant(rt: Runtime, tenant: str) -> dict[str, Any]:
    if tenant not in rt.config.tenants:
        raise NotFound(f"No tenant {tenant!r} in the config.", param="tenant")
    return {
        "tenant": tenant,
        "plan": dataclasses.asdict(rt.plan(tenant)),
        "runtime_overrides": rt.plans.runtime_overrides(tenant),
        "models": rt.config.allowed_models(tenant),
    }


def build_router() -> APIRouter:
    router = APIRouter(prefix="/admin/v1")

    @router.get("/tenants")
    async def list_tenants(rt: Runtime = Depends(admin_runtime)) -> dict[str, Any]:
        return {"data": [_tenant(rt, t) for t in rt.config.tenants]}

    @router.get("/tenants/{tenant}")
    async def get_tenant(tenant: str, rt: Runtime = Depends(admin_runtime)) -> dict[str, Any]:
        return _tenant(rt, tenant)

    @router.put("/tenants/{tenant}/plan")
    async def change_plan(
        tenant: str, body: PlanOverrides, rt: Runtime = Depends(admin_runtime)
    ) -> dict[str, Any]:
        """Change a tenant's limits at run time on every replica (fields left out stay as they are)."""
        _tenant(rt, tenant)
        await rt.plans.set(tenant, body)
        return _tenant(rt, tenant)

    @router.delete("/tenants/{tenant}/plan")
    async def reset_plan(tenant: str, rt: Runtime = Depends(admin_runtime)) -> dict[str, Any]:
        """Drop the runtime changes: back to the YAML config."""
        _tenant(rt, tenant)
        await rt.plans.clear(tenant)
        return _tenant(rt, tenant)

    @router.post("/tenants/{tenant}/keys", status_code=201)
    async def create_key(
        tenant: str, body: NewKey | None = None, rt: Runtime = Depends(admin_runtime)
    ) -> JSONResponse:
        _tenant(rt, tenant)
        try:
            key, rec = await rt.keys.create(tenant, (body or NewKey()).name)
        except RedisError as exc:
            raise RedisUnavailable(f"Cannot create a key: Redis is unreachable ({exc}).") from None
        return JSONResponse(
            {"key": key, "key_id": rec.key_id, "tenant": tenant, "name": rec.name}, status_code=201
        )

    @router.get("/tenants/{tenant}/keys")
    async def list_keys(tenant: str, rt: Runtime = Depends(admin_runtime)) -> dict[str, Any]:
        _tenant(rt, tenant)
        return {"data": [dataclasses.asdict(r) for r in await rt.keys.list(tenant)]}

    @router.delete("/keys/{key_id}")
    async def revoke_key(key_id: str, rt: Runtime = Depends(admin_runtime)) -> dict[str, Any]:
        rec = await rt.keys.revoke(key_id)
        return {**dataclasses.asdict(rec), "revoked": True}

    @router.get("/tenants/{tenant}/usage")
    async def get_usage(
        tenant: str,
        month: str | None = Query(default=None, pattern=MONTH_PATTERN, description="YYYY-MM; default: now."),
        events: int = Query(default=10, ge=0, le=1000, description="How many recent usage events."),
        rt: Runtime = Depends(admin_runtime),
    ) -> dict[str, Any]:
        _tenant(rt, tenant)
        report = await tenant_usage(rt.redis, tenant, rt.plan(tenant), month)
        # XREVRANGE COUNT 0 is an error in Redis, not an empty answer: ask only for one or more.
        report["recent_events"] = await recent_events(rt.redis, tenant, events) if events else []
        return report

    return router
