"""The simulator's OpenAI-compatible HTTP server (what `servelab serve --engine sim` runs).

`create_app(settings)` builds a FastAPI app whose lifespan loads the model's mistral-common
tokenizer, builds the performance model and the engine, and starts the real-time engine loop.
Endpoints mirror `vllm serve`: /v1/chat/completions, /v1/completions (stream and not), /v1/models,
/health, /metrics (vLLM names), plus /sim/stats (the engine loop's own cost, for the benchmark).

Wire behaviour follows vLLM's OpenAI server: `usage` is exact (prompt tokens counted by
mistral-common, completion tokens = tokens emitted); `stream_options.include_usage` adds a final
usage chunk and `continuous_usage_stats` a usage block on every chunk; `ignore_eos`, `max_tokens`
(or `max_completion_tokens`) and `priority` are honoured; a client that disconnects has its request
aborted and its KV blocks freed. Errors use the OpenAI envelope `{"error": {...}}` with vLLM's
type names (BadRequestError 400, NotFoundError 404). The output text is filler words, one per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from server.sim.engine import Engine, StepCostModel
from server.sim.lengths import LengthDist
from server.sim.metrics import EngineMetrics
from server.sim.request import Request as SimRequest
from server.sim.request import Status
from server.sim.runtime import AsyncEngine, changed
from server.sim.scheduler import SchedulerConfig
from server.sim.settings import SimSettings
from server.sim.tokens import PromptCounter, PromptError

log = logging.getLogger(__name__)

# Filler output: one word per token, all JSON-safe so chunks can be built by string concatenation.
_FILLER = "the model is simulated and every word here stands for exactly one generated token"
WORDS = tuple(" " + w for w in _FILLER.split())


# ---- wire models ----------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, top_p, ...: accepted and ignored

    model: str
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    priority: int = 0
    n: int = 1


class ChatRequest(_Common):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str]


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param


def _error(status: int, message: str, type_: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


# ---- state --------------------------------------------------------------------------------------


@dataclass
class SimState:
    settings: SimSettings
    engine: AsyncEngine
    metrics: EngineMetrics
    counter: PromptCounter
    max_model_len: int
    described: dict[str, object]
    stop_lengths: LengthDist | None
    rng: np.random.Generator
    created: int


def build_engine(settings: SimSettings) -> tuple[Engine, int, dict[str, object]]:
    """Engine for the settings' model on its GPUs; returns it, max_model_len and the perf inputs."""
    from server import catalog
    from server.sim.offline import build_cost_model

    cost: StepCostModel
    cost, blocks, described = build_cost_model(
        settings.model, settings.gpu, settings.tp, settings.dtype, settings.kv_dtype,
        settings.gpu_memory_utilization, settings.block_size, settings.max_num_batched_tokens)
    if settings.num_kv_blocks is not None:
        blocks = settings.num_kv_blocks
    if settings.cold_start:  # the scenario `servelab scenario cold-start` starts a replica like this
        from server.perfmodel import PerfModel
        from server.sim.coldstart import ColdMoeKernels

        assert isinstance(cost, PerfModel)
        cost = ColdMoeKernels.for_model(cost, max_num_seqs=min(settings.max_num_seqs, 256))
    kv_tokens = blocks * settings.block_size
    max_len = settings.max_model_len or min(catalog.model(settings.model).max_position_embeddings, kv_tokens)
    if not settings.enable_chunked_prefill:
        if settings.max_model_len is None:
            max_len = min(max_len, settings.max_num_batched_tokens)
        elif max_len > settings.max_num_batched_tokens:
            raise ValueError(
                f"max_model_len {max_len} exceeds max_num_batched_tokens {settings.max_num_batched_tokens};"
                " without chunked prefill a whole sequence must fit one step (as vLLM V0 requires)")
    if max_len > kv_tokens:
        raise ValueError(
            f"max_model_len {max_len} needs more KV cache than the {kv_tokens} tokens that fit"
            f" ({blocks} blocks of {settings.block_size}); lower --max-model-len")
    cfg = SchedulerConfig(max_num_seqs=settings.max_num_seqs,
                          max_num_batched_tokens=settings.max_num_batched_tokens,
                          policy=settings.scheduling_policy,
                          chunked_prefill=settings.enable_chunked_prefill)
    engine = Engine(cost, blocks, cfg, settings.block_size)
    described = {**described, "kv_blocks": blocks, "max_model_len": max_len, "speedup": settings.speedup}
    return engine, max_len, described


