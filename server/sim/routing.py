"""Cluster routing for the offline simulator: which replica gets the next request.

Named policies (`make_router`), all exact functions of the replicas' state at the moment of arrival:

- `least-loaded`: fewest outstanding requests (what the simulator always modelled).
- `prefix-affinity`: the replica whose prefix cache holds the longest run of the request's leading
  blocks, read from the replicas' real caches (llm-d's "precise" scorer reads vLLM's KV events for
  the same information); ties, and requests no replica has cached, go to the least loaded.
- `affinity-bounded`: prefix-affinity, unless the chosen replica has more than `load_bound`
  outstanding requests above the least-loaded one; then least-loaded (AIBrix switches prefix
  matching off above an imbalance of 8 running requests; the gateway's option works the same way).
- `combined`: one score per replica, 2 x (cached fraction of the prompt's blocks) + 1 x (queue
  score: outstanding requests, min-max normalised, fewer is better) + 1 x (free KV fraction);
  highest wins. The three terms are the scorers llm-d's router combines; the 2:1:1 weights are ours.

`LeastLoaded` is the router the offline simulator has always modelled: the replica with the fewest
outstanding (running + waiting) requests, ties to the lowest index, exactly `min(engines,
key=outstanding)`. Scanning 390 replicas for each of 10,000 arrivals a second cost more than the
engines themselves, so it keeps a heap of (outstanding, index) entries instead: every change of a
replica's count pushes a fresh entry, and entries that no longer match their replica's count are
dropped when they reach the top. The top that survives is the true minimum, with the same
tie-break, in O(log replicas).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from server.sim.engine import Engine
    from server.sim.request import Request

RouterKind = Literal["least-loaded", "prefix-affinity", "affinity-bounded", "combined"]
ROUTERS: tuple[RouterKind, ...] = ("least-loaded", "prefix-affinity", "affinity-bounded", "combined")


class HasOutstanding(Protocol):
    @property
    def outstanding(self) -> int: ...


class Router(Protocol):
    def pick(self, req: Request | None = None) -> int: ...

    def changed(self, i: int) -> None: ...


class LeastLoaded:
    """Fewest outstanding requests, lowest index on ties; call `changed(i)` after i's count moves."""

    def __init__(self, engines: Sequence[HasOutstanding]) -> None:
        self.engines = engines
        self._heap: list[tuple[int, int]] = []
        self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(e.outstanding, i) for i, e in enumerate(self.engines)]
        heapq.heapify(self._heap)

    def pick(self, req: Request | None = None) -> int:
        heap, engines = self._heap, self.engines
        while True:
            load, i = heap[0]
            if engines[i].outstanding == load:
                return i
            heapq.heappop(heap)

    def changed(self, i: int) -> None:
        heapq.heappush(self._heap, (self.engines[i].outstanding, i))
        if len(self._heap) > 8 * len(self.engines) + 64:  # stale entries pile up below the top
            self._rebuild()


def _prompt_blocks(req: Request, block_size: int) -> int:
    """Leading blocks a replica could serve from cache (vLLM always computes the last prompt token)."""
    return (req.prompt_len - 1) // block_size


class PrefixAffinity:
    """Longest cached prefix wins; ties and misses go to the least loaded (see the module docstring)."""

    def __init__(self, engines: Sequence[Engine], load_bound: int | None = None) -> None:
        self.engines = engines
        self.least = LeastLoaded(engines)
        self.load_bound = load_bound
        self.block_size = engines[0].kv.block_size

    def changed(self, i: int) -> None:
        self.least.changed(i)

    def pick(self, req: Request | None = None) -> int:
        least = self.least.pick()
        if req is None or req.blocks is None:
            return least
        limit = _prompt_blocks(req, self.block_size)
        best, best_hit, best_load = least, 0, self.engines[least].outstanding
        for i, eng in enumerate(self.engines):
            hit = eng.kv.match_len(req.blocks, limit)
            if hit > best_hit or (hit == best_hit and hit and eng.outstanding < best_load):
                best, best_hit, best_load = i, hit, eng.outstanding
        if best_hit == 0:
            return least
        if self.load_bound is not None and best_load > self.engines[least].outstanding + self.load_bound:
            return least
        return best


class Combined:
    """2 x cached fraction + 1 x queue score + 1 x free KV fraction; highest wins, lowest index on ties."""

    PREFIX_W, QUEUE_W, KV_W = 2.0, 1.0, 1.0

    def __init__(self, engines: Sequence[Engine]) -> None:
        self.engines = engines
        self.block_size = engines[0].kv.block_size

    def changed(self, i: int) -> None:
        pass

    def pick(self, req: Request | None = None) -> int:
        engines = self.engines
        loads = [e.outstanding for e in engines]
        lo, hi = min(loads), max(loads)
        span = hi - lo
        chain = None if req is None else req.blocks
        limit = 0 if req is None or chain is None else _prompt_blocks(req, self.block_size)
        best, best_score = 0, -1.0
        for i, eng in enumerate(engines):
            score = self.KV_W * (1.0 - eng.kv.usage)
            if span:
                score += self.QUEUE_W * (hi - loads[i]) / span
            else:
                score += self.QUEUE_W
            if chain is not None and limit:
                score += self.PREFIX_W * eng.kv.match_len(chain, limit) / limit
            if score > best_score:
                best, best_score = i, score
        return best


def make_router(kind: RouterKind, engines: Sequence[Engine], load_bound: int = 8) -> Router:
    if kind == "least-loaded":
        return LeastLoaded(engines)
    if kind == "prefix-affinity":
        return PrefixAffinity(engines)
    if kind == "affinity-bounded":
        return PrefixAffinity(engines, load_bound=load_bound)
    if kind == "combined":
        return Combined(engines)
    raise ValueError(f"unknown router {kind!r}; expected one of {', '.join(ROUTERS)}")
