"""Tenant plans as the limiter sees them: the YAML config plus changes made at run time.

The YAML file is the baseline and is only read at start-up. An operator changes a tenant's
limits without a restart through the admin API (`PUT /admin/v1/tenants/{tenant}/plan`), which
stores the change in Redis (`cfg:plan-overrides`, one JSON object per tenant) and publishes the
tenant's name on `servelab:config`; every replica then re-reads that tenant's entry, and a
replica that was not listening re-reads all entries when it resubscribes (broadcast.py).
Precedence, lowest first: the plan, the tenant's YAML overrides, the runtime overrides.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from redis.asyncio import Redis

from gateway.config import EffectivePlan, GatewayConfig, PlanOverrides

log = logging.getLogger("gateway.liveplans")

CONFIG_CHANNEL = "servelab:config"
OVERRIDES_KEY = "cfg:plan-overrides"


class LivePlans:
    def __init__(self, config: GatewayConfig, redis: Redis) -> None:
        self._config = config
        self._redis = redis
        self._runtime: dict[str, dict[str, Any]] = {}
        self.plans: dict[str, EffectivePlan] = {t: config.effective_plan(t) for t in config.tenants}

    def get(self, tenant: str) -> EffectivePlan:
        return self.plans[tenant]

    def runtime_overrides(self, tenant: str) -> dict[str, Any]:
        return dict(self._runtime.get(tenant, {}))

    def _apply(self, tenant: str, overrides: dict[str, Any] | None) -> None:
        if tenant not in self._config.tenants:
            return
        base = self._config.effective_plan(tenant)
        if overrides:
            self._runtime[tenant] = overrides
            self.plans[tenant] = dataclasses.replace(base, **overrides)
        else:
            self._runtime.pop(tenant, None)
            self.plans[tenant] = base

    async def set(self, tenant: str, overrides: PlanOverrides) -> EffectivePlan:
        """Store and announce runtime overrides (fields left out are not changed)."""
        merged = {**self._runtime.get(tenant, {}), **overrides.model_dump(exclude_none=True)}
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(OVERRIDES_KEY, tenant, json.dumps(merged))
        pipe.publish(CONFIG_CHANNEL, tenant)
        await pipe.execute()
        self._apply(tenant, merged)
        log.info("Plan of tenant changed at run time: tenant=%s overrides=%s", tenant, merged)
        return self.plans[tenant]

    async def clear(self, tenant: str) -> EffectivePlan:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(OVERRIDES_KEY, tenant)
        pipe.publish(CONFIG_CHANNEL, tenant)
        await pipe.execute()
        self._apply(tenant, None)
        return self.plans[tenant]

    async def on_changed(self, tenant: str) -> None:
        raw = await self._redis.hget(OVERRIDES_KEY, tenant)
        self._apply(tenant, json.loads(raw) if raw else None)

    async def resync(self) -> None:
        raw: dict[bytes, bytes] = await self._redis.hgetall(OVERRIDES_KEY)  # type: ignore[assignment]
        stored = {k.decode(): json.loads(v) for k, v in raw.items()}
        for tenant in self._config.tenants:
            self._apply(tenant, stored.get(tenant))