def create_app(settings: SimSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from server import catalog

        counter = PromptCounter(catalog.tokenizer_for(settings.model))
        engine, max_len, described = build_engine(settings)
        metrics = EngineMetrics(engine, settings.name)
        runner = AsyncEngine(engine, metrics, settings.speedup)
        runner.start()
        app.state.sim = SimState(
            settings=settings, engine=runner, metrics=metrics, counter=counter, max_model_len=max_len,
            described=described,
            stop_lengths=LengthDist.parse(settings.output_len) if settings.output_len else None,
            rng=np.random.default_rng(settings.seed), created=int(time.time()),
        )
        app.state.registry = metrics.registry()
        # Move everything loaded so far (tokenizer, FastAPI, numpy) out of the GC's reach so that
        # a full collection in the middle of an engine step has less to walk.
        gc.collect()
        gc.freeze()
        log.info("simulator ready model=%s gpu=%s tp=%d dtype=%s kv_blocks=%d max_model_len=%d speedup=%g",
                 settings.model, settings.gpu, settings.tp, settings.dtype, engine.kv.num_blocks, max_len,
                 settings.speedup)
        try:
            yield
        finally:
            await runner.stop()

    app = FastAPI(title="servelab simulator", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.type, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        return _error(400, f"{param}: {msg}" if param else msg, "BadRequestError", param)

    @app.get("/health")
    async def health(request: Request) -> Response:
        sim: SimState | None = getattr(request.app.state, "sim", None)
        ok = sim is not None and sim.engine.running
        return Response(status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        sim: SimState = request.app.state.sim
        return {"object": "list", "data": [{
            "id": sim.settings.name, "object": "model", "created": sim.created, "owned_by": "servelab-sim",
            "root": sim.settings.model, "parent": None, "max_model_len": sim.max_model_len,
        }]}

    @app.get("/sim/stats")
    async def stats(request: Request, min_batch: int = 0) -> dict[str, Any]:
        """The engine loop's own cost over recent steps (those with at least `min_batch` sequences)."""
        sim: SimState = request.app.state.sim
        return {"inputs": sim.described, **_loop_stats(sim.engine, min_batch)}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Response:
        sim: SimState = request.app.state.sim
        _check_common(sim, body)
        try:
            prompt_len = sim.counter.chat(body.messages, body.tools)
        except PromptError as exc:
            raise ApiError(400, exc.args[0], param="messages") from None
        max_tokens = body.max_completion_tokens or body.max_tokens
        return await _serve(sim, request, body, prompt_len, max_tokens, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        sim: SimState = request.app.state.sim
        _check_common(sim, body)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ApiError(400, "only one prompt per request is supported", param="prompt")
            prompt = prompt[0]
        if not prompt:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        prompt_len = sim.counter.completion(prompt)  # type: ignore[arg-type]
        return await _serve(sim, request, body, prompt_len, body.max_tokens, chat=False)

    return app


def _check_common(sim: SimState, body: _Common) -> None:
    if body.model != sim.settings.name:
        raise ApiError(404, f"The model `{body.model}` does not exist.", "NotFoundError", "model")
    if body.n != 1:
        raise ApiError(400, "n must be 1 for the simulator", param="n")
    if body.stream_options is not None and not body.stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", param="stream_options")
    if body.priority != 0 and sim.settings.scheduling_policy != "priority":
        raise ApiError(400, f"Got priority {body.priority} but Priority scheduling is not enabled.",
                       param="priority")


def _loop_stats(runner: AsyncEngine, min_batch: int = 0) -> dict[str, Any]:
    recent = [r for r in runner.recent if r[2] >= min_batch]
    if not recent:
        return {"steps": 0, "min_batch": min_batch}
    arr = np.array(recent)
    over, late, batch, modelled = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]
    out: dict[str, Any] = {"steps": len(recent), "min_batch": min_batch, "batch_mean": float(batch.mean()),
                           "batch_max": int(batch.max()),
                           "modelled_step_mean_s": float(modelled.mean()) / runner.speedup}
    if len(recent) > 1:
        # real time per step between consecutive recorded steps (only back-to-back ones count)
        gaps = np.diff(arr[:, 4])
        busy = gaps[gaps < 2 * modelled[1:].max() / runner.speedup]
        if busy.size:
            out["real_step_mean_s"] = float(busy.mean())
    for name, a in (("overhead", over), ("overhead_cpu", arr[:, 5]), ("lateness", late)):
        for p in (50, 95, 99):
            out[f"{name}_p{p}_s"] = float(np.percentile(a, p))
        out[f"{name}_max_s"] = float(a.max())
        out[f"{name}_mean_s"] = float(a.mean())
    return out


async def _serve(sim: SimState, raw: Request, body: _Common, prompt_len: int, max_tokens: int | None,
                 *, chat: bool) -> Response:
    limit = sim.max_model_len
    if prompt_len >= limit:
        raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, your request"
                       f" has {prompt_len} input tokens. Please reduce the length of the input messages.",
                       param="messages" if chat else "prompt")
    if max_tokens is None:
        max_tokens = min(sim.settings.default_max_tokens, limit - prompt_len)
    elif prompt_len + max_tokens > limit:
        raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, you requested"
                       f" {prompt_len + max_tokens} tokens ({prompt_len} in the messages, {max_tokens} in the"
                       " completion). Please reduce the length of the messages or completion.",
                       param="max_tokens")
    stop_len = None
    if sim.stop_lengths is not None and not body.ignore_eos:
        stop_len = int(sim.stop_lengths.sample(sim.rng, 1)[0])
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    req = SimRequest(rid, prompt_len, max_tokens, stop_len=stop_len, priority=body.priority)
    try:
        sim.engine.submit(req)
    except ValueError as exc:  # the engine could never run it; max_model_len normally catches this
        raise ApiError(400, str(exc)) from None
    if body.stream:
        opts = body.stream_options or StreamOptions()
        gen = _stream(sim, req, chat, opts.include_usage, opts.include_usage and opts.continuous_usage_stats)
        return StreamingResponse(gen, media_type="text/event-stream")
    return await _complete(sim, raw, req, chat)


def _usage(req: SimRequest) -> dict[str, int]:
    return {"prompt_tokens": req.prompt_len, "completion_tokens": req.num_output,
            "total_tokens": req.prompt_len + req.num_output}


async def _until_finished(req: SimRequest) -> None:
    while not req.finished:
        await changed(req)


async def _disconnected(raw: Request) -> None:
    while True:
        msg = await raw.receive()
        if msg["type"] == "http.disconnect":
            return


async def _complete(sim: SimState, raw: Request, req: SimRequest, chat: bool) -> Response:
    done = asyncio.ensure_future(_until_finished(req))
    gone = asyncio.ensure_future(_disconnected(raw))
    try:
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (done, gone):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not req.finished:
            sim.engine.abort(req)  # the client went away (or we are shutting down)
    if req.status == Status.ABORTED:
        return Response(status_code=499)  # nobody is listening; vLLM logs the same abort
    text = "".join(WORDS[i % len(WORDS)] for i in range(req.num_output))
    base = {"id": req.req_id, "created": int(time.time()), "model": sim.settings.name, "usage": _usage(req)}
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": req.finish_reason}
        return JSONResponse({**base, "object": "chat.completion", "choices": [choice]})
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": req.finish_reason}
    return JSONResponse({**base, "object": "text_completion", "choices": [choice]})


async def _stream(sim: SimState, req: SimRequest, chat: bool, include_usage: bool,
                  continuous: bool) -> AsyncIterator[str]:
    # Chunks are assembled from pre-rendered pieces: with hundreds of streams this is the server's
    # hot path, and json.dumps per token would cost more than the engine step itself.
    head = json.dumps({"id": req.req_id, "object": "chat.completion.chunk" if chat else "text_completion",
                       "created": int(time.time()), "model": sim.settings.name}, separators=(",", ":"))[:-1]
    # Chat streams open with vLLM's role chunk, {"role": "assistant", "content": ""}. vLLM emits it
    # when the engine hands back the first token (serving_chat.py, `first_iteration`), i.e. after
    # prefill, never on arrival: `vllm bench serve` stops its TTFT clock at the first SSE message
    # that has `choices`, so a role chunk sent before prefill would read as a ~4 ms TTFT. Here the
    # role chunk and the first token leave in one write.
    role = None
    if chat:
        role = head + ',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,' \
                      '"finish_reason":null}]'
        role = "data: " + role + (_usage_json(req, 0) if continuous else "") + "}\n\n"
        pre, post = ',"choices":[{"index":0,"delta":{"content":"', '"},"logprobs":null,"finish_reason":'
    else:
        pre, post = ',"choices":[{"index":0,"text":"', '","logprobs":null,"finish_reason":'
    sent = 0
    try:
        while True:
            if req.status == Status.ABORTED:
                return
            n = req.num_output
            while sent < n:
                last = sent == n - 1 and req.finished
                reason = f'"{req.finish_reason}"' if last else "null"
                usage = _usage_json(req, sent + 1) if continuous else ""
                word = WORDS[sent % len(WORDS)]
                chunk = "data: " + head + pre + word + post + reason + "}]" + usage + "}\n\n"
                if role is not None:
                    chunk, role = role + chunk, None
                yield chunk
                sent += 1
            if req.finished:
                break
            await changed(req)
        if include_usage:
            yield "data: " + head + ',"choices":[]' + _usage_json(req, req.num_output) + "}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if not req.finished:
            sim.engine.abort(req)  # the client disconnected mid-stream: free its KV blocks


def _usage_json(req: SimRequest, completion: int) -> str:
    return (f',"usage":{{"prompt_tokens":{req.prompt_len},"completion_tokens":{completion},'
            f'"total_tokens":{req.prompt_len + completion}}}')

