"""burst: a tenant on a tight plan sends requests back to back; the limiter admits exactly its limit.

The tenant `tiny` (plan `tight`: 5 requests per minute) sends one request after another, faster
than the bucket refills. Expected: the admitted count equals what the bucket held (the plan's
requests per minute when it started full, as the first answer's `x-ratelimit-remaining-requests`
tells), every refusal is a 429 in the OpenAI error shape with `retry-after` and the
`x-ratelimit-*` headers, and nothing else fails.
"""

from __future__ import annotations

import asyncio

from servelab.scenarios.base import Check, Context
from servelab.scenarios.load import Load

TENANT = "tiny"


def run(ctx: Context) -> list[Check]:
    key = ctx.key(TENANT)
    plan = ctx.admin(f"/admin/v1/tenants/{TENANT}")
    limit = int(str(_find(plan, "requests_per_minute")))
    n = limit * 3
    ctx.watch(f"tenant {TENANT}: '429s by limit' grows by {n - limit} while req/s stays near zero")
    ctx.say(f"sending {n} requests back to back as {TENANT!r} (plan limit {limit} requests/minute)")
    load = Load(ctx.gateway, ctx.model, ctx.t0)

    async def go() -> None:
        try:
            for _ in range(n):
                await load.one(TENANT, key, words=4, max_tokens=4, stream=False)
        finally:
            await load.close()

    asyncio.run(go())
    recs = load.records
    admitted = [r for r in recs if r.status == 200]
    refused = [r for r in recs if r.status == 429]
    other = [r for r in recs if r.status not in (200, 429)]
    first = recs[0]
    started_full = first.status == 200 and first.headers.get("x-ratelimit-remaining-requests") == str(
        limit - 1
    )
    held = (
        limit
        if started_full
        else (int(first.headers.get("x-ratelimit-remaining-requests", "0")) + 1 if first.status == 200 else 0)
    )
    with_headers = [r for r in refused if _has_limit_headers(r.headers)]
    retry = sorted(float(r.headers["retry-after"]) for r in with_headers)
    ctx.say(f"admitted {len(admitted)}, refused {len(refused)}, other {len(other)}")
    return [
        Check(
            "bucket at start (info)",
            f"remaining {limit - 1} after the first request",
            f"remaining {first.headers.get('x-ratelimit-remaining-requests', '?')}",
            True,
        ),
        Check("admitted equals the limit", f"{held} (of {n})", str(len(admitted)), len(admitted) == held),
        Check("refused with 429", f"{n - held}", str(len(refused)), len(refused) == n - held),
        Check(
            "429s carry retry-after + x-ratelimit-*",
            f"all {len(refused)}",
            f"{len(with_headers)} (retry-after {retry[0]:.0f}..{retry[-1]:.0f} s)" if retry else "0",
            len(with_headers) == len(refused) and all(x > 0 for x in retry),
        ),
        Check(
            "429 body is an OpenAI error",
            "code rate_limit_exceeded or a limit name",
            ", ".join(sorted({r.error for r in refused})) or "-",
            all(r.error for r in refused),
        ),
        Check("no other failures", "0", str(len(other)), not other),
    ]


def _has_limit_headers(h: dict[str, str]) -> bool:
    need = (
        "retry-after",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    )
    return all(k in h for k in need)


def _find(obj: object, name: str) -> object:
    """The first value called `name` anywhere in a nested admin answer."""
    if isinstance(obj, dict):
        if name in obj:
            return obj[name]
        for v in obj.values():
            found = _find(v, name)
            if found is not None:
                return found
    return None


SCENARIOS = {"burst": run}
