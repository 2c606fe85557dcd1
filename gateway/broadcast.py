"""Fan-out between gateway replicas over Redis pub/sub: key revocations and runtime plan changes.

One subscriber per process listens on a few channels and hands each message to its handler.
Pub/sub is fire-and-forget, so every handler also has a `resync` that runs on each (re)connect
and rebuilds its state from Redis itself: whatever was published while a replica was not
listening is recovered then. While Redis is away nothing can be revoked or changed (those
writes go through Redis too), so handlers keep their state until they resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("gateway.broadcast")


@dataclass(frozen=True)
class Channel:
    name: str
    on_message: Callable[[str], Awaitable[None]]
    resync: Callable[[], Awaitable[None]]


async def follow(subscriber: Redis, channels: list[Channel], ready: asyncio.Event | None = None) -> None:
    """Run forever: subscribe, resync, dispatch; on a lost connection back off and start over.

    `subscriber` should be a client without a command socket timeout: a subscription reads
    for as long as nothing is published.
    """
    by_name = {c.name: c for c in channels}
    backoff = 0.05
    failing = False
    while True:
        pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*by_name)
            for c in channels:
                await c.resync()
            if ready is not None:
                ready.set()
            if failing:
                log.warning("Pub/sub subscriber is back; keys and plans resynced from Redis.")
            failing = False
            backoff = 0.05
            while True:
                msg = await pubsub.get_message(timeout=None)
                if msg is not None and msg.get("type") == "message":
                    await by_name[msg["channel"].decode()].on_message(msg["data"].decode())
        except (RedisError, OSError) as exc:
            if not failing:  # one line per outage, not one per retry
                log.warning("Pub/sub subscriber lost Redis, will resubscribe and resync: error=%s", exc)
            failing = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
