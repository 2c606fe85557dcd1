"""`servelab top`: a live terminal view of a running stack, read only from its /metrics.

Every second it scrapes each gateway replica's and each backend's `/metrics` (in parallel, with
a short timeout, so one hung target cannot freeze the view) and shows what a Grafana board over
the last `--window` seconds would: rates from counter increases, percentiles from histogram
bucket increases (`servelab.promparse`, Prometheus's own rules). Gateway replicas are summed, so
the view is the platform's, not one replica's. Nothing here talks to Redis: spend and quota left
are the gateway's own counters (`servelab_gateway_cost_usd_total`, `..._quota_remaining_tokens`),
which is also why `top` works against any gateway URL (local stack, compose, a port-forward).

The event log compares each frame with the one before: a backend or gateway that stops (or
starts) answering, Redis going down or up as the gateways see it, requests served fail-open,
and the first requests shed.

`compute()` is a pure function of two sets of scrapes; the Live loop and the renderer are thin,
so the test can check the screen against its own scrapes of the same window.
"""

from __future__ import annotations

import faulthandler
import json
import math
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from servelab import promparse as pp
from servelab.promparse import Snapshot

GW = "servelab_gateway_"
TTFT = "vllm:time_to_first_token_seconds"
TPOT = "vllm:time_per_output_token_seconds"
# Requests the fair queue refused at once (shed when saturated, or a deadline it cannot meet);
# any other counter named *shed*_total counts too.
REFUSED = GW + "fair_refused_total"
SHED_MARKERS = ("shed", "fair_refused")


def fmt_s(x: float) -> str:
    """Seconds for people: 0.84 ms, 312 ms, 1.27 s; a dash when the window had no observation."""
    if math.isnan(x):
        return "-"
    if x < 0.01:
        return f"{x * 1000:.2f} ms"
    if x < 1:
        return f"{x * 1000:.0f} ms"
    return f"{x:.2f} s"


def fmt_rate(x: float) -> str:
    return f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def fmt_usd(x: float) -> str:
    return f"${x:.4f}" if x < 100 else f"${x:,.2f}"


@dataclass(frozen=True)
class TenantRow:
    tenant: str
    req_s: float
    tok_in_s: float
    tok_out_s: float
    limited: dict[str, float]
    queue_p95_s: float
    queued: float
    spend_usd: float
    quota_left: float | None


@dataclass(frozen=True)
class BackendRow:
    url: str
    up: bool
    running: float
    waiting: float
    kv: float
    ttft_p50_s: float
    ttft_p95_s: float
    tpot_p50_s: float
    tpot_p95_s: float
    preemptions: float


@dataclass(frozen=True)
class GatewayRow:
    replicas_up: int
    replicas: int
    added_p50_s: float
    added_p99_s: float
    redis_up: bool | None
    fail_open: float
    in_flight: float
    shed: float


@dataclass(frozen=True)
class View:
    span_s: float
    tenants: list[TenantRow]
    backends: list[BackendRow]
    gateway: GatewayRow


def _sum(snaps: Sequence[Snapshot], fn: Callable[[Snapshot], float]) -> float:
    return sum(fn(s) for s in snaps if s.ok)


