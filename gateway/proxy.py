"""Talking to backends: one lean keep-alive client (upstream.py), SSE passed through as it comes.

Non-streaming responses are read whole (they are one JSON document) and their `usage` block is
what gets metered. Streaming responses are forwarded event by event, never buffered: the
upstream always gets `stream_options.include_usage` (and `continuous_usage_stats` for vLLM-like
backends) so the true usage arrives at the end, and the final usage chunk is dropped again when
the client did not ask for it. If the client goes away, a watcher on the ASGI receive channel
closes the upstream response at once (the engine stops generating) and the tokens generated so
far are metered: the last running usage if the backend sends it, else one token per chunk that
carries generated text (a role-only first chunk carries none).

What the proxy opens it hands to the request's owner (`lifecycle.RequestOwner`): the backend's
outstanding count and the upstream response are released by `UpstreamCall.release`, which is
idempotent, so the proxy may release early (to reuse the connection) and the owner always does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.costs import Usage
from gateway.errors import BackendError, BackendRejected, BackendTimeout, BackendUnavailable, GatewayError
from gateway.routing import Backend, BackendPool, Route
from gateway.upstream import UpstreamClient, UpstreamError, UpstreamResponse

# RFC 9110 7.6.1 hop-by-hop headers, plus those the gateway's own server sets. Content-Encoding
# passes: bodies are relayed as received (no Accept-Encoding is sent, so backends do not compress).
_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "server",
    }
)


def forwardable_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Upstream response headers minus hop-by-hop ones and those named in `Connection`."""
    pairs = list(headers)
    named: set[str] = set()
    for k, v in pairs:
        if k.lower() == "connection":
            named.update(t.strip().lower() for t in v.split(","))
    return {k.lower(): v for k, v in pairs if k.lower() not in _DROP and k.lower() not in named}


def new_session(*, connect_timeout_s: float, read_timeout_s: float) -> aiohttp.ClientSession:
    """The general-purpose client (readiness probes); the hot path uses upstream.UpstreamClient."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=read_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


@dataclass
class UpstreamCall:
    """An open upstream response (status < 400) and the backend it came from."""

    backend: Backend
    response: UpstreamResponse
    started: float
    released: bool = False

    def release(self) -> None:
        """Give the connection back (or abort it) and the backend's outstanding count; once."""
        if not self.released:
            self.released = True
            self.response.release()
            self.backend.outstanding -= 1


async def open_upstream(
    client: UpstreamClient,
    pool: BackendPool,
    model: str,
    path: str,
    body: bytes,
    request_id: str,
    on_error: Callable[[Backend, str], None],
    route: Route | None = None,
) -> UpstreamCall:
    """POST to the least loaded backend; a refused connection is retried on each other candidate.

    A refused connection costs microseconds and nothing reached the backend, so every candidate
    gets one try before the client sees a 503: with two of three replicas dead (a killed one and a
    configured spare that never started), one try elsewhere was not enough once their down marks
    expired together. Timeouts and HTTP errors are not retried (the backend may have started work).
    With a `route`, only its version's backends inside its regions are candidates; a
    region-restricted route whose last candidate refused ends in NoBackendInRegion (routing.py).
    """
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
    tried: list[Backend] = []
    while True:  # ends: each refusal adds a backend to `tried`, and the candidates are finite
        backend = (
            pool.pick_route(route, exclude=tried, body=body)
            if route
            else pool.pick(model, exclude=tried, body=body)
        )
        backend.outstanding += 1
        started = time.perf_counter()
        try:
            resp = await client.post(backend.url, path, body, headers)
        except UpstreamError as exc:
            backend.outstanding -= 1
            on_error(backend, exc.kind)
            if exc.kind == "connect":
                pool.mark_down(backend)
                tried.append(backend)
                if route is not None and route.regions is not None:
                    continue  # the next pick raises NoBackendInRegion once every candidate refused
                group = pool.candidates(route) if route else pool.by_model[model]
                if len(tried) < len(group):
                    continue
                raise BackendUnavailable(f"Backend for model {model!r} is unreachable: {exc}.") from None
            if exc.kind == "timeout":
                raise BackendTimeout(f"Backend for model {model!r} did not answer in time: {exc}.") from None
            raise BackendError(f"Backend for model {model!r} failed: {exc}.") from None
        if resp.status >= 400:
            try:
                detail = await resp.read()
            except UpstreamError:
                detail = b""
            finally:
                resp.release()
                backend.outstanding -= 1
            raise upstream_status_error(resp.status, detail, model, on_error, backend)
        return UpstreamCall(backend=backend, response=resp, started=started)


