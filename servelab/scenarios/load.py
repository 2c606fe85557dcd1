"""Bounded load on 127.0.0.1 for the scenarios: open-loop arrivals, one record per request.

Plain HTTP (httpx), not the openai SDK: a scenario needs to see what a client library hides, such
as a stream that stopped without `[DONE]`, the 429's headers and the time to the first content
chunk. Each request carries its own `x-request-id`, so a record can be matched to the gateway's
usage event for it. Arrivals are Poisson at the given rate and stop at the deadline; the requests
still running then are awaited (with the client's timeout), so a phase's load is bounded.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Record:
    rid: str
    tenant: str
    start: float
    status: int = 0
    ttft: float | None = None
    end: float = 0.0
    chunks: int = 0
    completed: bool = False
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    tag: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.completed and not self.error

    @property
    def e2e(self) -> float:
        return self.end - self.start


WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def prompt(n_words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


class Load:
    """One httpx client and the records of every request sent through it."""

    def __init__(self, base_url: str, model: str, t0: float, timeout_s: float = 120.0) -> None:
        self.base_url = base_url
        self.model = model
        self.t0 = t0
        self.records: list[Record] = []
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
        self.client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits)
        self.rng = random.Random(7)

    async def close(self) -> None:
        await self.client.aclose()

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def one(
        self,
        tenant: str,
        key: str,
        *,
        words: int = 32,
        max_tokens: int = 64,
        stream: bool = True,
        tag: str = "",
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Record:
        rid = f"scn-{secrets.token_hex(8)}"
        rec = Record(rid=rid, tenant=tenant, start=self.now(), tag=tag)
        self.records.append(rec)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt(words, self.rng)}],
            "max_tokens": max_tokens,
            "stream": stream,
            **(extra or {}),
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        hdrs = {"authorization": f"Bearer {key}", "x-request-id": rid, **(headers or {})}
        try:
            async with self.client.stream("POST", "/v1/chat/completions", json=body, headers=hdrs) as resp:
                rec.status = resp.status_code
                rec.headers = {k.lower(): v for k, v in resp.headers.items()}
                if resp.status_code != 200 or not stream:
                    data = await resp.aread()
                    if resp.status_code == 200:
                        rec.usage = json.loads(data).get("usage")
                        rec.completed = True
                        rec.ttft = self.now() - rec.start
                    else:
                        rec.error = _error_code(data)
                else:
                    await self._read_stream(resp, rec)
        except (httpx.HTTPError, OSError) as exc:
            rec.error = rec.error or f"{type(exc).__name__}"
        rec.end = self.now()
        return rec

    async def _read_stream(self, resp: httpx.Response, rec: Record) -> None:
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                rec.completed = True
                return
            event = json.loads(data)
            if "error" in event:
                rec.error = str(event["error"].get("code") or event["error"].get("type") or "error")
                return
            if event.get("usage"):
                rec.usage = event["usage"]
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    rec.chunks += 1
                    if rec.ttft is None:
                        rec.ttft = self.now() - rec.start
        rec.error = rec.error or "stream ended without [DONE]"

    async def open_loop(
        self,
        rate: float,
        duration_s: float,
        tenant: str,
        key: str,
        stop: asyncio.Event | None = None,
        **kw: Any,
    ) -> list[Record]:
        """Poisson arrivals at `rate` req/s for `duration_s` (or until `stop` is set, if given first);
        returns when every request sent has ended."""
        tasks: list[asyncio.Task[Record]] = []
        end = self.now() + duration_s
        next_at = self.now()
        while next_at < end and not (stop and stop.is_set()):
            await asyncio.sleep(max(0.0, next_at - self.now()))
            tasks.append(asyncio.create_task(self.one(tenant, key, **kw)))
            next_at += self.rng.expovariate(rate)
        return list(await asyncio.gather(*tasks))


async def closed_loop(load: Load, users: int, stop: asyncio.Event, tenant: str, key: str, **kw: Any) -> None:
    """`users` clients, each sending its next request when its last one ends, until `stop` is set."""

    async def user() -> None:
        while not stop.is_set():
            await load.one(tenant, key, **kw)

    await asyncio.gather(*(user() for _ in range(users)))


def _error_code(data: bytes) -> str:
    try:
        err = json.loads(data)["error"]
        return str(err.get("code") or err.get("type"))
    except (ValueError, KeyError, TypeError):
        return data[:80].decode(errors="replace")
