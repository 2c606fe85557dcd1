"""What the chaos run adds up to: generated vs metered vs received, limits, 5xx, duplicates.

Inputs are the simulators' own counters (`vllm:generation_tokens_total`, `vllm:prompt_tokens_total`,
read before and after), the tenants' usage hashes and usage streams in Redis, and the client
ledger. Every check returns (name, value, bound, ok); the run fails if any is not ok.

Bounds on backend-generated minus metered completion tokens (each from docs/gateway.md's table of
what can still be lost, computed per call from what the client saw):

- a stream on the replica killed with -9: one heartbeat interval of its generation,
  ceil(lease_heartbeat_s x its tokens/s) + 1;
- a short request in flight on that replica (no heartbeat yet): the same, at the fastest
  stream rate seen in the run;
- a client disconnect: tokens the backend emitted after the gateway's last read and before the
  abort reached it, `disconnect_slack` each (the suite's own bound, printed with the result);
- Redis SIGKILL: the AOF fsync window, which loses nothing on a process kill (Redis write()s the
  AOF before it replies); the bound is the tokens of calls completed in the second before the kill.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from loadtest.chaos.traffic import Call, overlap_max

Check = tuple[str, float, float, bool]

BOUNDS = """Bounds on generated - metered completion tokens (docs/gateway.md, "What can still be lost"):
a stream cut by the replica kill may lose one heartbeat interval of its generation,
ceil(lease_heartbeat_s x its tokens/s) + 1, and so may a short request in flight there (at the
fastest stream rate seen); a client disconnect may lose what the backend emitted after the
gateway's last read, up to `--disconnect-slack` tokens each (the suite's own bound; the storm is
also measured alone, with nothing else on the backends); a Redis SIGKILL may lose the AOF fsync
window, counted as the tokens of calls completed in the second before the kill (a process kill
loses nothing in practice: Redis write()s the AOF before it replies). Metered must never exceed
generated."""


def sim_counters(urls: list[str]) -> dict[str, float]:
    """Sum of the simulators' prompt and generation token counters."""
    out = {"prompt": 0.0, "generation": 0.0}
    for url in urls:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        for name in out:
            m = re.search(rf"^vllm:{name}_tokens_total\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
            out[name] += float(m.group(1)) if m else 0.0
    return out


@dataclass
class TenantUsage:
    requests: int
    prompt: int
    completion: int
    events: list[dict[str, str]]


def tenant_usage(r: redis.Redis, tenant: str) -> TenantUsage:
    totals: Counter[str] = Counter()
    raw: Any = r.hgetall(f"usage:{{{tenant}}}")
    for field, value in raw.items():
        totals[field.decode().rsplit("|", 1)[1]] += int(value)
    entries: Any = r.xrange(f"events:{{{tenant}}}")
    events: list[dict[str, str]] = [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]
    return TenantUsage(totals["requests"], totals["prompt_tokens"], totals["completion_tokens"], events)


def received(calls: list[Call]) -> tuple[int, int]:
    """(prompt, completion) tokens the clients saw."""
    served = [c for c in calls if c.status == 200]
    return sum(c.prompt_tokens for c in served), sum(c.completion_tokens for c in served)


def loss_bound(calls: list[Call], *, heartbeat_s: float, killed: str, t_redis_kill: float,
               disconnect_slack: int) -> tuple[float, dict[str, float]]:  # fmt: skip
    """The documented bound on generated - metered completion tokens, and its parts."""
    fastest = max((c.tokens_per_s for c in calls), default=0.0) or 50.0
    parts: dict[str, float] = defaultdict(float)
    for c in calls:
        if c.gateway == killed and c.outcome == "broken":
            rate = c.tokens_per_s or fastest
            parts["streams cut by the replica kill"] += math.ceil(heartbeat_s * rate) + 1
        elif c.outcome == "disconnected":
            parts["client disconnects"] += disconnect_slack
        elif c.status == 200 and t_redis_kill - 1.0 <= c.t1 <= t_redis_kill:
            parts["Redis fsync window"] += c.completion_tokens
    return sum(parts.values()), dict(parts)


def duplicates(usages: dict[str, TenantUsage]) -> list[str]:
    ids = [e.get("request_id", "") for u in usages.values() for e in u.events]
    return sorted(rid for rid, n in Counter(ids).items() if n > 1)


def served_but_unmetered(calls: list[Call], usages: dict[str, TenantUsage]) -> list[str]:
    """Completions a client finished with 200 that have no usage event (nothing excuses those).

    Calls without a tenant are the malformed corpus's admin requests, which meter nothing.
    """
    metered = {e.get("request_id") for u in usages.values() for e in u.events}
    return [
        c.rid for c in calls if c.tenant and c.status == 200 and c.outcome == "ok" and c.rid not in metered
    ]


def per_call_mismatch(calls: list[Call], usages: dict[str, TenantUsage]) -> list[str]:
    """Completed calls whose metered tokens differ from the usage block the client received."""
    events = {e.get("request_id"): e for u in usages.values() for e in u.events}
    out = []
    for c in calls:
        e = events.get(c.rid)
        if c.status != 200 or c.outcome != "ok" or e is None or not c.prompt_tokens:
            continue
        if (int(e["prompt_tokens"]), int(e["completion_tokens"])) != (c.prompt_tokens, c.completion_tokens):
            out.append(f"{c.rid}: client {c.prompt_tokens}+{c.completion_tokens}, "
                       f"metered {e['prompt_tokens']}+{e['completion_tokens']}")  # fmt: skip
    return out


def five_xx(calls: list[Call], allowed: list[tuple[float, float]]) -> tuple[dict[str, int], int]:
    """5xx per phase, and how many fell outside the allowed (outage) windows."""
    by_phase: Counter[str] = Counter()
    outside = 0
    for c in calls:
        if c.status >= 500:
            by_phase[c.phase] += 1
            if not any(a <= c.t0 <= b or a <= c.t1 <= b for a, b in allowed):
                outside += 1
    return dict(by_phase), outside


def concurrency_overshoot(calls: list[Call], limit: int) -> int:
    return max(0, overlap_max([c for c in calls if c.status == 200]) - limit)


def table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)
