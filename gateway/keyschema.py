"""The Redis key schema: every key the gateway reads or writes, named in one place.

All of a tenant's rate-limit and metering keys carry the `{tenant}` hash tag, so admit.lua,
settle.lua and heartbeat.lua touch one Redis Cluster slot per call. Key lookups (`key:<digest>`)
and replica liveness are not per tenant and are read outside the scripts.

    rl:{tenant}:req          hash {t, ts}                    request bucket (rpm)
    rl:{tenant}:tok          hash {t, ts}                    token bucket (tpm)
    quota:{tenant}           hash {YYYY-MM -> tokens}        monthly quota, used + reserved
    lease:{tenant}           zset {lease id -> expiry ms}    concurrency leases
    inflight:{tenant}        hash {lease id -> json}         admitted, not yet settled: the
                                                             reservation and the last checkpoint
    usage:{tenant}           hash {day|model|counter}        metered counters
    events:{tenant}          stream                          one entry per settled request
    done:{tenant}:<rid>      string                          this request id was metered
    vtc:{tenant}             hash {model -> counter}         fair queue's virtual token counter
    replica:<id>             string (TTL)                    a gateway replica is alive
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class TenantKeys:
    """The keys of one tenant (built once per tenant and cached)."""

    tenant: str
    req: str
    tok: str
    quota: str
    lease: str
    inflight: str
    usage: str
    events: str
    vtc: str

    def done(self, request_id: str) -> str:
        return done_key(self.tenant, request_id)


def done_key(tenant: str, request_id: str) -> str:
    """Set by settle.lua when it meters `request_id`: a replayed or repeated settle meters nothing."""
    return f"done:{{{tenant}}}:{request_id}"


@lru_cache(maxsize=4096)
def tenant_keys(tenant: str) -> TenantKeys:
    tag = "{" + tenant + "}"
    return TenantKeys(
        tenant=tenant,
        req=f"rl:{tag}:req",
        tok=f"rl:{tag}:tok",
        quota=f"quota:{tag}",
        lease=f"lease:{tag}",
        inflight=f"inflight:{tag}",
        usage=f"usage:{tag}",
        events=f"events:{tag}",
        vtc=f"vtc:{tag}",
    )


def replica_key(replica_id: str) -> str:
    """Set with a TTL by a live replica; survivors recover the requests of replicas without one."""
    return f"replica:{replica_id}"
