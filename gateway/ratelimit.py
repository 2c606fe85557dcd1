"""The limiter: admission, heartbeat and settle, the Redis round trips of a proxied request.

All three are Lua scripts in `gateway/lua/` (read from the package, registered once, run with
EVALSHA; the script connection reloads them by itself after a Redis restart wipes its cache).
Every key a script touches carries the `{tenant}` hash tag (see `keyschema.py`), so each runs
on one Redis Cluster slot. A short request makes exactly two round trips (admit, settle); only
a request that outlives `lease_heartbeat_s` sends heartbeats.

The scripts answer with name/value pairs and this module reads them by name into dataclasses
(`Decision`, `Settled`, `Beat`); a field added on one side cannot shift the others. They and
`SettleRecord` are slotted, not frozen: a frozen dataclass sets each field through
`object.__setattr__`, and these are built on every request (`SettleRecord`'s 20 fields took 1.6
times as long frozen; `loadtest/bench/gateway_instructions.py` counts the request path).
The limiter never imports HTTP: turning a decision into a status code and headers happens in
`errors.rejection` and `errors.rate_limit_headers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config import EffectivePlan
from gateway.costs import Usage
from gateway.keyschema import tenant_keys
from gateway.scriptconn import Script, ScriptConnection

LimitName = Literal["", "concurrency", "requests", "tokens", "quota"]

__all__ = ["Beat", "Decision", "LimitName", "Limiter", "Settled", "Usage"]


def _lua(name: str) -> str:
    return (Path(__file__).with_name("lua") / name).read_text()


def _fields(reply: Any) -> dict[bytes, Any]:
    """A script's flat name/value reply as a dict (names are bytes, as hiredis returns them)."""
    return dict(zip(reply[::2], reply[1::2], strict=True))


@dataclass(slots=True)
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


@dataclass(slots=True)
class Settled:
    counted: Literal[1, 0, -1]  # 1 metered, 0 not served, -1 request id already metered
    tokens_level: float
    quota_remaining: int  # tokens_per_month - (used + reserved) in the reservation's month, after settle
    owned: bool  # this settle returned the reservation (False: recovery or a replay got there first)


@dataclass(slots=True)
class Beat:
    renewed: bool  # False: the request was already settled elsewhere (a survivor recovered it)
    expires_ms: int


@dataclass(slots=True)
class SettleRecord:
    """Everything settle.lua needs, as plain values: what the spool writes and replays."""

    tenant: str
    tokens_per_minute: int
    tokens_per_month: int
    lease_id: str
    reserved: int
    prompt_tokens: int
    completion_tokens: int
    served: bool
    month: str
    model: str
    cost_micro: int
    request_id: str
    key_id: str
    latency_ms: float
    status: int
    recovered: bool = False
    version: str = ""  # model version that served it (versions.py); '' when unknown
    region: str = ""  # region of the backend reached (routing.py); '' when none or unplaced
    fair_charge: float = 0.0  # virtual token counter charge (gateway/fairness.py); 0: no fair queue
    fair_floor: float = 0.0  # the counter's lift floor when the tenant became active
    release: bool = False  # admit's outcome unknown: undo it if it ran, meter nothing (settle.lua)

    @classmethod
    def release_of(
        cls, tenant: str, plan: EffectivePlan, lease_id: str, request_id: str, key_id: str, model: str
    ) -> SettleRecord:
        """The settle that undoes an admission whose reply was lost, if it happened at all: the
        reservation and its month come from admit.lua's in-flight record, not from here."""
        return cls(
            tenant=tenant,
            tokens_per_minute=plan.tokens_per_minute,
            tokens_per_month=plan.tokens_per_month,
            lease_id=lease_id,
            reserved=0,
            prompt_tokens=0,
            completion_tokens=0,
            served=False,
            month="",
            model=model,
            cost_micro=0,
            request_id=request_id,
            key_id=key_id,
            latency_ms=0.0,
            status=503,
            release=True,
        )


