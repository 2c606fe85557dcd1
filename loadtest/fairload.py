"""Multi-tenant load against a live OpenAI-compatible URL: the fairness scenario's load generator.

Each tenant has its own API key and sends on its own schedule (Poisson at a rate, or closed loop
with N outstanding: "backlogged"), streaming chat completions whose prompts have exact token
lengths (loadtest/workloads.py's builder, Mistral's tokenizer) and whose outputs run to
`max_tokens` (`ignore_eos`). Requests go round robin over the given gateway URLs (a load
balancer in front of replicas). Every request becomes a `LiveRecord` with the same fields the
offline simulator's records have, so loadtest/fairstats.py computes the same figures for both.

`run_workload(...)` is the importable entry point: one workload for N seconds against a URL
(or several) and a report per tenant. `workload_a(capacity_rps, duration_s)` builds the noisy
neighbour workload of the fairness scenario.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from loadtest.fairstats import FairnessReport, analyse
from server.sim.lengths import LengthDist
from server.sim.tenantfront import TenantSpec, TenantWorkload

A_IN, A_OUT = "uniform:256:768", "uniform:32:224"


@dataclass
class LiveRecord:
    tenant: str
    arrival_s: float
    input_len: int
    output_len: int
    outcome: str = (
        "ok"  # ok | shed (429) | refused (deadline 503) | timeout (other 503, client timeout) | error
    )
    first_token_s: float = math.nan
    finish_s: float = math.nan
    status: int = 200


def workload_a(capacity_rps: float, duration_s: float, seed: int = 0) -> TenantWorkload:
    """Three steady tenants at 0.2 x capacity, one noisy at 1.4 x (2 x capacity offered)."""
    tenants: dict[str, dict[str, object]] = {
        f"steady{i}": {"rate": 0.2 * capacity_rps, "input_len": A_IN, "output_len": A_OUT} for i in (1, 2, 3)
    }
    tenants["noisy"] = {"rate": 1.4 * capacity_rps, "input_len": A_IN, "output_len": A_OUT}
    return TenantWorkload.from_dict({"duration_s": duration_s, "seed": seed, "tenants": tenants})


class _Prompts:
    """A pool of exact-length prompts per tenant (built once: tokenizing is not free)."""

    def __init__(self, specs: Sequence[TenantSpec], seed: int, per_tenant: int = 48) -> None:
        from loadtest.workloads import MistralTokenCounter, exact_text

        counter = MistralTokenCounter()
        words = counter.single_token_words()
        rng = np.random.default_rng(seed)
        self.pool: dict[str, list[tuple[str, int]]] = {}
        for spec in specs:
            ins = LengthDist.parse(spec.input_len).sample(rng, per_tenant)
            outs = LengthDist.parse(spec.output_len).sample(rng, per_tenant)
            self.pool[spec.name] = [
                (exact_text(counter, words, rng, int(i)), int(o)) for i, o in zip(ins, outs, strict=True)
            ]


async def run_workload(
    urls: Sequence[str],
    keys: Mapping[str, str],
    workload: TenantWorkload,
    model: str,
    *,
    client_timeout_s: float = 60.0,
    deadline_ms: float | None = None,
    loop_lag: list[float] | None = None,
    schedule: Sequence[Scheduled] | None = None,
) -> list[LiveRecord]:
    """Send `workload` for its duration; wait for what is in flight; one record per request.

    With `loop_lag`, a probe appends how late each 50 ms sleep of this event loop woke up: a
    late loop delays arrivals and first-token times, so a run's figures are only as good as it.
    With `schedule` (e.g. `schedule_of` an offline run's records), the open-loop tenants send
    exactly those requests at those times instead of their own Poisson draws, so a live run and
    a simulated one see the same arrivals and lengths and differ only by the system.
    """
    prompts = _Prompts(workload.tenants, workload.seed)
    timed = _timed_prompts(schedule) if schedule is not None else []
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, connect=client_timeout_s, sock_read=client_timeout_s),
    )
    rr = itertools.cycle(urls)
    rng = np.random.default_rng(workload.seed + 1)
    records: list[LiveRecord] = []
    t0 = time.monotonic()
    end = t0 + workload.duration_s
    tasks: set[asyncio.Task[None]] = set()
    extra = {"x-servelab-deadline-ms": f"{deadline_ms:g}"} if deadline_ms else {}
    auth = {
        t: {"authorization": f"Bearer {k}", "content-type": "application/json", **extra}
        for t, k in keys.items()
    }

    async def one(tenant: str, asked: tuple[str, int] | None = None) -> None:
        pool = prompts.pool[tenant]
        prompt, out = asked or pool[int(rng.integers(0, len(pool)))]
        rec = LiveRecord(tenant, time.monotonic() - t0, 0, 0)
        records.append(rec)
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": out,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
        try:
            async with session.post(f"{next(rr)}/v1/chat/completions", json=body, headers=auth[tenant]) as r:
                if r.status != 200:
                    rec.status = r.status
                    rec.outcome = _outcome(r.status, await r.read())
                    return
                async for line in r.content:
                    if not line.startswith(b"data: {"):
                        continue
                    # Parse only what is needed: chunks until the first token, then the usage chunk
                    # (parsing every chunk made this client the busiest process of a live run).
                    if math.isnan(rec.first_token_s):
                        chunk = json.loads(line[6:])
                        choices = chunk.get("choices") or [{}]
                        if (choices[0].get("delta") or {}).get("content"):
                            rec.first_token_s = time.monotonic() - t0
                    if b'"usage"' in line and b'"usage":null' not in line:
                        usage = json.loads(line[6:]).get("usage")
                        if usage:
                            rec.input_len = usage["prompt_tokens"]
                            rec.output_len = usage["completion_tokens"]
            rec.finish_s = time.monotonic() - t0
        except (aiohttp.ClientError, TimeoutError):
            rec.outcome, rec.status = "timeout", 0

    def launch(tenant: str, asked: tuple[str, int] | None = None) -> asyncio.Task[None]:
        task = asyncio.create_task(one(tenant, asked))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def poisson(spec: TenantSpec) -> None:
        arr = np.random.default_rng(hash(spec.name) % 2**32 + workload.seed)
        at = t0
        while True:
            at += float(arr.exponential(1.0 / spec.rate))
            if at >= end:
                return
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            launch(spec.name)

    async def replay() -> None:
        for at, tenant, prompt, out in timed:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            launch(tenant, (prompt, out))

    async def closed(spec: TenantSpec) -> None:
        async def loop() -> None:
            while time.monotonic() < end:
                await launch(spec.name)

        await asyncio.gather(*(loop() for _ in range(spec.backlogged)))

    async def probe(out: list[float]) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            out.append(time.monotonic() - t - 0.05)

    prober = asyncio.create_task(probe(loop_lag)) if loop_lag is not None else None
    if schedule is None:
        await asyncio.gather(*(poisson(s) if s.rate > 0 else closed(s) for s in workload.tenants))
    else:
        await asyncio.gather(replay(), *(closed(s) for s in workload.tenants if s.backlogged))
    if prober is not None:
        prober.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=client_timeout_s + 5)
    await session.close()
    return records


Scheduled = tuple[float, str, int, int]  # arrival s, tenant, prompt tokens, max_tokens


def schedule_of(records: Sequence[Any], tenants: Sequence[TenantSpec]) -> list[Scheduled]:
    """The open-loop tenants' requests of an offline run (server/sim/tenantfront.py), in time order."""
    open_loop = {t.name for t in tenants if t.rate > 0}
    return sorted(
        (r.arrival_s, r.tenant, int(r.input_len), int(r.output_len)) for r in records if r.tenant in open_loop
    )


def _timed_prompts(schedule: Sequence[Scheduled]) -> list[tuple[float, str, str, int]]:
    """An exact-length prompt of its own for every request of a schedule (built before the clock starts)."""
    from loadtest.workloads import MistralTokenCounter, exact_text

    counter = MistralTokenCounter()
    words = counter.single_token_words()
    rng = np.random.default_rng(7)
    return [
        (at, tenant, exact_text(counter, words, rng, n_in), n_out) for at, tenant, n_in, n_out in schedule
    ]


def _outcome(status: int, body: bytes) -> str:
    """ok | shed (429) | refused (deadline 503) | timeout (other 503) | error, from an error answer."""
    if status == 429:
        return "shed"
    if status == 503:
        try:
            err = json.loads(body).get("error") or {}
        except (ValueError, AttributeError):
            err = {}
        return "refused" if isinstance(err, dict) and err.get("code") == "deadline_unmeetable" else "timeout"
    return "error"


def report(
    records: Sequence[LiveRecord],
    workload: TenantWorkload,
    warmup_s: float,
    backlogged: Sequence[str] = (),
    client_timeout_s: float = 60.0,
) -> FairnessReport:
    """The fairness figures of a live run (loadtest/fairstats.py)."""
    weights = {t.name: t.weight for t in workload.tenants}
    return analyse(
        records,
        weights=weights,
        end_s=workload.duration_s,
        warmup_s=warmup_s,
        backlogged=backlogged,
        client_timeout_s=client_timeout_s,
    )


def run_workload_a(
    urls: Sequence[str],
    keys: Mapping[str, str],
    model: str,
    capacity_rps: float,
    duration_s: float,
    warmup_s: float = 10.0,
) -> FairnessReport:
    """Workload A for `duration_s` against `urls`; keys for steady1..3 and noisy. Blocking."""
    wl = workload_a(capacity_rps, duration_s)
    records = asyncio.run(run_workload(urls, keys, wl, model))
    return report(records, wl, warmup_s, backlogged=("noisy",))