def compute(prev: dict[str, Snapshot], cur: dict[str, Snapshot], gateways: Sequence[str],
            backends: Sequence[str]) -> View:  # fmt: skip
    """The view over the window between two sets of scrapes (keyed by metrics URL)."""
    pairs = [(prev[u], cur[u]) for u in gateways if cur[u].ok and prev[u].ok]
    span = max((c.t - p.t for p, c in pairs), default=0.0)

    def inc(name: str, **match: str) -> float:
        return sum(pp.increase(p, c, name, **match) for p, c in pairs)

    def per_s(name: str, **match: str) -> float:
        return inc(name, **match) / span if span > 0 else 0.0

    def quantile(q: float, hist: str, **match: str) -> float:
        merged: dict[float, float] = {}
        for p, c in pairs:
            for le, n in pp.bucket_increase(p, c, hist, **match):
                merged[le] = merged.get(le, 0.0) + n
        return pp.histogram_quantile(q, merged.items())

    tenants = sorted(
        {t for _, c in pairs for t in c.by_label(GW + "requests_total", "tenant")}
        | {t for _, c in pairs for t in c.by_label(GW + "rate_limited_total", "tenant")}
    )
    rows = []
    for t in tenants:
        kinds = {
            k for p, c in pairs for k in pp.increase_by(p, c, GW + "rate_limited_total", "limit", tenant=t)
        }
        limited = {k: sum(pp.increase(p, c, GW + "rate_limited_total", tenant=t, limit=k) for p, c in pairs)
                   for k in kinds}  # fmt: skip
        # the fair queue's refusals (shed, deadline) are 429/503s too, counted by their reason
        reasons = {k for p, c in pairs for k in pp.increase_by(p, c, REFUSED, "reason", tenant=t)}
        for k in reasons:
            limited[k] = sum(pp.increase(p, c, REFUSED, tenant=t, reason=k) for p, c in pairs)
        quotas = [c.value(GW + "quota_remaining_tokens", tenant=t) for _, c in pairs
                  if c.by_label(GW + "quota_remaining_tokens", "tenant").get(t) is not None]  # fmt: skip
        rows.append(TenantRow(
            tenant=t,
            req_s=per_s(GW + "requests_total", tenant=t),
            tok_in_s=per_s(GW + "prompt_tokens_total", tenant=t),
            tok_out_s=per_s(GW + "completion_tokens_total", tenant=t),
            limited={k: v for k, v in limited.items() if v > 0},
            queue_p95_s=quantile(0.95, GW + "queue_wait_seconds", tenant=t),
            queued=sum(c.value(GW + "fair_queue_depth", tenant=t) for _, c in pairs),
            spend_usd=sum(c.value(GW + "cost_usd_total", tenant=t) for _, c in pairs),
            quota_left=min(quotas) if quotas else None,
        ))  # fmt: skip

    brows = []
    for url in backends:
        p, c = prev[url], cur[url]
        ok = c.ok and p.ok
        brows.append(BackendRow(
            url=url, up=c.ok,
            running=c.value("vllm:num_requests_running") if c.ok else math.nan,
            waiting=c.value("vllm:num_requests_waiting") if c.ok else math.nan,
            kv=c.value("vllm:gpu_cache_usage_perc") if c.ok else math.nan,
            ttft_p50_s=pp.window_quantile(0.5, p, c, TTFT) if ok else math.nan,
            ttft_p95_s=pp.window_quantile(0.95, p, c, TTFT) if ok else math.nan,
            tpot_p50_s=pp.window_quantile(0.5, p, c, TPOT) if ok else math.nan,
            tpot_p95_s=pp.window_quantile(0.95, p, c, TPOT) if ok else math.nan,
            preemptions=pp.increase(p, c, "vllm:num_preemptions_total") if ok else math.nan,
        ))  # fmt: skip

    up = [cur[u] for u in gateways if cur[u].ok]
    redis = [s.value(GW + "redis_up") for s in up if s.has(GW + "redis_up")]
    shed_names = {n for _, c in pairs for n, _ in c.samples if n.startswith(GW) and n.endswith("_total")
                  and any(m in n for m in SHED_MARKERS)}  # fmt: skip
    gw = GatewayRow(
        replicas_up=len(up), replicas=len(gateways),
        added_p50_s=quantile(0.5, GW + "overhead_seconds"),
        added_p99_s=quantile(0.99, GW + "overhead_seconds"),
        redis_up=(min(redis) >= 1) if redis else None,
        fail_open=inc(GW + "fail_open_requests_total"),
        in_flight=_sum(up, lambda s: s.value(GW + "in_flight_requests")),
        shed=sum(inc(n) for n in shed_names),
    )  # fmt: skip
    return View(span_s=span, tenants=rows, backends=brows, gateway=gw)


