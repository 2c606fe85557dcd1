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

The connection goes where `RedisTarget` (redistarget.py) says: TLS for rediss://, and the
Sentinels' current master for redis+sentinel://.

AUTH sends the ACL user when there is one (`AUTH user password`), else `AUTH password`. With
Sentinel, each (re)connect asks the Sentinels in turn for the master's address
(`SENTINEL get-master-addr-by-name`), connects, and checks `ROLE`: a node that still says
replica is refused, so the caller gets a ConnectionError and the next call asks again. A
`-READONLY` reply (the node was demoted under an open connection) fails the connection the
same way, and `-LOADING` (a restarted Redis reading its AOF) is redis-py's BusyLoadingError,
a ConnectionError too. A failover therefore looks to the gateway like a short Redis outage,
which it already survives; nothing is retried here, so nothing can be sent twice.

Redis replication is asynchronous, so a write the old master acknowledged just before a
failover can be missing on the new one. With `wait_replicas` > 0, a script marked durable
(settle) is followed by `WAIT n ms` in the same write, on a second connection so that admissions
never queue behind a WAIT. A settle that fewer than n replicas acknowledged raises NotReplicated
(a ConnectionError): the caller spools it and replays it later, and settle.lua's per-request
marker keeps the replay from counting twice.

Every call ends, with a reply or an error, within a bound set by the settings (c =
`connect_timeout_s`, t = `command_timeout_s`, S = number of Sentinels, 0 without Sentinel):

    command  <= 2t                    from when it is queued: the connection's watchdog fails
                                      it once a whole t passed with no reply (see `_check`)
    connect  <= S * (c + 2 * 2t)      the Sentinels asked in turn (TCP/TLS, AUTH, the query),
                + c + 3 * 2t          then the master (TCP/TLS, AUTH, SELECT, ROLE); a command
                                      that is not needed (no password, db 0, no Sentinel) drops out
    each command of a Script call     <= connect + 2t: at most one reconnect, then the reply
    (the EVALSHA; after NOSCRIPT also the SCRIPT LOAD and the EVALSHA again)

A command is only ever queued on a live connection: one that was lost before the command was
written (say, a Sentinel switch dropped it while the caller waited for the connect) raises
CommandNotRun at once instead of waiting for a reply that cannot come. That exception (and
AUTH, LOADING) also tells the caller that the command certainly did not run (`may_have_run`):
after any other error a script that writes (admit) may have run with only its reply lost.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.exceptions import AuthenticationError, BusyLoadingError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redistarget import RedisTarget


def pack(args: tuple[Any, ...] | list[Any]) -> bytes:
    """One command in RESP (an array of bulk strings), packed by hiredis in C."""
    packed: bytes = hiredis.pack_command(tuple(args))
    return packed


class _Protocol(asyncio.Protocol):
    def __init__(self, on_lost: Any) -> None:
        # Kept: `asyncio.get_running_loop()` costs a getpid() system call on Python 3.11.
        self.loop = asyncio.get_running_loop()
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
            if isinstance(reply, ResponseError):
                msg = str(reply)
                if msg.startswith("READONLY"):
                    # Demoted to a replica under this connection: useless until we ask again.
                    # The node refused this command (it did not run); the ones after it may
                    # have been answered differently, so they get a plain ConnectionError.
                    err = f"Redis answered {msg!r}: reconnecting to the master"
                    if not fut.done():
                        fut.set_exception(CommandNotRun(err))
                    self.fail(RedisConnectionError(err))
                    return
                if fut.done():
                    continue
                if msg.startswith("NOSCRIPT"):
                    fut.set_exception(NoScriptError(msg))
                elif msg.startswith("LOADING"):
                    fut.set_exception(BusyLoadingError(msg))
                else:
                    fut.set_exception(reply)
            elif not fut.done():
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


class NotReplicated(RedisConnectionError):
    """The master ran the script but fewer replicas than asked acknowledged it in time."""


class CommandNotRun(RedisConnectionError):
    """The command certainly did not run: no usable connection, or Redis refused it (READONLY)."""


def may_have_run(exc: BaseException) -> bool:
    """False when a failed call's command certainly did not run in Redis; True when it may have
    (the connection died or timed out after the command was written: only the reply is lost)."""
    return not isinstance(exc, (CommandNotRun, AuthenticationError, BusyLoadingError))


