"""Which backend replica serves a request: the version's backends, inside the tenant's regions,
least outstanding requests (or, optionally, prefix affinity within a load bound:
gateway/prefixroute.py), skipping ones that refused.

Each gateway replica counts its own outstanding requests per backend URL; with N replicas this
is N independent views, which is fine for balancing (it is not a limit). A backend that refused
a TCP connection is skipped for `down_s` seconds.

Two rules differ on purpose:
- A tenant without a region restriction: when every backend of the version is down, the least
  loaded one is tried anyway rather than failing without trying.
- A tenant restricted to regions (data residency): only backends placed in those regions are
  ever candidates. When none of them is healthy the request fails with `NoBackendInRegion`
  (503, code `no_backend_in_region`) and is never sent to another region: a fallback there would
  be a transfer the tenant's contract forbids, which is worse than an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.errors import NoBackendInRegion
from gateway.prefixroute import PrefixAffinity


def _outstanding(b: Backend) -> int:
    return b.outstanding


class Backend:
    __slots__ = ("down_until", "outstanding", "region", "url")

    def __init__(self, url: str, region: str | None = None) -> None:
        self.url = url
        self.region = region
        self.outstanding = 0
        self.down_until = 0.0


@dataclass(frozen=True)
class Route:
    """Where a request may go: a model alias, the version it was assigned, the tenant's regions.

    `regions` None means unrestricted (the tenant's `regions` is '*').
    """

    model: str
    version: str
    regions: frozenset[str] | None = None


class BackendPool:
    def __init__(
        self,
        models: dict[str, list[str]],
        *,
        down_s: float,
        clock: Callable[[], float] = time.monotonic,
        versions: dict[tuple[str, str], list[str]] | None = None,
        regions: dict[str, str] | None = None,
        affinity: PrefixAffinity | None = None,
    ) -> None:
        """`versions` maps (model, version) to its URLs; `regions` maps a URL to its region;
        `affinity` (gateway/prefixroute.py) turns least-loaded into prefix-affinity with a load bound."""
        self._down_s = down_s
        self.affinity = affinity
        self._clock = clock
        regions = regions or {}
        self.by_model: dict[str, list[Backend]] = {}
        by_url: dict[str, Backend] = {}

        def backend(url: str) -> Backend:
            return by_url.setdefault(url, Backend(url, regions.get(url)))

        for model, urls in models.items():
            self.by_model[model] = [backend(u) for u in urls]
        self.by_version: dict[tuple[str, str], list[Backend]] = {
            key: [backend(u) for u in urls] for key, urls in (versions or {}).items()
        }
        self.all = list(by_url.values())

    def pick(self, model: str, exclude: Collection[Backend] = (), body: bytes = b"") -> Backend:
        """Any backend of the model (no version, no region): least loaded, down ones skipped."""
        return self._least_loaded(self.by_model[model], exclude, body)

    def pick_route(self, route: Route, exclude: Collection[Backend] = (), body: bytes = b"") -> Backend:
        """A backend of the route's version inside its regions; raises NoBackendInRegion."""
        group = self.by_version.get((route.model, route.version)) or self.by_model[route.model]
        if route.regions is None:
            return self._least_loaded(group, exclude, body)
        allowed = [b for b in group if b.region in route.regions]
        where = ", ".join(sorted(route.regions))
        if not allowed:
            raise NoBackendInRegion(
                f"No backend of model {route.model!r} (version {route.version!r}) is in this tenant's "
                f"regions ({where}); the request was not sent to another region."
            )
        now = self._clock()
        up = [b for b in allowed if b not in exclude and b.down_until <= now]
        if not up:
            raise NoBackendInRegion(
                f"No healthy backend of model {route.model!r} (version {route.version!r}) in this "
                f"tenant's regions ({where}); the request was not sent to another region."
            )
        return self._choose(up, body)

    def candidates(self, route: Route) -> Collection[Backend]:
        """The backends a route may use (for deciding whether a retry elsewhere is possible)."""
        group = self.by_version.get((route.model, route.version)) or self.by_model[route.model]
        if route.regions is None:
            return group
        return [b for b in group if b.region in route.regions]

    def _least_loaded(self, group: list[Backend], exclude: Collection[Backend], body: bytes = b"") -> Backend:
        now = self._clock()
        candidates = [b for b in group if b not in exclude] or group
        up = [b for b in candidates if b.down_until <= now] or candidates
        if self.affinity is None:
            return up[0] if len(up) == 1 else min(up, key=_outstanding)
        return self._choose(up, body)

    def _choose(self, up: list[Backend], body: bytes) -> Backend:
        if self.affinity is not None and body and len(up) > 1:
            return self.affinity.choose(up, self.affinity.blocks(body))
        return min(up, key=_outstanding)

    def mark_down(self, backend: Backend) -> None:
        backend.down_until = self._clock() + self._down_s


def pool_from_config(
    config: GatewayConfig, *, down_s: float, affinity: PrefixAffinity | None = None
) -> BackendPool:
    """The pool for a config: every model's backends, grouped by version, with their regions."""
    return BackendPool(
        {name: m.backends for name, m in config.models.items()},
        down_s=down_s,
        versions={
            (name, v): spec.backends
            for name, m in config.models.items()
            for v, spec in m.version_table().items()
        },
        regions={url: region for region, urls in config.regions.items() for url in urls},
        affinity=affinity,
    )
