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

Where Redis is comes from one URL (`RedisTarget`), the same one app.py builds the redis-py
clients from, so the two clients cannot disagree:

    redis://[[user]:password@]host[:port][/db]
    rediss://...?ssl_ca_certs=ca.pem[&ssl_certfile=..&ssl_keyfile=..&ssl_cert_reqs=required
                 &ssl_check_hostname=true]                         TLS, redis-py's parameter names
    redis+sentinel://[[user]:password@]h1[:26379],h2,h3/<master>[/db][?sentinel_password=..]
    rediss+sentinel://...                                           TLS to Sentinels and master

AUTH sends the ACL user when there is one (`AUTH user password`), else `AUTH password`. With
Sentinel, each (re)connect asks the Sentinels in turn for the master's address
(`SENTINEL get-master-addr-by-name`), connects, and checks `ROLE`: a node that still says
replica is refused, so the caller gets a ConnectionError and the next call asks again. A
`-READONLY` reply (the node was demoted under an open connection) fails the connection the
same way, and `-LOADING` (a restarted Redis reading its AOF) is redis-py's BusyLoadingError,
a ConnectionError too. A failover therefore looks to the gateway like a short Redis outage,
which it already survives; nothing is retried here, so nothing can be sent twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis
from redis.exceptions import AuthenticationError, BusyLoadingError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

_SCHEMES = {"redis": (False, False), "rediss": (True, False),
            "redis+sentinel": (False, True), "rediss+sentinel": (True, True)}  # fmt: skip
_TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_SENTINEL_PARAMS = ("sentinel_username", "sentinel_password")
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _host_port(item: str, default_port: int, url: str) -> tuple[str, int]:
    host, port = item, str(default_port)
    if item.startswith("["):  # [ipv6]:port
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else port
    elif item.count(":") == 1:
        host, port = item.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad host:port {item!r} in Redis URL {_redact(url)!r}")
    return host, int(port)


def _redact(url: str) -> str:
    scheme, _, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{hosts}"


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to authenticate, parsed once from the URL; see the module docstring."""

    url: str
    tls: bool
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls_params: tuple[tuple[str, str], ...] = ()
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """Raise ValueError naming what is wrong (never echoing the password)."""
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ValueError(
                f"unsupported Redis URL scheme {parts.scheme!r}: use one of {', '.join(sorted(_SCHEMES))}"
            )
        tls, sentinel = _SCHEMES[parts.scheme]
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        user, has_pw, password = userinfo.partition(":")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        allowed = (_TLS_PARAMS if tls else ()) + (_SENTINEL_PARAMS if sentinel else ())
        unknown = sorted(set(query) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(unknown)} in Redis URL {_redact(url)!r}; "
                f"this scheme takes: {', '.join(allowed) or 'none'}"
            )
        if query.get("ssl_cert_reqs", "required") not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
        path = [p for p in parts.path.split("/") if p]
        master_name = None
        if sentinel:
            if not path:
                raise ValueError(
                    f"Redis URL {_redact(url)!r} names no master: use {parts.scheme}://host:26379/<master>[/db]"
                )
            master_name = unquote(path.pop(0))
        if len(path) > 1 or (path and not path[0].isdigit()):
            raise ValueError(f"bad database number in Redis URL {_redact(url)!r}")
        hosts = [h for h in hostlist.split(",") if h]
        if not hosts:
            hosts = ["127.0.0.1"]
        if len(hosts) > 1 and not sentinel:
            raise ValueError(f"several hosts in Redis URL {_redact(url)!r}: only a Sentinel URL takes a list")
        addrs = tuple(_host_port(h, 26379 if sentinel else 6379, url) for h in hosts)
        return cls(
            url=url,
            tls=tls,
            host=addrs[0][0],
            port=addrs[0][1],
            db=int(path[0]) if path else 0,
            username=unquote(user) if user else None,
            password=unquote(password) if has_pw else None,
            tls_params=tuple((k, v) for k, v in query.items() if k in _TLS_PARAMS),
            sentinels=addrs if sentinel else (),
            master_name=master_name,
            sentinel_username=query.get("sentinel_username"),
            sentinel_password=query.get("sentinel_password"),
        )

    @property
    def redacted(self) -> str:
        """The URL with the password replaced, for logs and errors."""
        return _redact(self.url)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context for rediss:// (verifies the server unless ssl_cert_reqs=none)."""
        if not self.tls:
            return None
        p = dict(self.tls_params)
        ctx = ssl.create_default_context(cafile=p.get("ssl_ca_certs"))
        if p.get("ssl_certfile"):
            ctx.load_cert_chain(p["ssl_certfile"], p.get("ssl_keyfile"))
        reqs = _CERT_REQS[p.get("ssl_cert_reqs", "required")]
        ctx.check_hostname = reqs != ssl.CERT_NONE and p.get("ssl_check_hostname", "true").lower() in (
            "1", "true", "yes", "on",
        )  # fmt: skip
        ctx.verify_mode = reqs
        return ctx

    def redis_py_kwargs(self) -> dict[str, Any]:
        """Connection keywords for redis-py (Redis(...) or Sentinel.master_for) meaning the same."""
        kw: dict[str, Any] = {"db": self.db, "username": self.username, "password": self.password}
        if self.tls:
            kw["ssl"] = True
            for k, v in self.tls_params:
                kw[k] = v.lower() in ("1", "true", "yes", "on") if k == "ssl_check_hostname" else v
        return kw


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
            if isinstance(reply, ResponseError):
                msg = str(reply)
                if msg.startswith("READONLY"):
                    # Demoted to a replica under this connection: useless until we ask again.
                    err = RedisConnectionError(f"Redis answered {msg!r}: reconnecting to the master")
                    if not fut.done():
                        fut.set_exception(err)
                    self.fail(err)
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


