"""A lean, pipelined Redis connection for the two hot-path scripts (admit and settle).

Measured on the 2-core dev VM, redis-py's asyncio client spent about 0.2 ms of CPU per command
(pool checkout, retry wrapper, timeout context, per-call encoder), more than all of the rest of
the gateway's own logic. The hot path only ever runs EVALSHA, so this module does just that:
one TCP connection, RESP written straight to the transport, replies parsed by hiredis and
matched to callers in FIFO order (Redis answers a connection's commands in order), and the
writes of all requests that are ready in one event-loop turn coalesced into one syscall. Each
request still makes its own two round trips; they just share packets under load.

Errors are redis-py's exception classes, so callers handle one family: a lost or timed-out
connection fails every pending call with ConnectionError/TimeoutError and the next call
reconnects (that is how the gateway recovers from a Redis restart without being restarted);
NOSCRIPT (script cache wiped by a restart) is answered by loading the script and retrying once.
Everything else (admin, usage, key lookups, pub/sub) keeps using redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def pack(args: tuple[Any, ...] | list[Any]) -> bytes:
    """One command in RESP (an array of bulk strings), packed by hiredis in C."""
    packed: bytes = hiredis.pack_command(tuple(args))
    return packed


class _Protocol(asyncio.Protocol):
    def __init__(self, on_lost: Any) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.lost = False
        self.answered = 0
        self.watchdog: asyncio.TimerHandle | None = None
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            fut = pending.popleft()
            self.answered += 1
            if fut.done():
                continue
            if isinstance(reply, ResponseError):
                msg = str(reply)
                fut.set_exception(NoScriptError(msg) if msg.startswith("NOSCRIPT") else reply)
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Redis connection lost: {exc or 'closed by server'}"))

    def fail(self, exc: Exception) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if not self.lost:
            self.lost = True
            self._on_lost(self)
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.lost:
            self.transport.write(b"".join(self.out) if len(self.out) > 1 else self.out[0])
        self.out.clear()


class ScriptConnection:
    """EVALSHA over one pipelined connection; reconnects on demand."""

    def __init__(self, url: str, *, connect_timeout_s: float, command_timeout_s: float) -> None:
        u = urlparse(url)
        if u.scheme not in ("redis", ""):
            raise ValueError(f"unsupported Redis URL scheme {u.scheme!r} (use redis://)")
        self._host = u.hostname or "127.0.0.1"
        self._port = u.port or 6379
        self._db = int(u.path.lstrip("/") or 0)
        self._user = unquote(u.username) if u.username else None
        self._password = unquote(u.password) if u.password else None
        self._connect_timeout = connect_timeout_s
        self._timeout = command_timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    def _lost(self, proto: _Protocol) -> None:
        if self._proto is proto:
            self._proto = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self._lost), self._host, self._port),
                self._connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(
                f"cannot connect to Redis at {self._host}:{self._port}: {exc}"
            ) from None
        setup: list[list[Any]] = []
        if self._password is not None:
            setup.append(["AUTH", self._user, self._password] if self._user else ["AUTH", self._password])
        if self._db:
            setup.append(["SELECT", self._db])
        for cmd in setup:
            await self._send(proto, cmd)
        return proto

    async def _get(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.lost:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            try:
                self._proto = await self._connecting
            finally:
                self._connecting = None
            return self._proto
        return await asyncio.shield(self._connecting)

    async def _send(self, proto: _Protocol, args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        proto.pending.append(fut)
        proto.out.append(pack(args))
        if not proto.flush_scheduled:
            proto.flush_scheduled = True
            loop.call_soon(proto.flush)
        if proto.watchdog is None:
            proto.watchdog = loop.call_later(self._timeout, self._check, proto, proto.answered)
        return await fut

    def _check(self, proto: _Protocol, answered_then: int) -> None:
        """One timer per connection instead of one per call: if replies are pending and none
        arrived for a whole timeout, the connection is dead or Redis is stuck. Replies are
        matched by order, so after a lost reply the connection is unusable: fail it all."""
        proto.watchdog = None
        if proto.lost or not proto.pending:
            return
        if proto.answered == answered_then:
            proto.fail(RedisTimeoutError(f"Redis did not answer within {self._timeout}s"))
            return
        loop = asyncio.get_running_loop()
        proto.watchdog = loop.call_later(self._timeout, self._check, proto, proto.answered)

    async def execute(self, *args: Any) -> Any:
        return await self._send(await self._get(), list(args))

    async def close(self) -> None:
        if self._proto is not None:
            self._proto.fail(RedisConnectionError("connection closed by the gateway"))
            self._proto = None


class Script:
    """A Lua script run by SHA; loaded on first NOSCRIPT (e.g. after a Redis restart)."""

    def __init__(self, conn: ScriptConnection, source: str) -> None:
        self.conn = conn
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def load(self) -> None:
        await self.conn.execute("SCRIPT", "LOAD", self.source)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.conn.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load()
            return await self.conn.execute("EVALSHA", self.sha, len(keys), *keys, *args)