def upstream_status_error(
    status: int, detail: bytes, model: str, on_error: Callable[[Backend, str], None], backend: Backend
) -> GatewayError:
    """Backend 4xx pass through with the backend's own message; 5xx become 502/503/504."""
    message = ""
    try:
        message = json.loads(detail)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = detail[:200].decode(errors="replace")
    if status < 500:
        return BackendRejected(f"Backend rejected the request: {message}", status=status)
    on_error(backend, f"http_{status}")
    if status == 503:
        return BackendUnavailable(f"Backend for model {model!r} is unavailable (503): {message}")
    if status == 504:
        return BackendTimeout(f"Backend for model {model!r} timed out (504): {message}")
    return BackendError(f"Backend for model {model!r} failed with status {status}: {message}")


async def read_json(call: UpstreamCall, model: str) -> tuple[bytes, Usage | None]:
    """Read a whole non-streaming response; usage None if the backend did not report one."""
    try:
        data = await call.response.read()
    except UpstreamError as exc:
        if exc.kind == "timeout":
            raise BackendTimeout(f"Backend for model {model!r} stopped answering: {exc}.") from None
        raise BackendError(f"Backend for model {model!r} broke the response: {exc}.") from None
    finally:
        call.release()
    usage = None
    try:
        u = json.loads(data).get("usage")
        if u:
            usage = Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
    except (ValueError, AttributeError, TypeError):
        raise BackendError(f"Backend for model {model!r} answered with invalid JSON.") from None
    return data, usage


# A chunk that carries generated text: non-empty content/text/reasoning, or a tool-call delta.
# A role-only first chunk (`{"role":"assistant","content":""}` or no content at all) matches
# none of these, so it is not counted as a token.
_TOKEN = re.compile(rb'"(?:content|text|reasoning_content)"\s*:\s*"[^"]|"tool_calls"\s*:\s*\[\s*\{')


# A chunk's trailing `"usage": {...}` (one level of nesting: prompt_tokens_details) or `null`.
# Usage holds only numbers, so braces cannot hide in strings; a quote inside generated text is
# escaped, so this cannot match inside content either.
_USAGE_FIELD = re.compile(rb',\s*"usage"\s*:\s*(?:\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}|null)')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


def _usage_of(payload: bytes) -> Usage:
    u = json.loads(payload).get("usage") or {}
    return Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))


def _without_usage(payload: bytes) -> bytes:
    """The chunk minus its usage field, by bytes: re-serialising every token chunk cost ~9 us each."""
    stripped, n = _USAGE_FIELD.subn(b"", payload, count=1)
    if n:
        return stripped
    obj = json.loads(payload)  # usage not where vLLM and OpenAI put it: take the slow, sure path
    obj.pop("usage", None)
    return json.dumps(obj, separators=(",", ":")).encode()


def _is_content_chunk(payload: bytes) -> bool:
    """One generated token, heuristically: a chunk whose delta or text carries generated output."""
    return _TOKEN.search(payload) is not None


async def _drain(resp: UpstreamResponse) -> None:
    with contextlib.suppress(UpstreamError, TimeoutError):
        async with asyncio.timeout(1.0):
            async for _ in resp.iter_any():
                pass


