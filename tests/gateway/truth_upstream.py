"""A vLLM-like fake backend that keeps its own record of the truth, for metering tests.

It counts prompt tokens with its own toy tokenizer, deliberately unlike the gateway's
`ceil(bytes / 4)` estimate, so a test can tell what the backend reported from what the gateway
guessed: a run of ASCII letters is ceil(len / 4) tokens, every digit and every other ASCII
symbol one token, whitespace none, a non-ASCII character (UTF-8 bytes - 1) tokens, and a chat
adds 4 tokens per message plus 3 (its template). "a a a ..." is thus one token per 2 bytes and
"123..." one per byte, while no text ever costs more than one token per byte plus the template.

Streams look like vLLM's: a role-only first chunk, one chunk per token, a final usage chunk when
asked, and running usage on every chunk with `stream_options.continuous_usage_stats`.
`GET /truth` returns, per request id (the `X-Request-Id` the gateway sends), the prompt tokens,
the completion tokens actually written to the socket, and whether the stream was cut off.

    python tests/gateway/truth_upstream.py --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import time
from typing import Any

from aiohttp import web

_RUN = re.compile(r"[A-Za-z]+|[0-9]|\s+|[\x00-\x7f]|[^\x00-\x7f]")


def count_tokens(text: str) -> int:
    n = 0
    for m in _RUN.finditer(text):
        s = m.group()
        if s[0].isascii() and s[0].isalpha():
            n += math.ceil(len(s) / 4)
        elif s.isspace():
            continue
        elif s.isascii():
            n += 1
        else:
            n += max(1, len(s.encode("utf-8", "surrogatepass")) - 1)
    return n


def prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        msgs = body["messages"]
        return 3 + sum(4 + count_tokens(str(m.get("content") or "")) for m in msgs)
    return count_tokens(str(body.get("prompt", "")))


class Truth:
    def __init__(self, itl_ms: float) -> None:
        self.itl_s = itl_ms / 1000
        self.requests: dict[str, dict[str, Any]] = {}
        self.in_flight = 0

    async def truth(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "in_flight": self.in_flight})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        rid = request.headers.get("X-Request-Id", f"anon-{len(self.requests)}")
        chat = request.path.endswith("/chat/completions")
        n = int(body.get("max_tokens") or 16)
        itl = float(body.get("x_itl_ms", self.itl_s * 1000)) / 1000
        p = prompt_tokens(body)
        rec = self.requests[rid] = {
            "prompt_tokens": p,
            "completion_tokens": 0,
            "aborted": False,
            "done": False,
        }
        opts = body.get("stream_options") or {}
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": rid, "object": obj, "created": int(time.time()), "model": body.get("model")}
        if not body.get("stream"):
            await asyncio.sleep(itl * n)
            rec["completion_tokens"], rec["done"] = n, True
            msg = {
                "index": 0,
                "message": {"role": "assistant", "content": " tok" * n},
                "finish_reason": "length",
            }
            usage = {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}
            return web.json_response({**base, "choices": [msg], "usage": usage})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        running = bool(opts.get("continuous_usage_stats"))
        self.in_flight += 1

        async def send(choices: list[dict[str, Any]], done: int, usage: bool | None = None) -> None:
            chunk: dict[str, Any] = {**base, "choices": choices}
            if usage or running:
                chunk["usage"] = {"prompt_tokens": p, "completion_tokens": done, "total_tokens": p + done}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        try:
            if chat:  # vLLM's first chunk: the role, no content
                await send(
                    [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], 0
                )
            for i in range(n):
                await asyncio.sleep(itl)
                choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if i == n - 1 else None}
                if chat:
                    choice["delta"] = {"content": " tok"}
                else:
                    choice["text"] = " tok"
                await send([choice], i + 1)
                rec["completion_tokens"] = i + 1
            if opts.get("include_usage"):
                await send([], n, usage=True)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            rec["done"] = True
        except (ConnectionResetError, asyncio.CancelledError):
            rec["aborted"] = True
            raise
        finally:
            self.in_flight -= 1
        return resp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--itl-ms", type=float, default=0.0, help="gap between tokens, ms (x_itl_ms per request)")
    args = ap.parse_args()
    t = Truth(args.itl_ms)
    app = web.Application()
    app.router.add_get("/truth", t.truth)
    app.router.add_get("/health", t.health)
    app.router.add_post("/v1/chat/completions", t.completions)
    app.router.add_post("/v1/completions", t.completions)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
