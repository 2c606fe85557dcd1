"""What is kept of a request's text: nothing by default; a tenant's opt-in keeps it for a while.

By default the gateway writes no prompt and no output anywhere: usage events carry counts,
ids, model, version and region only (settle.lua), logs carry no body, and nothing here runs.
A tenant whose YAML entry says `prompt_logging: {enabled: true, retention_days: N}` (say, for
its own audit or evaluation, under its own legal basis) gets each request's body and the
answer appended to its stream `prompts:{tenant}`. Retention is enforced on write and at rest:
every append trims entries older than N days (XADD MINID), and the key expires N days after
the last append, so a tenant that stops sending leaves nothing behind. An operator reads or
erases a tenant's kept text through the admin API (`/admin/v1/tenants/{t}/prompts`).

Streamed answers are relayed chunk by chunk as always; for an opted-in tenant only, the
content chunks are also kept and assembled into the output text once the stream has ended.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

from gateway.config import PromptLogging

STREAM_NOT_CAPTURED = "(streamed answer: output not captured)"


def stream_text(payloads: Iterable[bytes]) -> bytes:
    """The text of a streamed answer from its SSE chunk payloads (chat deltas or completion text)."""
    parts: list[str] = []
    for payload in payloads:
        try:
            chunk = json.loads(payload)
        except ValueError:
            continue
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            parts.append(delta.get("content") or choice.get("text") or "")
    return "".join(parts).encode()


def prompts_key(tenant: str) -> str:
    return f"prompts:{{{tenant}}}"


async def keep(
    redis: Redis,
    policy: PromptLogging,
    *,
    tenant: str,
    request_id: str,
    model: str,
    version: str,
    request_body: bytes,
    output: bytes | None,
) -> None:
    """Append one request's text under the tenant's retention; does nothing unless opted in."""
    if not policy.enabled:
        return
    retention_ms = int(policy.retention_days * 86_400_000)
    # Gateway clock for the trim point: retention is days, so seconds of skew do not matter.
    min_id = max(0, int(time.time() * 1000) - retention_ms)
    key = prompts_key(tenant)
    pipe = redis.pipeline(transaction=False)
    pipe.xadd(
        key,
        {
            "request_id": request_id,
            "model": model,
            "version": version,
            "request": request_body,
            "output": output if output is not None else STREAM_NOT_CAPTURED,
        },
        minid=min_id,
        approximate=False,
    )
    pipe.pexpire(key, retention_ms)
    await pipe.execute()


async def read(redis: Redis, tenant: str, count: int = 20) -> list[dict[str, Any]]:
    raw: Any = await redis.xrevrange(prompts_key(tenant), count=count)
    return [
        {"id": i.decode(), **{k.decode(): v.decode(errors="replace") for k, v in f.items()}} for i, f in raw
    ]


async def erase(redis: Redis, tenant: str) -> int:
    """Delete everything kept for a tenant (an erasure request); returns entries deleted."""
    key = prompts_key(tenant)
    pipe = redis.pipeline(transaction=True)
    pipe.xlen(key)
    pipe.delete(key)
    n, _ = await pipe.execute()
    return int(n)