def _retrieved(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # read, so that asyncio does not log it as never retrieved


class ScriptConnection:
    """EVALSHA over one pipelined connection; reconnects on demand (through Sentinel if asked)."""

    def __init__(
        self,
        target: RedisTarget | str,
        *,
        connect_timeout_s: float,
        command_timeout_s: float,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        self._target = target if isinstance(target, RedisTarget) else RedisTarget.parse(target)
        self._ssl = self._target.ssl_context()
        self._connect_timeout = connect_timeout_s
        self._timeout = command_timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self.address: tuple[str, int] | None = None  # the node the last connection went to
        self.wait_replicas = wait_replicas
        self._wait_ms = wait_timeout_ms
        self._twin: ScriptConnection | None = None  # durable scripts and their WAIT go here

    def _lost(self, proto: _Protocol) -> None:
        if self._proto is proto:
            self._proto = None

    async def _open(self, host: str, port: int, auth: list[Any] | None) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the connection completes (see recovery.next_tick).
            async with asyncio.timeout(self._connect_timeout):
                _, proto = await loop.create_connection(
                    lambda: _Protocol(self._lost),
                    host,
                    port,
                    ssl=self._ssl,
                    server_hostname=host if self._ssl else None,
                )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            raise CommandNotRun(f"cannot connect to Redis at {host}:{port}: {exc}") from None
        if auth:
            try:
                await self._enqueue(proto, auth)
            except ResponseError as exc:
                proto.fail(RedisConnectionError("AUTH failed"))
                raise AuthenticationError(f"Redis at {host}:{port} refused AUTH: {exc}") from None
            except BaseException:
                proto.fail(RedisConnectionError("AUTH failed"))
                raise
        return proto

    async def _master_address(self) -> tuple[str, int]:
        """Ask each Sentinel in turn; the first that names the master wins."""
        t = self._target
        auth = None
        if t.sentinel_password is not None:
            auth = ["AUTH", t.sentinel_username, t.sentinel_password] if t.sentinel_username else [
                "AUTH", t.sentinel_password
            ]  # fmt: skip
        errors: list[str] = []
        for host, port in t.sentinels:
            try:
                proto = await self._open(host, port, auth)
            except RedisConnectionError as exc:
                errors.append(str(exc))
                continue
            try:
                reply = await self._enqueue(proto, ["SENTINEL", "get-master-addr-by-name", t.master_name])
            except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                errors.append(f"sentinel {host}:{port}: {exc}")
                continue
            finally:
                proto.fail(RedisConnectionError("sentinel query done"))
            if reply is None:
                errors.append(f"sentinel {host}:{port} knows no master {t.master_name!r}")
                continue
            return reply[0].decode(), int(reply[1])
        raise CommandNotRun(f"no Sentinel named a master for {t.master_name!r}: {'; '.join(errors)}")

    async def _connect(self) -> _Protocol:
        """A new connection; whatever fails here, the caller's command was never written."""
        try:
            return await self._connect_once()
        except (CommandNotRun, AuthenticationError):
            raise
        except RedisError as exc:  # a setup command timed out, or the connection died under it
            raise CommandNotRun(f"Redis connection setup failed: {exc}") from exc

    async def _connect_once(self) -> _Protocol:
        t = self._target
        host, port = await self._master_address() if t.sentinels else (t.host, t.port)
        auth = None
        if t.password is not None:
            auth = ["AUTH", t.username, t.password] if t.username else ["AUTH", t.password]
        proto = await self._open(host, port, auth)
        try:
            if t.db:
                await self._enqueue(proto, ["SELECT", t.db])
            if t.sentinels:
                role = await self._enqueue(proto, ["ROLE"])
                if role[0] != b"master":
                    raise CommandNotRun(
                        f"{host}:{port} is a {role[0].decode()}, not the master (failover in progress)"
                    )
        except BaseException:
            proto.fail(RedisConnectionError("connection setup failed"))
            raise
        self.address = (host, port)
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

    def _enqueue(self, proto: _Protocol, args: list[Any]) -> asyncio.Future[Any]:
        """Queue one command on `proto` (written at the end of this loop turn); await the result."""
        return self._enqueue_packed(proto, pack(args))

    def _enqueue_packed(self, proto: _Protocol, *chunks: bytes) -> asyncio.Future[Any]:
        """Queue one command already in RESP (its chunks are written in order, back to back).

        A lost connection never has a watchdog (`fail` cancels it and it is never re-armed on
        one), so checking for loss only where the watchdog is armed costs the busy path nothing.
        A command queued on a lost connection would wait forever: nothing reads or times it out.
        """
        loop = proto.loop
        if proto.watchdog is None:
            if proto.lost:
                raise CommandNotRun("Redis connection was lost before the command was written")
            proto.watchdog = loop.call_later(self._timeout, self._check, proto, proto.answered)
        fut: asyncio.Future[Any] = loop.create_future()
        proto.pending.append(fut)
        proto.out.extend(chunks)
        if not proto.flush_scheduled:
            proto.flush_scheduled = True
            loop.call_soon(proto.flush)
        return fut

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
        return await self._enqueue(await self._get(), list(args))

    def send(self, *chunks: bytes) -> Awaitable[Any]:
        """Run one command given in RESP; the hot path's call.

        With a live connection (the usual case) the command is queued at once and the reply's
        future comes back, so a script call costs its caller no coroutine of ours; otherwise a
        coroutine connects first.
        """
        proto = self._proto
        if proto is not None and not proto.lost:
            return self._enqueue_packed(proto, *chunks)
        return self._send_connected(chunks)

    async def _send_connected(self, chunks: tuple[bytes, ...]) -> Any:
        return await self._enqueue_packed(await self._get(), *chunks)

    async def send_replicated(self, *chunks: bytes) -> Any:
        """`send`, then `WAIT wait_replicas` in the same write, on the twin connection.

        Returns the command's reply; raises NotReplicated when too few replicas acknowledged.
        """
        if self.wait_replicas <= 0:
            return await self.send(*chunks)
        if self._twin is None:
            self._twin = ScriptConnection(
                self._target, connect_timeout_s=self._connect_timeout, command_timeout_s=self._timeout
            )
        twin = self._twin
        proto = await twin._get()
        # Both queued now, in this order: WAIT counts the replicas that have every write made
        # before it on this connection, so it must follow the command it is meant to cover.
        reply_fut = twin._enqueue_packed(proto, *chunks)
        acked_fut = twin._enqueue(proto, ["WAIT", self.wait_replicas, self._wait_ms])
        try:
            reply = await reply_fut  # raises the command's own error first (e.g. NOSCRIPT)
        except BaseException:
            acked_fut.add_done_callback(_retrieved)
            raise
        acked = await acked_fut
        if acked < self.wait_replicas:
            raise NotReplicated(
                f"Redis ran the command but {acked} of {self.wait_replicas} replica(s) acknowledged it "
                f"within {self._wait_ms} ms"
            )
        return reply

    async def execute_replicated(self, *args: Any) -> Any:
        """Run one command and `WAIT wait_replicas` in the same write, on the twin connection.

        Returns the command's reply; raises NotReplicated when too few replicas acknowledged.
        """
        return await self.send_replicated(pack(args))

    def reset(self, reason: str = "reset") -> None:
        """Drop the connections now (pending calls fail with ConnectionError); the next call reconnects."""
        for conn in (self, self._twin):
            if conn is not None and conn._proto is not None:
                conn._proto.fail(RedisConnectionError(f"Redis connection dropped: {reason}"))
                conn._proto = None

    async def close(self) -> None:
        self.reset("closed by the gateway")


@dataclass(frozen=True, slots=True)
class Head:
    """The start of one EVALSHA command in RESP, packed once: the array header, the SHA, the keys
    and the arguments that do not change between calls (a tenant's keys and plan numbers).

    hiredis formats each argument's length with `sprintf`; valgrind counted about 1,600
    instructions per argument, and admit and settle are 21 and 33 arguments with EVALSHA, the SHA
    and the key count (docs/results/gateway-instructions.md). A head cached per tenant leaves
    only the per-request values to pack.
    """

    resp: bytes
    tail: int  # arguments each call appends


class Script:
    """A Lua script run by SHA; loaded on first NOSCRIPT (e.g. after a Redis restart).

    `durable` scripts (settle) wait for the connection's `wait_replicas`, when it has any.
    """

    def __init__(self, conn: ScriptConnection, source: str, *, durable: bool = False) -> None:
        self.conn = conn
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.durable = durable

    async def load(self) -> None:
        await self.conn.execute("SCRIPT", "LOAD", self.source)

    def _send(self, *chunks: bytes) -> Awaitable[Any]:
        conn = self.conn
        if self.durable and conn.wait_replicas > 0:
            return conn.send_replicated(*chunks)
        return conn.send(*chunks)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        packed = pack(("EVALSHA", self.sha, len(keys), *keys, *args))
        try:
            return await self._send(packed)
        except NoScriptError:
            await self.load()
            return await self._send(packed)

    def head(self, keys: list[str], fixed: list[Any], tail: int, *, tail_keys: int = 0) -> Head:
        """The cached start of a call with these keys and leading arguments; `tail` more follow,
        the first `tail_keys` of them keys (then `fixed` must be empty: keys come before args)."""
        if tail_keys and fixed:
            raise ValueError("keys in the tail cannot follow fixed arguments")
        n = 3 + len(keys) + len(fixed) + tail
        body = pack(("EVALSHA", self.sha, len(keys) + tail_keys, *keys, *fixed))
        return Head(b"*%d\r\n" % n + body[len(b"*%d\r\n" % (n - tail)) :], tail)

    async def run(self, head: Head, tail: tuple[Any, ...]) -> Any:
        """Run with `head` (from `head()`) followed by `tail`: exactly `head.tail` arguments."""
        if len(tail) != head.tail:  # a wrong count would desynchronise the RESP stream
            raise ValueError(f"script call needs {head.tail} trailing arguments, got {len(tail)}")
        rest = pack(tail)[len(b"*%d\r\n" % head.tail) :]
        try:
            return await self._send(head.resp, rest)
        except NoScriptError:
            await self.load()
            return await self._send(head.resp, rest)