class ScriptConnection:
    """EVALSHA over one pipelined connection; reconnects on demand (through Sentinel if asked)."""

    def __init__(
        self, target: RedisTarget | str, *, connect_timeout_s: float, command_timeout_s: float
    ) -> None:
        self._target = target if isinstance(target, RedisTarget) else RedisTarget.parse(target)
        self._ssl = self._target.ssl_context()
        self._connect_timeout = connect_timeout_s
        self._timeout = command_timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self.address: tuple[str, int] | None = None  # the node the last connection went to

    def _lost(self, proto: _Protocol) -> None:
        if self._proto is proto:
            self._proto = None

    async def _open(self, host: str, port: int, auth: list[Any] | None) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Protocol(self._lost),
                    host,
                    port,
                    ssl=self._ssl,
                    server_hostname=host if self._ssl else None,
                ),
                self._connect_timeout,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            raise RedisConnectionError(f"cannot connect to Redis at {host}:{port}: {exc}") from None
        if auth:
            try:
                await self._send(proto, auth)
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
                reply = await self._send(proto, ["SENTINEL", "get-master-addr-by-name", t.master_name])
            except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                errors.append(f"sentinel {host}:{port}: {exc}")
                continue
            finally:
                proto.fail(RedisConnectionError("sentinel query done"))
            if reply is None:
                errors.append(f"sentinel {host}:{port} knows no master {t.master_name!r}")
                continue
            return reply[0].decode(), int(reply[1])
        raise RedisConnectionError(f"no Sentinel named a master for {t.master_name!r}: {'; '.join(errors)}")

    async def _connect(self) -> _Protocol:
        t = self._target
        host, port = await self._master_address() if t.sentinels else (t.host, t.port)
        auth = None
        if t.password is not None:
            auth = ["AUTH", t.username, t.password] if t.username else ["AUTH", t.password]
        proto = await self._open(host, port, auth)
        try:
            if t.db:
                await self._send(proto, ["SELECT", t.db])
            if t.sentinels:
                role = await self._send(proto, ["ROLE"])
                if role[0] != b"master":
                    raise RedisConnectionError(
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
