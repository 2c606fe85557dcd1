"""One owner per request: what a completion request acquires, one object releases and settles.

An admitted request holds a concurrency lease and a token reservation in Redis, maybe a slot in
the fair queue, the in-flight gauge, a backend's outstanding count and an open upstream
response; a long one also runs a heartbeat. `RequestOwner` acquires each of these through its
own methods, registers the release as it goes (a plain list of callbacks: an `AsyncExitStack`
measured 5.5 us per request for three synchronous releases, a list 0.3 us), and `finish()`
releases them all (last acquired first, each even if an earlier one raised) and then settles
exactly once, whichever way the request ends:
a normal answer, an error before or after the backend, a client disconnect mid-stream, a
cancellation, or an exception nobody expected. `api.py` opens the owner with `async with` and
can then read top to bottom without a release on any error path.

The heartbeat costs a short request nothing but a set insert: an admitted owner joins
`rt.live`, and one loop per process (`heartbeats`, every quarter interval) beats for the owners
whose last beat is `lease_heartbeat_s` old. A request that ends first (nearly all of them) never
makes a third Redis call, and no timer is armed per request (`call_later` + `cancel` measured
3.2 us). One that runs longer renews its lease about every interval and checkpoints its running
usage in the same call, so that if this process dies a survivor can settle the request from the
last checkpoint (`recovery.py`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from gateway.auth import Principal
from gateway.config import EffectivePlan, Model
from gateway.costs import Usage, cost_micro_usd
from gateway.errors import (
    BackendUnavailable,
    DeadlineUnmeetable,
    GatewayError,
    Overloaded,
    RedisUnavailable,
    rate_limit_headers,
    rejection,
)
from gateway.fairness import Share, weighted_service
from gateway.fairqueue import FairQueue, QueueFull, QueueTimeout, Refused, Ticket
from gateway.metering import micro_to_usd
from gateway.proxy import UpstreamCall, open_upstream
from gateway.ratelimit import SettleRecord
from gateway.routing import Route
from gateway.scriptconn import may_have_run

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("gateway.lifecycle")


@dataclass(slots=True)
class Admission:
    """What admit.lua granted one request: everything settle needs besides the usage."""

    lease_id: str
    reserved: int
    month: str
    prompt_estimate: int


class RequestOwner:
    """Holds one completion request's resources; `finish()` releases them and settles once."""

    # Slots: one owner is built per request, and its twenty attributes are set and read on the
    # request path (valgrind counts fewer instructions per request than with an instance dict).
    __slots__ = (
        "_finished",
        "_releases",
        "_served",
        "admission",
        "entered",
        "fair_ticket",
        "last_beat",
        "model",
        "model_name",
        "plan",
        "principal",
        "progress",
        "region",
        "request_id",
        "route",
        "rt",
        "started",
        "tenant",
    )

    def __init__(self, rt: Runtime, request_id: str) -> None:
        self.rt = rt
        self.request_id = request_id
        self.started = time.perf_counter()
        self.principal: Principal | None = None
        self.tenant = ""  # the principal's tenant, once known
        self.plan: EffectivePlan | None = None
        self.model_name = ""
        self.model: Model | None = None
        self.admission: Admission | None = None  # None: not admitted, or served fail-open
        self.entered = False  # past admission (admitted or fail-open): counts in the metrics
        self.progress: Callable[[], Usage] | None = None  # running usage, read by the heartbeat
        self.route: Route | None = None  # version and allowed regions (versions.py, routing.py)
        self.region = ""  # region of the backend reached, for metrics and the usage event
        self._releases: list[Callable[[], object]] = []  # run last-first by finish()
        self._finished = False
        self.last_beat = 0.0  # monotonic time of admission or of the last heartbeat
        self.fair_ticket: Ticket | None = None  # a fair-queue slot, returned with the served tokens
        self._served: tuple[int, int] = (0, 0)  # (prompt, completion) tokens, for that return

    async def __aenter__(self) -> RequestOwner:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._finished:
            return
        if isinstance(exc, asyncio.CancelledError):
            status = 499  # the client went away (the server cancelled the handler)
        else:
            status = exc.status if isinstance(exc, GatewayError) else 500
        # Shielded: a cancelled handler must still release its lease and settle.
        await asyncio.shield(self.finish(None, status))

    # -- acquiring, in the order a request goes -------------------------------------------------
    def identify(self, principal: Principal, model_name: str, model: Model, plan: EffectivePlan) -> None:
        self.principal, self.model_name, self.model, self.plan = principal, model_name, model, plan
        self.tenant = principal.tenant

    async def admit(self, reserve: int, prompt_estimate: int, need: int | None = None) -> dict[str, str]:
        """admit.lua (one round trip): returns the x-ratelimit headers; raises the 429 or 503.

        `reserve` is taken from the bucket and quota; `need` (default `reserve`) must be there.
        """
        rt, plan, tenant = self.rt, self.plan, self.tenant
        assert plan is not None and self.principal is not None
        lease_id = os.urandom(8).hex()
        try:
            ta = time.perf_counter()
            decision = await rt.limiter.admit(
                tenant,
                plan,
                reserve,
                lease_id,
                request_id=self.request_id,
                key_id=self.principal.key_id,
                model=self.model_name,
                prompt_estimate=prompt_estimate,
                need=need,
            )
            rt.metrics.admission_seconds.observe(time.perf_counter() - ta)
            rt.redis_answered()
        except RedisError as exc:
            rt.redis_failed("admit", exc)
            if may_have_run(exc):  # admit.lua may have run, only its reply lost: undo it by lease
                # id (a no-op if it did not run; spooled and replayed while Redis is away)
                rel = SettleRecord.release_of(
                    tenant, plan, lease_id, self.request_id, self.principal.key_id, self.model_name
                )
                try:
                    await rt.limiter.settle(rel)
                except Exception:
                    rt.spool_settle(rel)
            if rt.settings.redis_failure_mode == "closed":
                raise RedisUnavailable("Rate limiting is unavailable: Redis is unreachable.") from None
            rt.metrics.fail_open.inc()
            self.entered = True
            return {}
        rt.metrics.child(rt.metrics.quota_remaining, tenant).set(decision.quota_remaining)
        if not decision.allowed:
            rt.metrics.rate_limited.labels(tenant, decision.limit).inc()
            rt.metrics.requests.labels(tenant, self.model_name, "429").inc()
            raise rejection(decision, tenant)
        self.admission = Admission(lease_id, reserve, decision.month, prompt_estimate)
        self.entered = True
        self.last_beat = time.monotonic()
        rt.live.add(self)  # from here on `heartbeats` keeps the lease alive
        return rate_limit_headers(decision)

    async def wait_for_slot(self, queue: FairQueue, cost: int, deadline_ms: float | None = None) -> float:
        """Pass the model's fair queue; returns the seconds waited.

        Not saturated: returns at once (no I/O). Saturated: a sheddable plan gets 429 and a
        request whose deadline is shorter than the predicted wait 503, both at once with
        retry-after; others wait in tier + virtual-token-counter order (gateway/fairness.py)
        for at most the plan's queue time. The slot goes back with the served tokens in `finish`.
        """
        rt = self.rt
        plan = self.plan
        assert plan is not None
        max_queue_s = plan.max_queue_s or rt.settings.queue_timeout_s
        share = Share(plan.fair_share_weight, plan.tier, plan.sheddable, max_queue_s)
        deadline = None if deadline_ms is None else queue.clock() + deadline_ms / 1000
        prompt = self.admission.prompt_estimate if self.admission else cost
        t = time.perf_counter()
        try:
            # Not saturated (the usual case): `enter` grants the slot at once, with no task or timer.
            entered = queue.enter(self.tenant, cost, share=share, input_estimate=prompt, deadline_s=deadline)
            ticket = (
                entered
                if isinstance(entered, Ticket)
                else await asyncio.wait_for(queue.wait(entered), max_queue_s)
            )
        except Refused as exc:
            v = exc.verdict
            retry = {"retry-after": str(max(1, math.ceil(v.retry_after_s)))}
            if v.action == "shed":
                raise Overloaded(
                    f"Model {self.model_name!r} is saturated and plan {plan.name!r} is sheddable; "
                    f"retry after {retry['retry-after']}s.",
                    headers=retry,
                ) from None
            raise DeadlineUnmeetable(
                f"Predicted wait {v.predicted_wait_s:.1f}s exceeds the request's deadline of "
                f"{deadline_ms:g} ms (x-servelab-deadline-ms).",
                headers=retry,
            ) from None
        except (TimeoutError, QueueFull, QueueTimeout) as exc:
            raise BackendUnavailable(
                f"Model {self.model_name!r} is saturated: no backend slot within "
                f"{max_queue_s:g}s ({type(exc).__name__})."
            ) from None
        self.fair_ticket = ticket
        self._releases.append(lambda: queue.release(ticket, *self._served))
        waited = time.perf_counter() - t
        rt.metrics.child(rt.metrics.queue_wait_seconds, self.tenant).observe(waited)
        return waited

    async def open_upstream(self, path: str, body: bytes) -> UpstreamCall:
        """Route to a backend and POST; the open response is released by `finish()`."""
        rt = self.rt
        rt.metrics.in_flight.inc()
        self._releases.append(rt.metrics.in_flight.dec)
        call = await open_upstream(
            rt.upstream,
            rt.pool,
            self.model_name,
            path,
            body,
            self.request_id,
            lambda b, kind: rt.metrics.backend_errors.labels(b.url, kind).inc(),
            self.route,
        )
        self.region = call.backend.region or ""
        self._releases.append(call.release)
        return call

    # -- the heartbeat --------------------------------------------------------------------------
    async def beat(self) -> None:
        """One heartbeat: renew the lease and checkpoint the usage so far (never raises)."""
        rt, adm = self.rt, self.admission
        if adm is None or self._finished:
            return
        usage = self.progress() if self.progress else Usage(adm.prompt_estimate, 0)
        try:
            beat = await rt.limiter.heartbeat(self.tenant, adm.lease_id, usage)
            rt.redis_answered()
        except RedisError as exc:
            rt.redis_failed("heartbeat", exc)
            return
        rt.metrics.heartbeats.inc()
        if not beat.renewed:
            rt.live.discard(self)
            log.warning(
                "Lease already settled by another replica's recovery; heartbeat stopped: "
                "tenant=%s request_id=%s",
                self.tenant,
                self.request_id,
            )

    # -- the end --------------------------------------------------------------------------------
    async def finish(self, usage: Usage | None, status: int) -> None:
        """Release everything, then settle (once; later calls do nothing). Never raises.

        `usage` None means nothing was served: the reservation is refunded, nothing is metered.
        """
        if self._finished:
            return
        self._finished = True
        self.rt.live.discard(self)
        if usage is not None:
            self._served = (usage.prompt_tokens, usage.completion_tokens)
        for release in reversed(self._releases):
            try:
                release()
            except Exception:  # a release must not stop the others or the settle: log it, go on
                log.exception("Releasing a request's resource failed: request_id=%s", self.request_id)
        self._releases.clear()
        if not self.entered:
            return
        rt, tenant, model = self.rt, self.tenant, self.model_name
        m = rt.metrics
        m.child(m.requests, tenant, model, str(status)).inc()
        if self.route is not None:
            m.child(m.version_requests, model, self.route.version, self.region, str(status)).inc()
        if usage is not None:
            m.child(m.prompt_tokens, tenant, model).inc(usage.prompt_tokens)
            m.child(m.completion_tokens, tenant, model).inc(usage.completion_tokens)
        if self.admission is not None:
            await settle_record(rt, self._settle_record(self.admission, usage, status))

    def _settle_record(self, adm: Admission, usage: Usage | None, status: int) -> SettleRecord:
        plan, model = self.plan, self.model
        assert plan is not None and model is not None and self.principal is not None
        cost = (
            cost_micro_usd(usage, model.input_price_per_million_usd, model.output_price_per_million_usd)
            if usage
            else 0
        )
        fair = (0.0, 0.0) if self.fair_ticket is None else self._fair_fields(usage)
        return SettleRecord(
            tenant=self.tenant,
            tokens_per_minute=plan.tokens_per_minute,
            tokens_per_month=plan.tokens_per_month,
            lease_id=adm.lease_id,
            reserved=adm.reserved,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            served=usage is not None,
            month=adm.month,
            model=self.model_name,
            cost_micro=cost,
            request_id=self.request_id,
            key_id=self.principal.key_id,
            latency_ms=(time.perf_counter() - self.started) * 1000,
            status=status,
            version=self.route.version if self.route else "",
            region=self.region,
            fair_charge=fair[0],
            fair_floor=fair[1],
        )

    def _fair_fields(self, usage: Usage | None) -> tuple[float, float]:
        """The virtual token counter's charge and lift floor for settle.lua (0 without a queue)."""
        queue = self.rt.queues.get(self.model_name)
        if self.fair_ticket is None or queue is None or usage is None or self.plan is None:
            return 0.0, 0.0
        charge = weighted_service(usage.prompt_tokens, usage.completion_tokens) / self.plan.fair_share_weight
        return charge, queue.policy.counters.floor.get(self.tenant, 0.0)


