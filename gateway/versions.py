"""Model alias -> version: sticky, weighted assignment, with weights that change at run time.

A tenant calls an alias (`mixtral-8x7b`); the config lists the versions behind it, each with its
backends and a weight (90/10). Which version serves a request is decided in this order:

1. the tenant's pin (`tenants.<t>.versions.<alias>` in the YAML), which binds: an operator pins a
   tenant that validated a version, so the tenant's own header cannot move it off (403);
2. the `x-servelab-version` header, for testing a version on purpose (an unknown one is a 400);
3. a hash of a sticky id, mapped onto the weights.

The sticky id is the client's `x-conversation-id` header, else the request's `user` field, else
the API key's id. The hash is a pure function of (alias, id), so every replica gives the same
conversation the same version without sharing any state, and a version's share of traffic is
its weight (the hash is uniform). Versions keep their config order on the unit interval, so
when a rollout moves weight from the baseline to a canary only the conversations on the moving
edge change version; nobody flips back and forth while a ramp goes 5% -> 25% -> 50%.

Weights set at run time (by a rollout or `PUT /admin/v1/models/{m}/weights`) are stored in the
Redis hash `cfg:version-weights` (one JSON object per alias) and announced on `servelab:versions`;
every replica re-reads that alias, and one that was not listening re-reads all of them when it
resubscribes (broadcast.py), exactly like runtime plan changes (liveplans.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from gateway.config import GatewayConfig, Model
from gateway.routing import Route

log = logging.getLogger("gateway.versions")

VERSION_HEADER = b"x-servelab-version"
STICKY_HEADER = b"x-conversation-id"
WEIGHTS_KEY = "cfg:version-weights"
VERSIONS_CHANNEL = "servelab:versions"

Weights = tuple[tuple[str, float], ...]


class UnknownVersion(ValueError):
    """A version name that the alias does not have."""


class PinnedVersion(ValueError):
    """The header asks for another version than the one the tenant is pinned to."""


def bucket(model: str, sticky_id: str) -> float:
    """A uniform point in [0, 1) for this conversation on this alias, the same on every replica."""
    digest = hashlib.blake2b(f"{model}\x00{sticky_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose(weights: Weights, point: float) -> str:
    """The version whose slice of [0, 1), in config order and sized by weight, holds `point`."""
    total = sum(w for _, w in weights)
    x = point * total
    acc = 0.0
    last = ""
    for name, w in weights:
        if w <= 0:
            continue
        acc += w
        last = name
        if x < acc:
            return name
    return last  # point*total == total only by rounding


def sticky_id(conversation: str | None, user: object, key_id: str) -> str:
    """The id a conversation is pinned by: client header, then `user` field, then the key."""
    if conversation:
        return "c:" + conversation
    if isinstance(user, str) and user:
        return "u:" + user
    return "k:" + key_id


@dataclass(frozen=True)
class Assignment:
    """The version that serves one request, why, and the model config as that version sees it."""

    version: str
    how: Literal["header", "pinned", "weighted"]
    model: Model


class LiveVersions:
    """Per-alias weights (YAML baseline + Redis overrides) and the assignment of one request."""

    def __init__(self, config: GatewayConfig, redis: Redis) -> None:
        self._config = config
        self._redis = redis
        self._base: dict[str, Weights] = {}
        self._effective: dict[tuple[str, str], Model] = {}
        for name, m in config.models.items():
            table = m.version_table()
            self._base[name] = tuple((v, spec.weight) for v, spec in table.items())
            for v, spec in table.items():
                # The Model that the rest of the request path uses: this version's backends and
                # upstream id, the alias's prices and queue settings. Built once, not per request.
                self._effective[(name, v)] = m.model_copy(
                    update={
                        "backends": list(spec.backends),
                        "upstream_model": spec.upstream_model or m.upstream_model,
                    }
                )
        self.weights: dict[str, Weights] = dict(self._base)
        # Per tenant, the regions its requests may be served in (None: anywhere), built once.
        self.regions: dict[str, frozenset[str] | None] = {
            t: None if spec.regions == "*" else frozenset(spec.regions) for t, spec in config.tenants.items()
        }
        self.overridden: set[str] = set()
        # An alias with one version has nothing to decide (stored weights cannot name another):
        # its assignment is built once, so the common case skips the sticky hash per request.
        self._only: dict[str, Assignment] = {
            name: Assignment(table[0][0], "weighted", self._effective[(name, table[0][0])])
            for name, table in self._base.items()
            if len(table) == 1
        }
        self._routes: dict[tuple[str, str, str], Route] = {}

    def only(self, tenant: str, model: str) -> Assignment | None:
        """The assignment of an alias with one version for a tenant not pinned on it, else None."""
        a = self._only.get(model)
        if a is None or model in self._config.tenants[tenant].versions:
            return None
        return a

    def route(self, tenant: str, model: str, version: str) -> Route:
        """Where the request may go (version, tenant's regions); one shared object per triple."""
        key = (tenant, model, version)
        r = self._routes.get(key)
        if r is None:
            r = self._routes[key] = Route(model, version, self.regions[tenant])
        return r

    def versions(self, model: str) -> list[str]:
        return [v for v, _ in self._base[model]]

    def version_backends(self) -> dict[tuple[str, str], list[str]]:
        """(alias, version) -> URLs, for the backend pool."""
        return {key: list(m.backends) for key, m in self._effective.items()}

    def assign(self, tenant: str, model: str, sid: str, requested: str | None = None) -> Assignment:
        """Decide the version of one request (pin, then header, then sticky weighted)."""
        pinned = self._config.tenants[tenant].versions.get(model)
        if requested:
            if (model, requested) not in self._effective:
                known = ", ".join(self.versions(model))
                raise UnknownVersion(f"Model {model!r} has no version {requested!r} (versions: {known}).")
            if pinned is not None and requested != pinned:
                raise PinnedVersion(f"Tenant {tenant!r} is pinned to version {pinned!r} of {model!r}.")
            return Assignment(requested, "header", self._effective[(model, requested)])
        if pinned is not None:
            return Assignment(pinned, "pinned", self._effective[(model, pinned)])
        version = choose(self.weights[model], bucket(model, sid))
        return Assignment(version, "weighted", self._effective[(model, version)])

    def check(self, model: str, weights: Mapping[str, float]) -> Weights:
        """Validate new weights for `model` (every version named, none negative, sum above 0)."""
        if model not in self._base:
            raise UnknownVersion(f"No model {model!r} in the config.")
        known = self.versions(model)
        unknown = sorted(set(weights) - set(known))
        if unknown:
            raise UnknownVersion(
                f"Model {model!r} has no version {unknown[0]!r} (versions: {', '.join(known)})."
            )
        if any(w < 0 for w in weights.values()):
            raise ValueError("weights must not be negative")
        # Versions not named keep weight 0: a rollout names both sides.
        out = tuple((v, float(weights.get(v, 0.0))) for v in known)
        if sum(w for _, w in out) <= 0:
            raise ValueError("at least one weight must be above 0")
        return out

    async def set_weights(self, model: str, weights: Mapping[str, float]) -> Weights:
        """Store and announce new weights; every replica applies them within a pub/sub hop."""
        table = self.check(model, weights)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(WEIGHTS_KEY, model, json.dumps(dict(table)))
        pipe.publish(VERSIONS_CHANNEL, model)
        await pipe.execute()
        self._apply(model, dict(table))
        log.info("Version weights changed at run time: model=%s weights=%s", model, dict(table))
        return table

    async def clear(self, model: str) -> Weights:
        """Back to the YAML weights, on every replica."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(WEIGHTS_KEY, model)
        pipe.publish(VERSIONS_CHANNEL, model)
        await pipe.execute()
        self._apply(model, None)
        return self.weights[model]

    def _apply(self, model: str, stored: Mapping[str, float] | None) -> None:
        if model not in self._base:
            return
        table = tuple((v, float((stored or {}).get(v, 0.0))) for v in self.versions(model))
        if stored and sum(w for _, w in table) <= 0:
            # Weights for versions this replica's config does not have (replicas mid config
            # change): keep serving with the YAML weights rather than route nowhere.
            log.warning(
                "Ignoring stored weights naming no version of ours: model=%s stored=%s", model, stored
            )
            stored = None
        if stored:
            self.weights[model] = table
            self.overridden.add(model)
        else:
            self.weights[model] = self._base[model]
            self.overridden.discard(model)

    async def on_changed(self, model: str) -> None:
        raw = await self._redis.hget(WEIGHTS_KEY, model)
        self._apply(model, json.loads(raw) if raw else None)

    async def resync(self) -> None:
        raw: dict[bytes, bytes] = await self._redis.hgetall(WEIGHTS_KEY)  # type: ignore[assignment]
        stored = {k.decode(): json.loads(v) for k, v in raw.items()}
        for model in self._base:
            self._apply(model, stored.get(model))


def split(weights: Weights, ids: Sequence[str], model: str) -> dict[str, int]:
    """How many of `ids` each version gets (used by tests and the docs' split table)."""
    counts = {v: 0 for v, _ in weights}
    for i in ids:
        counts[choose(weights, bucket(model, i))] += 1
    return counts
