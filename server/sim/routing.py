"""Cluster routing for the offline simulator: which replica gets the next request.

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
from typing import Protocol


class HasOutstanding(Protocol):
    @property
    def outstanding(self) -> int: ...


class LeastLoaded:
    """Fewest outstanding requests, lowest index on ties; call `changed(i)` after i's count moves."""

    def __init__(self, engines: Sequence[HasOutstanding]) -> None:
        self.engines = engines
        self._heap: list[tuple[int, int]] = []
        self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(e.outstanding, i) for i, e in enumerate(self.engines)]
        heapq.heapify(self._heap)

    def pick(self) -> int:
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
