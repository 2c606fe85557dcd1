"""Admission and settle: the two Redis round trips every proxied request makes.

Both are Lua scripts in `gateway/lua/` (read from the package, registered once, run with
EVALSHA; redis-py reloads them by itself after a Redis restart wipes its script cache). All of a
tenant's keys share the `{tenant}` hash tag so both scripts run on one Redis Cluster slot.

The limiter returns values (`Decision`, `Settled`) and never imports HTTP: turning a decision
into a status code and headers happens in `errors.rejection` and `errors.rate_limit_headers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.config import EffectivePlan
from gateway.scriptconn import Script, ScriptConnection

LimitName = Literal["", "concurrency", "requests", "tokens", "quota"]


def _lua(name: str) -> str:
    return (Path(__file__).with_name("lua") / name).read_text()


@dataclass(frozen=True)
class Decision:
    """What admit.lua decided for one request."""

    allowed: bool
    limit: LimitName
    requests_limit: int
    requests_remaining: int
    requests_reset_s: float
    tokens_limit: int
    tokens_remaining: int
    tokens_reset_s: float
    retry_after_s: float  # -1: waiting will not help (request larger than the bucket, quota used up)
    limit_value: int
    used: float
    requested: float
    month: str
    quota_remaining: int  # tokens_per_month - (used + reserved) in `month`, after this decision


@dataclass(frozen=True)
class Usage:
    """What one request really consumed, as the backend reported it (or as counted on disconnect)."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Settled:
    counted: Literal[1, 0, -1]  # 1 metered, 0 not served, -1 request id already metered
    tokens_level: float
    quota_remaining: int  # tokens_per_month - (used + reserved) in the reservation's month, after settle


def keys(tenant: str) -> dict[str, str]:
    tag = "{" + tenant + "}"
    return {
        "req": f"rl:{tag}:req",
        "tok": f"rl:{tag}:tok",
        "quota": f"quota:{tag}",
        "lease": f"lease:{tag}",
        "usage": f"usage:{tag}",
        "events": f"events:{tag}",
    }


def cost_micro_usd(usage: Usage, input_per_million_usd: float, output_per_million_usd: float) -> int:
    """Price in integer micro-dollars: tokens * $/1e6 tokens * 1e6 micro$/$ = tokens * price."""
    return round(
        usage.prompt_tokens * input_per_million_usd + usage.completion_tokens * output_per_million_usd
    )


class Limiter:
    """Runs admit.lua and settle.lua for one gateway process."""

    def __init__(
        self, conn: ScriptConnection, *, lease_ttl_s: float, settled_ttl_s: int, stream_maxlen: int
    ) -> None:
        self._admit = Script(conn, _lua("admit.lua"))
        self._settle = Script(conn, _lua("settle.lua"))
        self._lease_ms = str(int(lease_ttl_s * 1000))
        self._settled_ttl = str(settled_ttl_s)
        self._maxlen = str(stream_maxlen)
        self._keys: dict[str, dict[str, str]] = {}

    def _k(self, tenant: str) -> dict[str, str]:
        k = self._keys.get(tenant)
        if k is None:
            k = self._keys[tenant] = keys(tenant)
        return k

    async def load(self) -> None:
        """SCRIPT LOAD both scripts so the first request does not pay for it."""
        for script in (self._admit, self._settle):
            await script.load()

    async def admit(self, tenant: str, plan: EffectivePlan, reserve: int, lease_id: str) -> Decision:
        k = self._k(tenant)
        r = await self._admit(
            keys=[k["req"], k["tok"], k["quota"], k["lease"]],
            args=[
                plan.requests_per_minute,
                plan.tokens_per_minute,
                plan.tokens_per_month,
                plan.max_concurrent_requests,
                reserve,
                lease_id,
                self._lease_ms,
            ],
        )
        limit = r[1].decode() if isinstance(r[1], bytes) else str(r[1])
        return Decision(
            allowed=int(r[0]) == 1,
            limit=limit,  # type: ignore[arg-type]
            requests_limit=plan.requests_per_minute,
            requests_remaining=max(0, int(r[2])),
            requests_reset_s=float(r[3]),
            tokens_limit=plan.tokens_per_minute,
            tokens_remaining=max(0, int(r[4])),
            tokens_reset_s=float(r[5]),
            retry_after_s=float(r[6]),
            limit_value=int(r[7]),
            used=float(r[8]),
            requested=float(r[9]),
            month=r[10].decode() if isinstance(r[10], bytes) else str(r[10]),
            quota_remaining=plan.tokens_per_month - int(r[11]),
        )

    async def settle(
        self,
        *,
        tenant: str,
        plan: EffectivePlan,
        lease_id: str,
        reserved: int,
        usage: Usage | None,
        month: str,
        model: str,
        cost_micro: int,
        request_id: str,
        key_id: str,
        latency_ms: float,
        status: int,
    ) -> Settled:
        """`usage` None means not served: full refund, nothing metered, the event records the status."""
        k = self._k(tenant)
        served = usage is not None
        r = await self._settle(
            keys=[
                k["tok"],
                k["quota"],
                k["lease"],
                f"done:{{{tenant}}}:{request_id}",
                k["usage"],
                k["events"],
            ],
            args=[
                lease_id,
                reserved,
                usage.prompt_tokens if usage else 0,
                usage.completion_tokens if usage else 0,
                1 if served else 0,
                plan.tokens_per_minute,
                month,
                model,
                cost_micro if served else 0,
                request_id,
                key_id,
                f"{latency_ms:.1f}",
                status,
                self._settled_ttl,
                self._maxlen,
                tenant,
            ],
        )
        return Settled(
            counted=int(r[0]),  # type: ignore[arg-type]
            tokens_level=float(r[1]),
            quota_remaining=plan.tokens_per_month - int(r[2]),
        )