async def settle_record(rt: Runtime, rec: SettleRecord) -> None:
    """Run settle.lua for one record; if Redis cannot be reached, spool it durably. Never raises."""
    m = rt.metrics
    try:
        settled = await rt.limiter.settle(rec)
        rt.redis_answered()
    except RedisError as exc:
        rt.redis_failed("settle", exc)
        rt.spool_settle(rec)
        return
    except Exception:
        log.exception("Settle failed unexpectedly: tenant=%s request_id=%s", rec.tenant, rec.request_id)
        rt.spool_settle(rec)
        return
    m.child(m.quota_remaining, rec.tenant).set(settled.quota_remaining)
    if settled.counted == 1:
        # The same integer settle.lua added to usage:{tenant}, so this agrees with /v1/usage.
        m.child(m.cost_usd, rec.tenant, rec.model).inc(micro_to_usd(rec.cost_micro))


async def heartbeats(rt: Runtime) -> None:
    """Run forever: beat for every live request whose last beat is `heartbeat_s` old."""
    interval = rt.heartbeat_s
    while True:
        await asyncio.sleep(interval / 4)
        now = time.monotonic()
        due = [o for o in rt.live if now - o.last_beat >= interval]
        for owner in due:
            owner.last_beat = now
        if due:
            await asyncio.gather(*(o.beat() for o in due))