class StreamProxy(Response):
    """An ASGI response that relays an upstream SSE stream and reports how it ended.

    `on_end(usage, complete, client_gone, first_token_at)` runs exactly once, before the final `[DONE]`
    reaches the client on a normal end (so the client never sees the end of a stream whose
    usage is not yet settled), or after the upstream is closed on a disconnect.
    `running_usage()` is the usage so far, for heartbeat checkpoints (parsed only when asked).
    """

    def __init__(
        self,
        call: UpstreamCall,
        *,
        headers: Mapping[str, str],
        client_wants_usage: bool,
        prompt_tokens_estimate: int,
        on_end: Callable[[Usage, bool, bool, float | None], Awaitable[None]],
    ) -> None:
        super().__init__(content=None, status_code=200, headers=headers, media_type="text/event-stream")
        self._call = call
        self._wants_usage = client_wants_usage
        self._prompt_est = prompt_tokens_estimate
        self._on_end = on_end
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        # With continuous_usage_stats every chunk carries running usage; only the newest matters,
        # so keep its bytes and parse once when needed (json.loads per token was ~4.4 us each).
        self._last_usage: bytes | None = None
        self._chunks = 0  # chunks that carried generated output
        # Content chunks, kept only for a tenant that opted in to keeping text (retention.py).
        self.capture: list[bytes] | None = None

    def running_usage(self) -> Usage:
        """The backend's last running usage if it sent one, else the estimate and the chunk count."""
        if self._last_usage is not None:
            return _usage_of(self._last_usage)
        return Usage(self._prompt_est, self._chunks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = self._call.response
        disconnected = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    resp.close()  # stops the engine: the backend sees the connection go
                    return

        watcher = asyncio.create_task(watch())
        first_token_at: float | None = None
        ended = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            buf = b""
            async for data in resp.iter_any():
                # SSE lines may end in CRLF (sse-starlette does); LF is equally valid SSE and
                # lets one splitter serve both.
                buf += data
                if b"\r" in buf:
                    buf = buf.replace(b"\r\n", b"\n")
                # Everything that arrived in one read goes to the client in one write: same
                # bytes, same order, fewer syscalls when the backend is faster than the client.
                batch: list[bytes] = []
                while True:
                    cut = buf.find(b"\n\n")
                    if cut < 0:
                        break
                    event, buf = buf[: cut + 2], buf[cut + 2 :]
                    payload = event[6:-2] if event.startswith(b"data: ") else event[5:-2].lstrip()
                    if payload == b"[DONE]":
                        ended = True
                        break
                    if _is_content_chunk(payload):
                        self._chunks += 1
                        if self.capture is not None:
                            self.capture.append(payload)
                    if b'"usage":{' in payload or b'"usage": {' in payload:
                        self._last_usage = payload
                        if _EMPTY_CHOICES.search(payload) is None:
                            if not self._wants_usage:
                                event = b"data: " + _without_usage(payload) + b"\n\n"
                            batch.append(event)
                        elif self._wants_usage:
                            batch.append(event)
                    else:
                        batch.append(event)
                if first_token_at is None and self._chunks:
                    first_token_at = time.perf_counter()
                if batch and not disconnected.is_set():
                    body = batch[0] if len(batch) == 1 else b"".join(batch)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                if ended or disconnected.is_set():
                    break
        except UpstreamError:
            pass  # a closed upstream (ours, on disconnect, or the backend's) ends the stream
        finally:
            watcher.cancel()
            if ended and not disconnected.is_set():
                await _drain(resp)  # read the chunked terminator so the connection can be reused
            self._call.release()
            # Exact on every ending: the backend's own (final or running) usage when it sent one;
            # otherwise the prompt estimate and the chunks that carried generated output.
            await self._on_end(self.running_usage(), ended, disconnected.is_set(), first_token_at)
        if not disconnected.is_set():
            tail = b"data: [DONE]\n\n" if ended else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})
