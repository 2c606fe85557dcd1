"""The Locust user that streams chat/completions and times every chunk.

Imported only by locustfiles (it imports Locust, which monkey-patches the process with gevent).
HTTP goes through geventhttpclient directly so we read the SSE body line by line as it arrives
and stamp each `data:` event with `time.perf_counter()`.

Metric definitions follow vLLM's benchmark client (`vllm bench serve`):
  TTFT  send -> first chunk that carries generated text (vLLM's server sends its role chunk
        together with the first token, so this is the same instant there);
  ITL   every gap between consecutive text-carrying chunks (pooled over requests in stats.py);
  E2E   send -> the last data event before [DONE] (the usage chunk, when asked for);
  TPOT  (E2E - TTFT) / (completion_tokens - 1), completion tokens from the server's usage block.
Each is also fired as a Locust request event (request_type TTFT/ITL/TPOT/E2E, name = tenant), so
Locust's own CSV/HTML show them, but the raw row (rows.py) is what the report's numbers come from.

Open loop: a user takes the next arrival from its stream's shared `Pacer` and waits for it with
`self.wait()` (so a stop interrupts the wait but never an in-flight request); if it is late the
lag is recorded. Closed loop: send, think, send again.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import gevent
from geventhttpclient import HTTPClient
from locust import User, events, task
from locust.env import Environment
from locust.runners import LocalRunner

from loadtest import workloads
from loadtest.arrivals import Pacer, schedule
from loadtest.rows import Row, RowWriter
from loadtest.runconfig import RUN_DIR_ENV, RunConfig, Stream, keys_from_env

# How long a user whose stream has no more arrivals sleeps; the stop at the end of the run kills it.
_PARKED_S = 24 * 3600.0


@dataclass(frozen=True)
class Timing:
    status: int
    error: str
    ttft_s: float
    e2e_s: float
    prompt_tokens: int
    completion_tokens: int
    gaps: list[float] = field(default_factory=list)
    content_chunks: int = 0

    @property
    def tpot_s(self) -> float:
        if self.error or self.completion_tokens < 2 or math.isnan(self.ttft_s):
            return math.nan
        return (self.e2e_s - self.ttft_s) / (self.completion_tokens - 1)


def _chunk_text(data: dict) -> str:
    choices = data.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    delta = c.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or delta.get("reasoning_content") or "")
    return str(c.get("text") or "")


def stream_once(client: HTTPClient, path: str, body: bytes, headers: dict[str, str]) -> Timing:
    """Send one streaming request and time it; never raises for HTTP or protocol errors."""
    st = time.perf_counter()
    ttft = math.nan
    last_text_t = 0.0
    most_recent = st
    gaps: list[float] = []
    chunks = 0
    prompt_tokens = completion_tokens = -1
    try:
        resp = client.request("POST", path, body=body, headers=headers)
        status = resp.status_code
        if status != 200:
            text = resp.read().decode(errors="replace")
            try:
                msg = json.loads(text)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = text[:200]
            return Timing(status, f"HTTP {status}: {msg}"[:300], math.nan, time.perf_counter() - st, -1, -1)
        while True:
            line = resp.readline(b"\n")
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            now = time.perf_counter()
            data = json.loads(payload)
            if "error" in data and not data.get("choices"):
                resp.read()  # drain to the end of the body so the connection goes back to the pool clean
                return Timing(
                    status, f"stream error: {data['error']}"[:300], ttft, now - st, -1, -1, gaps, chunks
                )
            if _chunk_text(data):
                if math.isnan(ttft):
                    ttft = now - st
                else:
                    gaps.append(now - last_text_t)
                last_text_t = now
                chunks += 1
            usage = data.get("usage")
            if usage:
                prompt_tokens = int(usage.get("prompt_tokens", -1))
                completion_tokens = int(usage.get("completion_tokens", -1))
            most_recent = now
        # Read past [DONE] to the end of the chunked body: a connection returned to the pool with
        # the terminating chunk still unread would corrupt the next response on it.
        resp.read()
    except Exception as exc:  # connection refused/reset, timeout, bad JSON: a failed request, with the reason
        return Timing(
            0, f"{type(exc).__name__}: {exc}"[:300], ttft, time.perf_counter() - st, -1, -1, gaps, chunks
        )
    error = "" if completion_tokens >= 0 else "no usage block in the stream"
    return Timing(status, error, ttft, most_recent - st, prompt_tokens, completion_tokens, gaps, chunks)


class Process:
    """What every user of one Locust process shares: config, workload, pacers, HTTP client, rows file."""

    def __init__(self, environment: Environment) -> None:
        run_dir = Path(os.environ[RUN_DIR_ENV])
        self.config = RunConfig.load(run_dir)
        self.keys = keys_from_env()
        self.items = workloads.load(run_dir / "workload.jsonl")
        runner = environment.runner
        self.worker_index = max(0, int(getattr(runner, "worker_index", 0)))
        self.environment = environment
        arrivals = {
            s.tenant: schedule([st.to_step() for st in s.steps], self.config.burstiness, self.config.seed + i)
            for i, s in enumerate(self.config.streams)
            if s.open_loop
        }
        self.pacers = {
            tenant: Pacer(a, time.perf_counter, self.worker_index, self.config.workers)
            for tenant, a in arrivals.items()
        }
        url = urlsplit(self.config.target)
        total_users = sum(s.users for s in self.config.streams)
        self.client = HTTPClient(
            url.hostname or "127.0.0.1",
            url.port or (443 if url.scheme == "https" else 80),
            ssl=url.scheme == "https",
            concurrency=max(total_users, 1),
            connection_timeout=10.0,
            network_timeout=self.config.request_timeout_s,
        )
        base = url.path.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        self.path = base + ("/chat/completions" if self.config.endpoint == "chat" else "/completions")
        self.rows = RowWriter(run_dir / f"rows-w{self.worker_index}.csv")
        self.seq = 0
        self.sent = 0
        self.outstanding = 0
        self.next_user = 0
        self.standalone = isinstance(runner, LocalRunner)
        self.t_start = time.perf_counter()
        n_steps = len(self.config.user_steps)
        self.user_step_s = self.config.duration_s / n_steps if n_steps else 0.0

    def closed_loop_step(self) -> int:
        """Closed-loop sweep: the index of the user-count step we are in (by time since start)."""
        if not self.user_step_s:
            return 0
        elapsed = time.perf_counter() - self.t_start
        return min(int(elapsed / self.user_step_s), len(self.config.user_steps) - 1)

    def assign_stream(self) -> Stream:
        """Users are handed to streams in order of their per-process user counts."""
        i = self.next_user
        self.next_user += 1
        for s in self.config.streams:
            if i < s.users:
                return s
            i -= s.users
        return self.config.streams[-1]

    def next_item(self) -> workloads.WorkItem:
        """Prompts in workload order, interleaved across workers so each is used once per cycle."""
        i = self.sent * self.config.workers + self.worker_index
        self.sent += 1
        return self.items[i % len(self.items)]

    def body(self, item: workloads.WorkItem) -> bytes:
        payload: dict[str, object] = {
            "model": self.config.model,
            "max_tokens": item.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.config.endpoint == "chat":
            payload["messages"] = [{"role": "user", "content": item.prompt}]
        else:
            payload["prompt"] = item.prompt
        if self.config.ignore_eos:
            payload["ignore_eos"] = True
        return json.dumps(payload).encode()

    def record(self, tenant: str, step: int, start_unix: float, lag: float, t: Timing) -> None:
        self.seq += 1
        row = Row(
            seq=self.seq,
            worker=self.worker_index,
            tenant=tenant,
            step=step,
            start_unix_s=start_unix,
            lag_s=lag,
            status=t.status,
            error=t.error,
            ttft_s=t.ttft_s,
            e2e_s=t.e2e_s,
            tpot_s=t.tpot_s,
            prompt_tokens=t.prompt_tokens,
            completion_tokens=t.completion_tokens,
            content_chunks=t.content_chunks,
            itl_s=" ".join(repr(g) for g in t.gaps),
        )
        self.rows.write(row)
        fire = self.environment.events.request.fire
        exc = RuntimeError(t.error) if t.error else None
        fire(
            request_type="E2E",
            name=tenant,
            response_time=t.e2e_s * 1000,
            response_length=max(t.completion_tokens, 0),
            exception=exc,
            context={},
        )
        if exc is None:
            fire(
                request_type="TTFT",
                name=tenant,
                response_time=t.ttft_s * 1000,
                response_length=0,
                exception=None,
                context={},
            )
            if not math.isnan(t.tpot_s):
                fire(
                    request_type="TPOT",
                    name=tenant,
                    response_time=t.tpot_s * 1000,
                    response_length=0,
                    exception=None,
                    context={},
                )
            if self.config.fire_itl_events:
                for g in t.gaps:
                    fire(
                        request_type="ITL",
                        name=tenant,
                        response_time=g * 1000,
                        response_length=0,
                        exception=None,
                        context={},
                    )

    def exhausted(self) -> bool:
        return (
            bool(self.pacers)
            and all(p.remaining == 0 for p in self.pacers.values())
            and all(not s.open_loop or s.tenant in self.pacers for s in self.config.streams)
        )

    def quit_when_done(self) -> None:
        """Standalone open loop: end the run as soon as every arrival was sent and answered."""
        if not self.standalone or not self.pacers or any(not s.open_loop for s in self.config.streams):
            return
        while not (self.exhausted() and self.outstanding == 0):
            gevent.sleep(0.05)
        runner = self.environment.runner
        if runner is not None:
            runner.quit()


_PROCESS: Process | None = None


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: object) -> None:
    global _PROCESS
    from locust.runners import MasterRunner

    if isinstance(environment.runner, MasterRunner):
        return  # the master only aggregates; workers send the traffic
    _PROCESS = Process(environment)
    gevent.spawn(_PROCESS.quit_when_done)


@events.quitting.add_listener
def _on_quit(environment: Environment, **_: object) -> None:
    if _PROCESS is not None:
        _PROCESS.rows.close()
        _PROCESS.client.close()


class LlmUser(User):
    """One greenlet of one stream (tenant); open or closed loop as its stream says."""

    abstract = False
    _delay = 0.0

    def wait_time(self) -> float:
        delay, self._delay = self._delay, 0.0
        return delay

    def on_start(self) -> None:
        proc = _PROCESS
        if proc is None:
            raise RuntimeError("LlmUser started before the test_start hook loaded the run config")
        self.proc = proc
        self.stream = proc.assign_stream()
        self.pacer = proc.pacers.get(self.stream.tenant)
        self.headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Authorization": f"Bearer {proc.keys.get(self.stream.tenant, '')}",
        }

    @task
    def send(self) -> None:
        proc = self.proc
        step, lag = 0, 0.0
        # `outstanding` counts arrivals claimed but not yet answered (waiting for their due time
        # or in flight), so the early quit never cuts a claimed arrival.
        claim = self.pacer.claim() if self.pacer is not None else None
        if self.pacer is not None and claim is None:
            self._delay = _PARKED_S
            self.wait()
            return
        proc.outstanding += 1
        try:
            if claim is None:
                step = proc.closed_loop_step()
            else:
                due, step = claim
                self._delay = max(0.0, due - time.perf_counter())
                self.wait()
                lag = time.perf_counter() - due
            item = proc.next_item()
            start_unix = time.time()
            timing = stream_once(proc.client, proc.path, proc.body(item), self.headers)
            proc.record(self.stream.tenant, step, start_unix, lag, timing)
        finally:
            proc.outstanding -= 1
        if self.pacer is None and self.stream.think_s > 0:
            self._delay = self.stream.think_s
