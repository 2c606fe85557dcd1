"""Is a model saturated? The backends say so in their own metrics; the gateway reads them off the path.

Signals, per backend, from a background scrape of its Prometheus `/metrics` (vLLM's names, which
the simulator exports too): `vllm:num_requests_running`, `vllm:num_requests_waiting` and
`vllm:kv_cache_usage_perc` (older vLLM: `vllm:gpu_cache_usage_perc`). The gateway adds what it
knows exactly: its own in-flight requests. No request ever waits for a scrape.

Free slots, the number the fair queue dispatches against (`free_slots`):

- `slots` = `max_num_seqs` per backend x backends: the most the engines run at once. Beyond it a
  request waits in the engine's FCFS (or priority) queue where the gateway cannot order it.
- `view` = slots - (running + waiting at the last scrape - this replica's in-flight at that
  scrape) - this replica's in-flight now: the other replicas' work is as stale as the scrape, this
  replica's own is exact.
- `slice` = slots / replicas - this replica's in-flight now: each replica's guaranteed part, so a
  stale view never keeps a replica from its share (with N replicas and a load balancer, each
  replica sees about 1/N of the traffic).
- free = max(view, slice), but only the slice while any backend reports more waiting requests than
  `max_waiting` or KV usage at or above `max_kv_usage`: borrowing stops as soon as the engines
  queue, and a replica within its slice is never blocked by a stale reading (blocking it until
  the next scrape was measured to add about half a scrape interval to every queued request).

How stale: one scrape interval (default 0.5 s) for other replicas' work. Over-dispatch is bounded by
what other replicas started within one interval beyond their slice; it waits in the engine's queue
(with tiers, ordered by `priority` there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

log = logging.getLogger("gateway.saturation")


@dataclass(frozen=True)
class BackendLoad:
    """One backend's reading from its /metrics."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # 0..1


@dataclass(frozen=True)
class Thresholds:
    max_num_seqs: int = 16  # per backend
    max_waiting: int = 0  # requests waiting inside an engine before the model counts as saturated
    max_kv_usage: float = 0.95


_SAMPLE = re.compile(r"^(vllm:[a-z_]+)(\{[^}]*\})?\s+([0-9.eE+\-naNinf]+)", re.MULTILINE)


def parse_metrics(text: str) -> BackendLoad:
    """Sum vLLM's gauges over label sets (one per model served) from Prometheus text."""
    values: dict[str, float] = {}
    for name, _labels, value in _SAMPLE.findall(text):
        try:
            v = float(value)
        except ValueError:
            continue
        if math.isfinite(v):
            values[name] = values.get(name, 0.0) + v
    kv = values.get("vllm:kv_cache_usage_perc", values.get("vllm:gpu_cache_usage_perc", 0.0))
    return BackendLoad(
        running=int(values.get("vllm:num_requests_running", 0)),
        waiting=int(values.get("vllm:num_requests_waiting", 0)),
        kv_usage=kv,
    )


def free_slots(
    loads: Sequence[BackendLoad],
    th: Thresholds,
    *,
    own_now: int,
    own_at_scrape: int,
    replicas: int = 1,
) -> int:
    """Requests this replica may start now (see the module docstring)."""
    slots = th.max_num_seqs * max(len(loads), 1)
    mine = slots // max(replicas, 1) - own_now
    if any(b.waiting > th.max_waiting or b.kv_usage >= th.max_kv_usage for b in loads):
        return mine  # saturated: no borrowing beyond the slice until the backends drain
    outstanding = sum(b.running + b.waiting for b in loads)
    view = slots - max(0, outstanding - own_at_scrape) - own_now
    return max(view, mine)


class Detector:
    """Background scrape of a model's backends; `free_slots()` reads the last result, no I/O."""

    def __init__(
        self,
        backends: Sequence[str],
        thresholds: Thresholds,
        *,
        interval_s: float = 0.5,
        replicas: int = 1,
        own_in_flight: Callable[[], int] = lambda: 0,
        on_refresh: Callable[[], None] = lambda: None,
    ) -> None:
        self.backends = list(backends)
        self.thresholds = thresholds
        self.interval_s = interval_s
        self.replicas = replicas
        self.own_in_flight = own_in_flight
        self.on_refresh = on_refresh
        self.loads: list[BackendLoad] = [BackendLoad() for _ in self.backends]
        self.own_at_scrape = 0
        self.scraped_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def free_slots(self) -> int:
        own = self.own_in_flight()
        if self.scraped_at == 0.0:  # nothing read yet: only this replica's slice is known to be free
            return self.thresholds.max_num_seqs * max(len(self.backends), 1) // max(self.replicas, 1) - own
        return free_slots(
            self.loads, self.thresholds, own_now=own, own_at_scrape=self.own_at_scrape, replicas=self.replicas
        )

    def saturated(self) -> bool:
        return self.free_slots() <= 0

    async def scrape_once(self, session: aiohttp.ClientSession) -> None:
        own = self.own_in_flight()

        async def one(url: str, old: BackendLoad) -> BackendLoad:
            try:
                timeout = aiohttp.ClientTimeout(total=self.interval_s)
                async with session.get(f"{url}/metrics", timeout=timeout) as r:
                    return parse_metrics(await r.text()) if r.status == 200 else old
            except (aiohttp.ClientError, TimeoutError):
                return old  # keep the last reading; routing's health handles a dead backend

        pairs = zip(self.backends, self.loads, strict=True)
        self.loads = list(await asyncio.gather(*(one(u, o) for u, o in pairs)))
        self.own_at_scrape = own
        self.scraped_at = time.monotonic()
        self.on_refresh()

    def start(self, session: aiohttp.ClientSession) -> None:
        async def loop() -> None:
            while True:
                await self.scrape_once(session)
                await asyncio.sleep(self.interval_s)

        self._task = asyncio.get_running_loop().create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
