"""A fast OpenAI-compatible upstream for benchmarks and tests of the gateway and load generator.

It does no model work: each completion answers after a fixed time-to-first-token and then
emits `--tokens` chunks `--itl-ms` apart, with an exact `usage` block, so anything measured in
front of it (gateway overhead, load-generator accuracy) is measured against known timings.
aiohttp's low-level server keeps its own cost well under the gateway's.

    python -m loadtest.bench.upstream --port 8001 --ttft-ms 0 --itl-ms 0 --tokens 16

Knobs per request (JSON body fields the real API does not have are ignored by real servers):
  max_tokens            caps the number of generated tokens (default --tokens)
  "x_fail": 500         answer with that status instead (error-path tests)
  "x_ttft_ms", "x_itl_ms" override the timings for one request
Prompt tokens are counted as ceil(len(prompt bytes)/4), deterministic and good enough here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import uuid

from aiohttp import web

FILLER = " tok"


def _prompt_bytes(body: dict) -> int:
    if "messages" in body:
        return sum(len(str(m.get("content", "")).encode()) for m in body["messages"])
    prompt = body.get("prompt", "")
    return len(str(prompt).encode())


class Upstream:
    def __init__(self, tokens: int, ttft_ms: float, itl_ms: float, model: str) -> None:
        self.tokens = tokens
        self.ttft_s = ttft_ms / 1000
        self.itl_s = itl_ms / 1000
        self.model = model
        self.requests_total = 0
        self.aborted_total = 0
        self.completion_tokens_total = 0
        self.prompt_tokens_total = 0
        self.in_flight = 0

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "servelab"}]}
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(self, request: web.Request) -> web.Response:
        text = (
            f"upstream_requests_total {self.requests_total}\n"
            f"upstream_aborted_total {self.aborted_total}\n"
            f"upstream_prompt_tokens_total {self.prompt_tokens_total}\n"
            f"upstream_completion_tokens_total {self.completion_tokens_total}\n"
            f"upstream_in_flight {self.in_flight}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        chat = request.path.endswith("/chat/completions")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response(
                {
                    "error": {
                        "message": "invalid JSON",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
                status=400,
            )
        self.requests_total += 1
        if "x_fail" in body:
            status = int(body["x_fail"])
            return web.json_response(
                {
                    "error": {
                        "message": f"injected failure {status}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
                status=status,
            )
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or self.tokens)
        n = min(n, self.tokens) if not body.get("ignore_eos") else n
        ttft = float(body.get("x_ttft_ms", self.ttft_s * 1000)) / 1000
        itl = float(body.get("x_itl_ms", self.itl_s * 1000)) / 1000
        prompt_tokens = math.ceil(_prompt_bytes(body) / 4)
        self.prompt_tokens_total += prompt_tokens
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = body.get("model", self.model)
        obj = "chat.completion" if chat else "text_completion"
        self.in_flight += 1
        try:
            if not body.get("stream"):
                if ttft:
                    await asyncio.sleep(ttft + itl * max(n - 1, 0))
                self.completion_tokens_total += n
                text = FILLER * n
                choice = (
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                    if chat
                    else {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
                )
                return web.json_response(
                    {
                        "id": rid,
                        "object": obj,
                        "created": created,
                        "model": model,
                        "choices": [choice],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": n,
                            "total_tokens": prompt_tokens + n,
                        },
                    }
                )
            return await self._stream(request, body, chat, rid, created, model, n, ttft, itl, prompt_tokens)
        finally:
            self.in_flight -= 1

    async def _stream(self, request, body, chat, rid, created, model, n, ttft, itl, prompt_tokens):
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        sent = 0
        try:
            if ttft:
                await asyncio.sleep(ttft)
            for i in range(n):
                if i and itl:
                    await asyncio.sleep(itl)
                last = i == n - 1
                if chat:
                    delta = {"role": "assistant", "content": FILLER} if i == 0 else {"content": FILLER}
                    choice = {"index": 0, "delta": delta, "finish_reason": "length" if last else None}
                else:
                    choice = {"index": 0, "text": FILLER, "finish_reason": "length" if last else None}
                chunk = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
                if include_usage:
                    chunk["usage"] = None
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                sent += 1
                self.completion_tokens_total += 1
            if include_usage:
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": n,
                    "total_tokens": prompt_tokens + n,
                }
                chunk = {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.aborted_total += 1
            raise
        return resp


def build_app(
    tokens: int = 16, ttft_ms: float = 0.0, itl_ms: float = 0.0, model: str = "fast"
) -> web.Application:
    up = Upstream(tokens, ttft_ms, itl_ms, model)
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app["upstream"] = up
    app.router.add_get("/v1/models", up.models)
    app.router.add_get("/health", up.health)
    app.router.add_get("/metrics", up.metrics)
    app.router.add_post("/v1/chat/completions", up.completions)
    app.router.add_post("/v1/completions", up.completions)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--tokens", type=int, default=16, help="tokens generated per request (default 16)")
    ap.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token, ms")
    ap.add_argument("--itl-ms", type=float, default=0.0, help="gap between tokens, ms")
    ap.add_argument("--model", default="fast", help="model id reported by /v1/models")
    args = ap.parse_args()
    web.run_app(
        build_app(args.tokens, args.ttft_ms, args.itl_ms, args.model),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