@dataclass
class EventLog:
    """Changes between consecutive frames, newest last, at most `size` lines."""

    size: int = 8
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    _last: View | None = None

    def update(self, view: View, stamp: str) -> None:
        last = self._last
        self._last = view
        if last is None:
            return
        for old, new in zip(last.backends, view.backends, strict=False):
            if old.up != new.up:
                url = new.url.removesuffix("/metrics")
                self.lines.append(f"{stamp} backend {url} {'up' if new.up else 'DOWN'}")
        if last.gateway.replicas_up != view.gateway.replicas_up:
            self.lines.append(
                f"{stamp} gateways answering: {view.gateway.replicas_up}/{view.gateway.replicas}"
            )
        if last.gateway.redis_up is not None and view.gateway.redis_up is not None and \
                last.gateway.redis_up != view.gateway.redis_up:  # fmt: skip
            self.lines.append(
                f"{stamp} Redis {'up' if view.gateway.redis_up else 'DOWN'} (as the gateways see it)"
            )
        if view.gateway.fail_open > last.gateway.fail_open:
            self.lines.append(f"{stamp} serving fail-open: {view.gateway.fail_open:.0f} requests unmetered")
        if last.gateway.shed == 0 and view.gateway.shed > 0:
            self.lines.append(f"{stamp} shedding started")
        if last.gateway.shed > 0 and view.gateway.shed == 0:
            self.lines.append(f"{stamp} shedding stopped")


def render(view: View, events: EventLog, frame: int, title: str, spares: Sequence[str] = ()) -> Group:
    head = Text(f"{title}   window {view.span_s:.1f} s   frame {frame}   (Ctrl-C quits)", style="bold")
    t = Table(title="tenants", title_justify="left", expand=False)
    for col in ("tenant", "req/s", "tok/s in", "tok/s out", "refused", "queue p95", "queued", "spend",
                "quota left"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("tenant", "refused") else "right")
    for r in view.tenants:
        limited = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.limited.items())) or "-"
        t.add_row(r.tenant, fmt_rate(r.req_s), fmt_rate(r.tok_in_s), fmt_rate(r.tok_out_s), limited,
                  fmt_s(r.queue_p95_s), f"{r.queued:.0f}", fmt_usd(r.spend_usd),
                  "-" if r.quota_left is None else f"{r.quota_left:,.0f}")  # fmt: skip
    b = Table(title="backends", title_justify="left")
    for col in ("backend", "state", "run", "wait", "KV %", "TTFT p50", "TTFT p95", "TPOT p50", "TPOT p95",
                "preempt"):  # fmt: skip
        b.add_column(col, justify="left" if col in ("backend", "state") else "right")
    for x in view.backends:
        name = x.url.removesuffix("/metrics")
        if not x.up:
            state = Text("spare", style="dim") if x.url in spares else Text("DOWN", style="red")
            b.add_row(name, state, *["-"] * 8)
            continue
        b.add_row(name, Text("up", style="green"), f"{x.running:.0f}", f"{x.waiting:.0f}",
                  f"{100 * x.kv:.1f}", fmt_s(x.ttft_p50_s), fmt_s(x.ttft_p95_s), fmt_s(x.tpot_p50_s),
                  fmt_s(x.tpot_p95_s),
                  f"{x.preemptions:.0f}")  # fmt: skip
    g = view.gateway
    redis = "-" if g.redis_up is None else ("up" if g.redis_up else "DOWN")
    gw = Text(f"gateways up {g.replicas_up}/{g.replicas}   added latency p50 {fmt_s(g.added_p50_s)}  "
              f"p99 {fmt_s(g.added_p99_s)}   in flight {g.in_flight:.0f}   Redis {redis}   "
              f"fail-open {g.fail_open:.0f}   shed {g.shed:.0f}")  # fmt: skip
    log = Text("\n".join(events.lines) or "(no events yet)")
    # The frame number again at the bottom: a reader of the terminal (a person, or the pty test)
    # can tell a finished frame from one whose lower rows are still the previous frame's.
    tail = Text(f"end of frame {frame}", style="dim")
    return Group(head, t, b, Text("gateway", style="bold"), gw, Text("events", style="bold"), log, tail)


