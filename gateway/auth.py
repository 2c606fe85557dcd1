"""API keys: created once, stored only as SHA-256 digests, resolved to a tenant per request.

Auth must not be a third Redis round trip per request: a Cluster script cannot touch
`key:<digest>` and `rl:{tenant}:*` in one slot, so the key lookup cannot ride inside admit.lua.
Each process therefore caches digest -> (tenant, key id). A revocation deletes the digest and
PUBLISHes it on `servelab:keys:revoked`; every replica's subscriber drops it from its cache at
once (milliseconds, well under the 1 s promise; see broadcast.py). The cache TTL is the backstop for a replica
that missed a message, and a subscriber that loses its connection clears the whole cache when
it gets back, since it cannot know what it missed. A miss costs one HMGET, once per key.

A cold lookup can race a revocation: its HMGET runs in Redis before the DEL, the revocation's
message is handled here while the reply is still on its way, and the reply would then cache a
revoked key for the whole TTL. So the cache has an epoch that every revocation message (and
every resync) advances; a lookup caches its answer only if the epoch did not move while it was
waiting. The DEL precedes the PUBLISH on one connection, so a lookup that starts after the
message was handled cannot see the key, and one that started before it is not cached.

Redis layout:
    key:<sha256 hex>       hash {tenant, key_id}                       the lookup
    keys:{tenant}          hash {key_id -> json record}                listing, revocation
    keyid:<key_id>         string tenant                               key id -> tenant
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from gateway.errors import AuthenticationFailed, NotFound

log = logging.getLogger("gateway.auth")

REVOKED_CHANNEL = "servelab:keys:revoked"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and which of its keys."""

    tenant: str
    key_id: str


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    tenant: str
    name: str
    created_at: float
    revoked_at: float | None
    prefix: str  # first characters of the key, enough to recognise it, not to use it


class KeyStore:
    """Keys in Redis plus this process's cache of digests."""

    def __init__(self, redis: Redis, cache_ttl_s: float) -> None:
        self._redis = redis
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._epoch = 0  # advanced by every revocation message and resync (see the module docstring)

    # -- admin side ---------------------------------------------------------------------------
    async def create(self, tenant: str, name: str = "") -> tuple[str, KeyRecord]:
        """Make a key; the plaintext is returned here once and never stored."""
        key = "sk-" + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
        rec = KeyRecord(
            key_id=key_id, tenant=tenant, name=name, created_at=time.time(), revoked_at=None, prefix=key[:7]
        )
        d = digest(key)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(f"key:{d}", mapping={"tenant": tenant, "key_id": key_id})
        pipe.hset(f"keys:{{{tenant}}}", key_id, json.dumps({**rec.__dict__, "digest": d}))
        pipe.set(f"keyid:{key_id}", tenant)
        await pipe.execute()
        return key, rec

    async def list(self, tenant: str) -> list[KeyRecord]:
        raw = await self._redis.hgetall(f"keys:{{{tenant}}}")
        out = []
        for value in raw.values():
            data = json.loads(value)
            data.pop("digest", None)
            out.append(KeyRecord(**data))
        return sorted(out, key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> KeyRecord:
        """Delete the digest and tell every replica; raises NotFound for an unknown key id."""
        tenant_b = await self._redis.get(f"keyid:{key_id}")
        if tenant_b is None:
            raise NotFound(f"No API key with id {key_id!r}.", param="key_id")
        tenant = tenant_b.decode() if isinstance(tenant_b, bytes) else str(tenant_b)
        raw = await self._redis.hget(f"keys:{{{tenant}}}", key_id)
        if raw is None:
            raise NotFound(f"No API key with id {key_id!r}.", param="key_id")
        data = json.loads(raw)
        d = data.pop("digest")
        if data.get("revoked_at") is None:
            data["revoked_at"] = time.time()
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(f"key:{d}")
        pipe.hset(f"keys:{{{tenant}}}", key_id, json.dumps({**data, "digest": d}))
        pipe.publish(REVOKED_CHANNEL, d)
        await pipe.execute()
        self.forget(d)
        log.info("API key revoked: tenant=%s key_id=%s", tenant, key_id)
        return KeyRecord(**data)

    # -- request side -------------------------------------------------------------------------
    async def authenticate(self, authorization: str | None) -> Principal:
        """Bearer sk-... -> Principal; raises AuthenticationFailed. Redis errors propagate."""
        if not authorization or not authorization.startswith(("Bearer ", "bearer ")):
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer sk-...'.")
        key = authorization[7:].strip()
        d = digest(key)
        hit = self._cache.get(d)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        epoch = self._epoch
        fields: list[bytes | None] = await self._redis.hmget(  # type: ignore[assignment]
            f"key:{d}", "tenant", "key_id"
        )
        if fields[0] is None or fields[1] is None:
            self._cache.pop(d, None)
            raise AuthenticationFailed("Incorrect or revoked API key.")
        principal = Principal(tenant=fields[0].decode(), key_id=fields[1].decode())
        if epoch == self._epoch:  # no revocation arrived while we waited: the answer may be kept
            self._cache[d] = (principal, now + self._ttl)
        return principal

    async def on_revoked(self, d: str) -> None:
        """Pub/sub handler: a key was revoked somewhere."""
        self.forget(d)

    async def resync(self) -> None:
        """After a pub/sub gap anything may have been revoked meanwhile: start clean."""
        self.forget()

    def forget(self, d: str | None = None) -> None:
        self._epoch += 1
        if d is None:
            self._cache.clear()
        else:
            self._cache.pop(d, None)
