"""The chaos suite's clients: every call it makes, and what the client saw, in one ledger.

Plain HTTP (httpx), not the SDK: the suite needs to drop a stream after exactly k chunks, send
bytes no SDK would, and see a connection die. Each call gets its own `x-request-id`, so the
ledger can be joined with the usage events in Redis: what a client received against what was
metered, request by request. Tokens received are the usage block when the response ends
normally, else the content chunks read (one token per chunk, as vLLM and the simulator send).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

Outcome = Literal["ok", "http_error", "disconnected", "broken"]


@dataclass
class Call:
    """One request as the client lived it."""

    rid: str
    tenant: str
    phase: str
    gateway: str
    kind: str  # "complete", "stream", "disconnect", "malformed", ...
    t0: float
    t1: float = 0.0
    status: int = 0
    code: str | None = None
    outcome: Outcome = "ok"
    prompt_tokens: int = 0  # from a usage block, when the client got one
    completion_tokens: int = 0  # usage block, else content chunks read
    chunk_times: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Generation rate the client saw (0 when fewer than two chunks)."""
        t = self.chunk_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0


class Ledger:
    """Thread-safe record of every call, with unique request ids."""

    def __init__(self, run_id: str) -> None:
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self.run_id = run_id
        self.calls: list[Call] = []

    def new(self, tenant: str, phase: str, gateway: str, kind: str) -> Call:
        with self._lock:
            call = Call(
                f"chaos-{self.run_id}-{next(self._seq)}", tenant, phase, gateway, kind, time.monotonic()
            )
            self.calls.append(call)
        return call

    def where(self, **match: Any) -> list[Call]:
        with self._lock:
            calls = list(self.calls)
        return [c for c in calls if all(getattr(c, k) == v for k, v in match.items())]


def chat_body(content: str | list[dict[str, str]], max_tokens: int, stream: bool = False) -> dict[str, Any]:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    body: dict[str, Any] = {"model": "mixtral-8x7b", "messages": messages, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _headers(key: str, rid: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "x-request-id": rid}


def _error(call: Call, resp: httpx.Response) -> Call:
    call.status = resp.status_code
    call.outcome = "http_error"
    try:
        call.code = resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        call.code = None
    call.t1 = time.monotonic()
    return call


def complete(http: httpx.Client, ledger: Ledger, gw: str, key: str, tenant: str, phase: str,
             body: dict[str, Any]) -> Call:  # fmt: skip
    """A non-streaming completion."""
    call = ledger.new(tenant, phase, gw, "complete")
    try:
        resp = http.post(f"{gw}/v1/chat/completions", json=body, headers=_headers(key, call.rid))
    except httpx.HTTPError:
        call.outcome, call.t1 = "broken", time.monotonic()
        return call
    if resp.status_code != 200:
        return _error(call, resp)
    usage = resp.json().get("usage") or {}
    call.status = 200
    call.prompt_tokens = int(usage.get("prompt_tokens", 0))
    call.completion_tokens = int(usage.get("completion_tokens", 0))
    call.t1 = time.monotonic()
    return call


def _events(resp: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in resp.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


def stream(http: httpx.Client, ledger: Ledger, gw: str, key: str, tenant: str, phase: str,
           body: dict[str, Any], *, stop_after: int | None = None,
           on_chunk: Callable[[Call], None] | None = None) -> Call:  # fmt: skip
    """A streamed completion; `stop_after` closes the connection after that many content chunks."""
    call = ledger.new(tenant, phase, gw, "disconnect" if stop_after is not None else "stream")
    try:
        with http.stream(
            "POST", f"{gw}/v1/chat/completions", json=body, headers=_headers(key, call.rid)
        ) as resp:
            if resp.status_code != 200:
                resp.read()
                return _error(call, resp)
            call.status = 200
            for event in _events(resp):
                usage = event.get("usage")
                if usage and not event.get("choices"):  # the final usage chunk
                    call.prompt_tokens = int(usage["prompt_tokens"])
                    call.completion_tokens = int(usage["completion_tokens"])
                    continue
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        call.completion_tokens += 1
                        call.chunk_times.append(time.monotonic())
                        if on_chunk is not None:
                            on_chunk(call)
                if stop_after is not None and call.completion_tokens >= stop_after:
                    call.outcome = "disconnected"
                    break  # leaving the block closes the connection mid-stream
    except (httpx.HTTPError, json.JSONDecodeError):
        call.outcome = "broken"
    call.t1 = time.monotonic()
    return call


def raw(http: httpx.Client, ledger: Ledger, gw: str, phase: str, method: str, path: str,
        headers: list[tuple[str, str]], content: bytes) -> tuple[Call, httpx.Response | None]:  # fmt: skip
    """Any request at all (the malformed corpus); the response is returned for inspection."""
    call = ledger.new("", phase, gw, "malformed")
    try:
        resp = http.request(
            method, f"{gw}{path}", headers=[*headers, ("x-request-id", call.rid)], content=content
        )
    except httpx.HTTPError:
        call.outcome, call.t1 = "broken", time.monotonic()
        return call, None
    call.status = resp.status_code
    call.outcome = "ok" if resp.status_code < 400 else "http_error"
    call.t1 = time.monotonic()
    return call, resp


def overlap_max(calls: list[Call]) -> int:
    """Most streams generating at one instant, from first to last content chunk the client read.

    That span lies inside the request's lease (admitted before its first token, settled before
    the client sees the end), so this undercounts true concurrency, never overcounts it: any
    value above the limit is a real overshoot.
    """
    spans = [(c.chunk_times[0], c.chunk_times[-1]) for c in calls if len(c.chunk_times) > 1]
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    most = cur = 0
    for _, step in edges:
        cur += step
        most = max(most, cur)
    return most
