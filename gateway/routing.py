"""Which backend replica serves a request: least outstanding requests, skipping ones that refused.

Each gateway replica counts its own outstanding requests per backend URL; with N replicas this
is N independent views, which is fine for balancing (it is not a limit). A backend that refused
a TCP connection is skipped for `down_s` seconds, unless every backend of the model is down, in
which case the least loaded one is tried anyway rather than failing without trying.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Backend:
    __slots__ = ("down_until", "outstanding", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.outstanding = 0
        self.down_until = 0.0


class BackendPool:
    def __init__(
        self, models: dict[str, list[str]], *, down_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._down_s = down_s
        self._clock = clock
        self.by_model: dict[str, list[Backend]] = {}
        by_url: dict[str, Backend] = {}
        for model, urls in models.items():
            self.by_model[model] = [by_url.setdefault(u, Backend(u)) for u in urls]
        self.all = list(by_url.values())

    def pick(self, model: str, exclude: Backend | None = None) -> Backend:
        now = self._clock()
        candidates = [b for b in self.by_model[model] if b is not exclude] or self.by_model[model]
        up = [b for b in candidates if b.down_until <= now] or candidates
        return min(up, key=lambda b: b.outstanding)

    def mark_down(self, backend: Backend) -> None:
        backend.down_until = self._clock() + self._down_s
