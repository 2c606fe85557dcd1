"""Reading what settle.lua metered: per tenant, per day and model, plus the monthly quota.

Writes happen only in settle.lua (one round trip per request); this module turns the tenant's
`usage:{tenant}` hash (fields `YYYY-MM-DD|model|counter`) and `quota:{tenant}` into the report
that `/v1/usage`, the admin API and `servelab usage` show. Cost is stored as integer
micro-dollars so that INCRBY never drifts; it is rendered as dollars only here.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from redis.asyncio import Redis

from gateway.config import EffectivePlan
from gateway.keyschema import tenant_keys

COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "cost_micro_usd")
MONTH_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"  # ?month= of both usage routes


def micro_to_usd(micro: int) -> float:
    return micro / 1_000_000


def summarize(raw: dict[bytes, bytes], month: str | None) -> dict[str, Any]:
    """Fold the hash into rows per day/model and totals; `month` (YYYY-MM) filters days."""
    rows: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    for field, value in raw.items():
        day, model, counter = field.decode().split("|", 2)
        if month and not day.startswith(month):
            continue
        rows[(day, model)][counter] = int(value)
    data = []
    totals = dict.fromkeys(COUNTERS, 0)
    for (day, model), c in sorted(rows.items()):
        data.append(
            {
                "date": day,
                "model": model,
                "requests": c["requests"],
                "prompt_tokens": c["prompt_tokens"],
                "completion_tokens": c["completion_tokens"],
                "cost_usd": micro_to_usd(c["cost_micro_usd"]),
                "cost_micro_usd": c["cost_micro_usd"],
            }
        )
        for k in COUNTERS:
            totals[k] += c[k]
    return {"data": data, "totals": {**totals, "cost_usd": micro_to_usd(totals["cost_micro_usd"])}}


async def tenant_usage(
    redis: Redis, tenant: str, plan: EffectivePlan, month: str | None = None
) -> dict[str, Any]:
    """Usage report of one tenant; `month` None means the current month by Redis time."""
    k = tenant_keys(tenant)
    if month is None:
        seconds, _ = await redis.time()
        month = time.strftime("%Y-%m", time.gmtime(seconds))
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(k.usage)
    pipe.hget(k.quota, month)
    raw, quota_used = await pipe.execute()
    report = summarize(raw, month)
    return {
        "object": "usage",
        "tenant": tenant,
        "month": month,
        "plan": plan.name,
        **report,
        "quota": {
            "tokens_per_month": plan.tokens_per_month,
            # includes tokens reserved by requests still in flight
            "tokens_used": int(quota_used or 0),
        },
    }


async def recent_events(redis: Redis, tenant: str, count: int = 20) -> list[dict[str, str]]:
    """The newest entries of the tenant's usage stream, newest first."""
    out: list[dict[str, str]] = []
    entries: Any = await redis.xrevrange(tenant_keys(tenant).events, count=count)
    for entry_id, fields in entries:
        out.append({"id": entry_id.decode(), **{k.decode(): v.decode() for k, v in fields.items()}})
    return out