class Limiter:
    """Runs admit.lua, heartbeat.lua and settle.lua for one gateway process."""

    def __init__(
        self,
        conn: ScriptConnection,
        *,
        lease_ttl_s: float,
        settled_ttl_s: int,
        stream_maxlen: int,
        replica_id: str = "",
    ) -> None:
        self._admit = Script(conn, _lua("admit.lua"))
        self._settle = Script(conn, _lua("settle.lua"), durable=True)  # WAITs for replicas if configured
        self._beat = Script(conn, _lua("heartbeat.lua"))
        self._lease_ms = str(int(lease_ttl_s * 1000))
        self._settled_ttl = str(settled_ttl_s)
        self._maxlen = str(stream_maxlen)
        self.replica_id = replica_id

    async def load(self) -> None:
        """SCRIPT LOAD the scripts so the first request does not pay for it."""
        for script in (self._admit, self._settle, self._beat):
            await script.load()

    async def admit(
        self,
        tenant: str,
        plan: EffectivePlan,
        reserve: int,
        lease_id: str,
        *,
        request_id: str = "",
        key_id: str = "",
        model: str = "",
        prompt_estimate: int = 0,
        need: int | None = None,
    ) -> Decision:
        """`reserve` is taken from the bucket and quota; `need` (default `reserve`) must be there."""
        k = tenant_keys(tenant)
        f = _fields(
            await self._admit(
                keys=[k.req, k.tok, k.quota, k.lease, k.inflight],
                args=[
                    plan.requests_per_minute,
                    plan.tokens_per_minute,
                    plan.tokens_per_month,
                    plan.max_concurrent_requests,
                    reserve,
                    lease_id,
                    self._lease_ms,
                    request_id,
                    key_id,
                    model,
                    self.replica_id,
                    prompt_estimate,
                    reserve if need is None else need,
                ],
            )
        )
        return Decision(
            allowed=int(f[b"allowed"]) == 1,
            limit=f[b"limit"].decode(),
            requests_limit=plan.requests_per_minute,
            requests_remaining=max(0, int(f[b"requests_remaining"])),
            requests_reset_s=float(f[b"requests_reset_s"]),
            tokens_limit=plan.tokens_per_minute,
            tokens_remaining=max(0, int(f[b"tokens_remaining"])),
            tokens_reset_s=float(f[b"tokens_reset_s"]),
            retry_after_s=float(f[b"retry_after_s"]),
            limit_value=int(f[b"limit_value"]),
            used=float(f[b"used"]),
            requested=float(f[b"requested"]),
            month=f[b"month"].decode(),
            quota_remaining=plan.tokens_per_month - int(f[b"quota_used"]),
        )

    async def heartbeat(self, tenant: str, lease_id: str, usage: Usage) -> Beat:
        """Renew the lease for another TTL and checkpoint the usage so far."""
        k = tenant_keys(tenant)
        f = _fields(
            await self._beat(
                keys=[k.lease, k.inflight],
                args=[lease_id, self._lease_ms, usage.prompt_tokens, usage.completion_tokens],
            )
        )
        return Beat(renewed=int(f[b"renewed"]) == 1, expires_ms=int(f[b"expires_ms"]))

    async def settle(self, rec: SettleRecord) -> Settled:
        """Settle one request; `rec.served` False means full refund, nothing metered."""
        k = tenant_keys(rec.tenant)
        f = _fields(
            await self._settle(
                keys=[k.tok, k.quota, k.lease, k.done(rec.request_id), k.usage, k.events, k.inflight, k.vtc],
                args=[
                    rec.lease_id,
                    rec.reserved,
                    rec.prompt_tokens,
                    rec.completion_tokens,
                    1 if rec.served else 0,
                    rec.tokens_per_minute,
                    rec.month,
                    rec.model,
                    rec.cost_micro if rec.served else 0,
                    rec.request_id,
                    rec.key_id,
                    f"{rec.latency_ms:.1f}",
                    rec.status,
                    self._settled_ttl,
                    self._maxlen,
                    rec.tenant,
                    1 if rec.recovered else 0,
                    rec.version,
                    rec.region,
                    f"{rec.fair_charge:.3f}" if rec.served else "0",
                    f"{rec.fair_floor:.3f}",
                    1 if rec.release else 0,
                ],
            )
        )
        return Settled(
            counted=int(f[b"counted"]),  # type: ignore[arg-type]
            tokens_level=float(f[b"tokens_level"]),
            quota_remaining=rec.tokens_per_month - int(f[b"quota_used"]),
            owned=int(f[b"owned"]) == 1,
        )
