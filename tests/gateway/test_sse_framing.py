"""SSE framing the gateway must accept from backends: CRLF line ends, events split across reads."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web
from gwkit import plan

from servelab.procs import free_port, wait_http_ok


async def _crlf_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "fast",
        "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}],
    }
    usage = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "fast",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }
    frames = [b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"] * 3
    frames += [b"data: " + json.dumps(usage).encode() + b"\r\n\r\n", b"data: [DONE]\r\n\r\n"]
    wire = b"".join(frames)
    for i in range(0, len(wire), 7):  # 7-byte writes: events and CRLFs split across reads
        await resp.write(wire[i : i + 7])
    await resp.write_eof()
    return resp


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
def crlf_upstream() -> Iterator[str]:
    port = free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _crlf_stream)
    app.router.add_get("/health", _health)
    runner = web.AppRunner(app)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    wait_http_ok(f"http://127.0.0.1:{port}/health", timeout_s=10)
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def test_crlf_events_split_across_reads(crlf_upstream, write_config, gateway) -> None:
    gw = gateway(write_config([crlf_upstream], {"acme": plan()}))
    client = gw.client(gw.new_key("acme"))
    chunks = list(
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}], stream=True)
    )
    assert [c.choices[0].delta.content for c in chunks] == [" tok"] * 3  # usage chunk stripped
    totals = gw.usage("acme")["totals"]
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (9, 3)
