"""The audit log: every change to what serves a model, and why, in one Redis stream.

Rollout steps, promotions, aborts (by a person or by the SLO gate, with the numbers that decided
it) and manual weight changes are appended to the stream `audit:versions`. The stream id is
Redis time, so entries from several replicas sort correctly without trusting their clocks. It
is read through `GET /admin/v1/audit` and `servelab rollout audit`. Entries hold names, weights
and metrics, never request content and never secrets (the admin token is not recorded; the
actor is a role: 'admin' or 'slo-gate').
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

AUDIT_STREAM = "audit:versions"
AUDIT_MAXLEN = 100_000


@dataclass(frozen=True)
class AuditEntry:
    id: str
    model: str
    action: str
    actor: str
    reason: str
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        millis = int(self.id.split("-", 1)[0])
        return {
            "id": self.id,
            "time_ms": millis,
            "model": self.model,
            "action": self.action,
            "actor": self.actor,
            "reason": self.reason,
            "detail": self.detail,
        }


async def record(
    redis: Redis, *, model: str, action: str, actor: str, reason: str = "", **detail: Any
) -> str:
    """Append one entry; returns its stream id."""
    entry_id = await redis.xadd(
        AUDIT_STREAM,
        {
            "model": model,
            "action": action,
            "actor": actor,
            "reason": reason,
            "detail": json.dumps(detail, sort_keys=True, default=str),
        },
        maxlen=AUDIT_MAXLEN,
        approximate=True,
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def read(redis: Redis, *, count: int = 100, model: str | None = None) -> list[AuditEntry]:
    """The newest entries first, optionally for one model (scans at most 10x `count` entries)."""
    raw: Any = await redis.xrevrange(AUDIT_STREAM, count=count * 10 if model else count)
    out: list[AuditEntry] = []
    for entry_id, fields in raw:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if model and f.get("model") != model:
            continue
        out.append(
            AuditEntry(
                id=entry_id.decode(),
                model=f.get("model", ""),
                action=f.get("action", ""),
                actor=f.get("actor", ""),
                reason=f.get("reason", ""),
                detail=json.loads(f.get("detail") or "{}"),
            )
        )
        if len(out) >= count:
            break
    return out
