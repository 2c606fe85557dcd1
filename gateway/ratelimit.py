"""The limiter: admission, heartbeat and settle, the Redis round trips of a proxied request.

All three are Lua scripts in `gateway/lua/` (read from the package, registered once, run with
EVALSHA; the script connection reloads them by itself after a Redis restart wipes its cache).
Every key a script touches carries the `{tenant}` hash tag (see `keyschema.py`), so each runs
on one Redis Cluster slot. A short request makes exactly two round trips (admit, settle); only
a request that outlives `lease_heartbeat_s` sends heartbeats.

The scripts answer with name/value pairs and this module reads them by name into dataclasses
(`Decision`, `Settled`, `Beat`); a field added on one side cannot shift the others (`_fields`
checks every name). Each call packs only its per-request values: the command's start (keys,
plan numbers) is packed once per tenant (`scriptconn.Head`). They and
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
from gateway.keyschema import done_key, tenant_keys
from gateway.scriptconn import Head, Script, ScriptConnection

LimitName = Literal["", "concurrency", "requests", "tokens", "quota"]

__all__ = ["Beat", "Decision", "LimitName", "Limiter", "Settled", "Usage"]


def _lua(name: str) -> str:
    return (Path(__file__).with_name("lua") / name).read_text()


def _fields(reply: list[Any], names: list[bytes]) -> list[Any]:
    """A script's flat name/value reply as the values of `names`, in that order.

    The names are always checked: when the script sent exactly these names in this order (it
    always does today) the values are taken as they come, else they are looked up by name, so a
    field added or moved on the Lua side cannot shift the others. Building a dict of every
    reply cost about 15k instructions per request (valgrind); comparing the names costs little.
    """
    if reply[::2] == names:
        values: list[Any] = reply[1::2]
        return values
    by_name = dict(zip(reply[::2], reply[1::2], strict=True))
    missing = [n.decode() for n in names if n not in by_name]
    if missing:
        raise ValueError(f"script reply lacks {', '.join(missing)}: {reply!r}")
    return [by_name[n] for n in names]


_ADMIT = [
    b"allowed",
    b"limit",
    b"requests_remaining",
    b"requests_reset_s",
    b"tokens_remaining",
    b"tokens_reset_s",
    b"retry_after_s",
    b"limit_value",
    b"used",
    b"requested",
    b"month",
    b"quota_used",
]
_SETTLE = [b"counted", b"tokens_level", b"quota_used", b"owned"]
_BEAT = [b"renewed", b"expires_ms"]


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
        # Packed starts of the two hot scripts (scriptconn.Head): admit's per tenant and plan
        # object (a plan change builds a new object), settle's per tenant.
        self._admit_heads: dict[str, tuple[EffectivePlan, Head]] = {}
        self._settle_heads: dict[str, Head] = {}

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
        head = self._admit_heads.get(tenant)
        if head is None or head[0] is not plan:
            k = tenant_keys(tenant)
            fixed = [plan.requests_per_minute, plan.tokens_per_minute, plan.tokens_per_month]
            fixed += [plan.max_concurrent_requests]
            head = (plan, self._admit.head([k.req, k.tok, k.quota, k.lease, k.inflight], fixed, 9))
            self._admit_heads[tenant] = head
        reply = await self._admit.run(
            head[1],
            (
                reserve,
                lease_id,
                self._lease_ms,
                request_id,
                key_id,
                model,
                self.replica_id,
                prompt_estimate,
                reserve if need is None else need,
            ),
        )
        (allowed, limit, req_left, req_reset, tok_left, tok_reset, retry, limit_value, used, requested, month,
         quota_used) = _fields(reply, _ADMIT)  # fmt: skip
        return Decision(
            allowed=allowed == 1,
            limit=limit.decode(),
            requests_limit=plan.requests_per_minute,
            requests_remaining=max(0, int(req_left)),
            requests_reset_s=float(req_reset),
            tokens_limit=plan.tokens_per_minute,
            tokens_remaining=max(0, int(tok_left)),
            tokens_reset_s=float(tok_reset),
            retry_after_s=float(retry),
            limit_value=int(limit_value),
            used=float(used),
            requested=float(requested),
            month=month.decode(),
            quota_remaining=plan.tokens_per_month - int(quota_used),
        )

    async def heartbeat(self, tenant: str, lease_id: str, usage: Usage) -> Beat:
        """Renew the lease for another TTL and checkpoint the usage so far."""
        k = tenant_keys(tenant)
        renewed, expires_ms = _fields(
            await self._beat(
                keys=[k.lease, k.inflight],
                args=[lease_id, self._lease_ms, usage.prompt_tokens, usage.completion_tokens],
            ),
            _BEAT,
        )
        return Beat(renewed=int(renewed) == 1, expires_ms=int(expires_ms))

    async def settle(self, rec: SettleRecord) -> Settled:
        """Settle one request; `rec.served` False means full refund, nothing metered."""
        head = self._settle_heads.get(rec.tenant)
        if head is None:
            k = tenant_keys(rec.tenant)
            head = self._settle.head(
                [k.tok, k.quota, k.lease, k.usage, k.events, k.inflight, k.vtc], [], 23, tail_keys=1
            )
            self._settle_heads[rec.tenant] = head
        served = rec.served
        reply = await self._settle.run(
            head,
            (
                done_key(rec.tenant, rec.request_id),  # KEYS[8]
                rec.lease_id,
                rec.reserved,
                rec.prompt_tokens,
                rec.completion_tokens,
                1 if served else 0,
                rec.tokens_per_minute,
                rec.month,
                rec.model,
                rec.cost_micro if served else 0,
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
                f"{rec.fair_charge:.3f}" if served else "0",
                f"{rec.fair_floor:.3f}",
                1 if rec.release else 0,
            ),
        )
        counted, tokens_level, quota_used, owned = _fields(reply, _SETTLE)
        return Settled(
            counted=counted,
            tokens_level=float(tokens_level),
            quota_remaining=rec.tokens_per_month - int(quota_used),
            owned=owned == 1,
        )