@dataclass(frozen=True)
class Targets:
    gateways: list[str]
    backends: list[str]
    title: str
    spares: list[str] = field(default_factory=list)

    @classmethod
    def resolve(cls, gateways: Sequence[str], backends: Sequence[str], state_dir: Path) -> Targets:
        """URLs given on the command line, else the local stack's stack.json."""
        if gateways:
            return cls([_metrics_url(u) for u in gateways], [_metrics_url(u) for u in backends],
                       ", ".join(gateways))  # fmt: skip
        path = state_dir / "stack.json"
        if not path.exists():
            raise FileNotFoundError(
                f"no --gateway given and no {path}: start a stack (`servelab up`) or pass --gateway URL"
            )
        info = json.loads(path.read_text())
        urls = info.get("gateway_urls") or [info["gateway_url"]]
        models = info.get("models") or {info["model"]: info["backend_urls"]}
        back = [u for us in models.values() for u in us]
        spares = [_metrics_url(u) for u in info.get("spare_backend_urls", [])]
        title = f"local stack {state_dir}"
        return cls([_metrics_url(u) for u in urls], [_metrics_url(u) for u in back], title, spares)


def _metrics_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    return url if url.endswith("/metrics") else url + "/metrics"


def run(targets: Targets, window_s: float, refresh_s: float, frames: int = 0) -> None:
    """The Live loop: scrape every `refresh_s`, show the last `window_s`, stop on Ctrl-C or after `frames`."""
    from rich.console import Console
    from rich.live import Live

    # `kill -USR1 <pid>` prints every thread's stack to stderr: how a top that does not quit
    # shows where it is stuck (the pty test sends it when Ctrl-C has not ended top in time).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    urls = [*targets.gateways, *targets.backends]
    history: deque[dict[str, Snapshot]] = deque()
    events = EventLog()
    console = Console()
    pool = ThreadPoolExecutor(max_workers=min(16, len(urls)))
    frame = 0
    try:
        # The alternate screen, as top(1) uses: the terminal's scrollback is back as it was on exit.
        with Live(console=console, screen=console.is_terminal, auto_refresh=False, transient=False) as live:
            next_at = time.monotonic()
            while True:
                snaps = dict(zip(urls, pool.map(lambda u: pp.scrape(u, timeout_s=min(1.0, refresh_s)), urls),
                                 strict=True))  # fmt: skip
                history.append(snaps)
                now = time.monotonic()
                while len(history) > 2 and now - _t(history[1]) >= window_s:
                    history.popleft()
                frame += 1
                view = compute(history[0], snaps, targets.gateways, targets.backends)
                events.update(view, time.strftime("%H:%M:%S"))
                shown = render(view, events, frame, targets.title, targets.spares)
                if console.is_terminal:
                    live.update(shown, refresh=True)
                elif frames and frame >= frames:  # piped: print the last frame once, as text
                    console.print(shown)
                if frames and frame >= frames:
                    break
                next_at += refresh_s
                time.sleep(max(0.0, next_at - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _t(snaps: dict[str, Snapshot]) -> float:
    return min(s.t for s in snaps.values())


def register(app: typer.Typer) -> None:
    @app.command()
    def top(
        gateway: Annotated[
            list[str],
            typer.Option(
                help="Gateway base URL (repeat for replicas). Default: the local stack's stack.json."
            ),
        ] = [],  # noqa: B006
        backend: Annotated[
            list[str],
            typer.Option(help="Backend base URL whose /metrics to show (repeatable; with --gateway)."),
        ] = [],  # noqa: B006
        state_dir: Annotated[
            Path, typer.Option(help="The local stack's folder (from `servelab up`).")
        ] = Path("runs/stack"),
        window: Annotated[
            float, typer.Option(min=1.0, help="Seconds that rates and percentiles cover.")
        ] = 10.0,
        refresh: Annotated[float, typer.Option(min=0.1, help="Seconds between scrapes.")] = 1.0,
        frames: Annotated[
            int, typer.Option(min=0, help="Stop after this many frames (0: until Ctrl-C).")
        ] = 0,
    ) -> None:
        """Live view of a running stack: tenants, backends, gateway, events (from /metrics; Ctrl-C quits)."""
        try:
            targets = Targets.resolve(gateway, backend, state_dir)
        except FileNotFoundError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        run(targets, window, refresh, frames)
