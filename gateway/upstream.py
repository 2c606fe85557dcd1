"""A lean HTTP/1.1 client for the hot path: POST a JSON body to a backend, read or stream the answer.

Measured on the dev VM against the fast upstream, one request cost about 300 µs of CPU through
aiohttp's ClientSession and about 50 µs through this module (`docs/gateway.md`): the gateway
sends exactly one kind of request to servers it is configured with, so it needs no cookie jar,
redirects, proxies, compression or URL parsing per call. It keeps a pool of keep-alive
connections per backend, writes each request in one `transport.write`, parses answers with
httptools (the parser uvicorn uses) and hands body chunks over as they arrive.

Timeouts are explicit: `connect_timeout_s` for the TCP connect and `read_timeout_s` for the
longest silence while a response is expected (one timer per request, re-armed, not one per
read). A pooled connection that the backend closed while idle is detected before reuse, and a
request that fails on a reused connection before any byte of the answer arrived is retried once
on a fresh one (the backend cannot have acted on it). `close()` aborts the connection, which is
how a client disconnect reaches the backend.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Literal
from urllib.parse import urlsplit

import httptools

_MAX_BUFFERED = 1 << 20  # pause reading from the backend when the client falls this far behind
_MAX_IDLE = 256  # idle keep-alive connections kept per backend


class UpstreamError(Exception):
    """A backend call failed below HTTP: `kind` says how (connect, timeout, protocol)."""

    def __init__(self, kind: Literal["connect", "timeout", "protocol"], message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Connection(asyncio.Protocol):
    def __init__(self, read_timeout_s: float) -> None:
        # The loop, kept: `asyncio.get_running_loop()` makes a getpid() system call each time on
        # Python 3.11 (it checks for a fork), and a request here needed it two to four times.
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.read_timeout = read_timeout_s
        self.closed = False
        self.error: UpstreamError | None = None
        self._reset()

    def _reset(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.status = 0
        self.keep_alive = True
        self.got_bytes = False
        self.headers_done = False
        self.complete = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.last_rx = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.last_rx = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("protocol", f"invalid HTTP from backend: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and exc is None and self._eof_delimited():
            self.on_message_complete()  # a body without length ends with the connection
            return
        if not self.complete:
            self._fail(UpstreamError("protocol", f"backend closed the connection: {exc or 'EOF'}"))

    # -- httptools callbacks --------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _MAX_BUFFERED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._stop_timer()
        self._wake()

    # -- internals ------------------------------------------------------------------------------
    def _eof_delimited(self) -> bool:
        names = {k.lower() for k, _ in self.headers}
        return "content-length" not in names and "transfer-encoding" not in names

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, err: UpstreamError) -> None:
        if self.error is None:
            self.error = err
        self._stop_timer()
        self._wake()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check_idle(self) -> None:
        self.timer = None
        if self.complete or self.error is not None:
            return
        silent = time.monotonic() - self.last_rx
        if silent >= self.read_timeout:
            self._fail(UpstreamError("timeout", f"backend silent for {silent:.1f}s"))
        else:
            self.timer = self.loop.call_later(self.read_timeout - silent, self._check_idle)

    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        self.waiter = self.loop.create_future()
        await self.waiter
        self.waiter = None
        if self.error is not None:
            raise self.error

    def send(self, data: bytes) -> None:
        self._reset()
        self.last_rx = time.monotonic()
        self.timer = self.loop.call_later(self.read_timeout, self._check_idle)
        assert self.transport is not None
        self.transport.write(data)

    async def wait_headers(self) -> None:
        while not self.headers_done:
            await self._wait()

    def abort(self) -> None:
        self._fail(UpstreamError("protocol", "closed by the gateway"))


class UpstreamResponse:
    """The answer to one request: status and headers now, the body read whole or chunk by chunk."""

    def __init__(self, client: UpstreamClient, key: tuple[str, int], conn: _Connection) -> None:
        self._client = client
        self._key = key
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self._done = False

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.iter_any()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_any(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.chunks:
                data = b"".join(conn.chunks) if len(conn.chunks) > 1 else conn.chunks[0]
                conn.chunks.clear()
                conn.buffered = 0
                if conn.paused and conn.transport is not None:
                    conn.paused = False
                    conn.transport.resume_reading()
                yield data
                continue
            if conn.complete:
                return
            await conn._wait()

    def release(self) -> None:
        """Give the connection back (if the answer was read to the end and may be reused)."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        if conn.complete and conn.keep_alive and conn.error is None and not conn.closed:
            self._client._put(self._key, conn)
        else:
            conn.abort()

    def close(self) -> None:
        """Abort now: the backend sees the connection close (and stops generating)."""
        if not self._done:
            self._done = True
            self._conn.abort()


class UpstreamClient:
    """Keep-alive connections per backend; `post` returns once the response headers are in."""

    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float) -> None:
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._targets: dict[str, tuple[str, int, bytes, ssl.SSLContext | None]] = {}
        self._tls: ssl.SSLContext | None = None

    def _target(self, base_url: str) -> tuple[str, int, bytes, ssl.SSLContext | None]:
        t = self._targets.get(base_url)
        if t is None:
            u = urlsplit(base_url)
            if u.scheme not in ("http", "https"):
                raise UpstreamError("connect", f"unsupported backend URL scheme: {base_url}")
            tls = None
            if u.scheme == "https":
                tls = self._tls = self._tls or ssl.create_default_context()
            host, port = u.hostname or "127.0.0.1", u.port or (443 if tls else 80)
            t = self._targets[base_url] = (host, port, f"{host}:{port}".encode(), tls)
        return t

    def _put(self, key: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < _MAX_IDLE:
            idle.append(conn)
        else:
            conn.abort()

    async def _connect(self, host: str, port: int, tls: ssl.SSLContext | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self._read_timeout), host, port, ssl=tls),
                self._connect_timeout,
            )
        except TimeoutError:
            raise UpstreamError("connect", f"connect to {host}:{port} timed out") from None
        except OSError as exc:
            raise UpstreamError(
                "connect", f"cannot connect to {host}:{port}: {exc.strerror or exc}"
            ) from None
        return conn

    async def post(self, base_url: str, path: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        host, port, host_header, tls = self._target(base_url)
        key = (host, port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = (
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + host_header
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n"
            + extra.encode("latin-1")
            + b"\r\n"
        )
        idle = self._idle.get(key)
        while True:
            reused = False
            conn: _Connection | None = None
            while idle:
                candidate = idle.pop()
                if not candidate.closed:
                    conn, reused = candidate, True
                    break
            if conn is None:
                conn = await self._connect(host, port, tls)
            conn.send(head + body)
            try:
                await conn.wait_headers()
            except UpstreamError:
                if reused and not conn.got_bytes and conn.error is not None and conn.error.kind == "protocol":
                    continue  # the backend had closed this idle connection: retry once, fresh
                raise
            return UpstreamResponse(self, key, conn)

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
