"""What every scenario shares: the stack it runs against, its checks, and the verdict table.

A scenario is a function `run(ctx) -> list[Check]`. Each `Check` says what was expected, what was
measured and whether that held; the verdict is the table of checks, and the command exits non-zero
when any check failed. A check that could not be measured (a precondition missing) fails too and
says why: a verdict is never assumed.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from servelab import promparse as pp
from servelab.stack import StackControl


@dataclass(frozen=True)
class Check:
    name: str
    expected: str
    measured: str
    ok: bool


@dataclass
class Context:
    """A running stack, the scenario's length setting, and a console to narrate on."""

    stack: StackControl
    short: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=True))
    t0: float = field(default_factory=time.monotonic)

    @property
    def info(self) -> dict[str, Any]:
        return self.stack.info

    @property
    def gateway(self) -> str:
        return str(self.info["gateway_url"])

    @property
    def model(self) -> str:
        return str(self.info["model"])

    def key(self, tenant: str) -> str:
        keys = self.info["keys"]
        if tenant not in keys:
            raise Precondition(f"tenant {tenant!r} has no key in stack.json (tenants: {', '.join(keys)})")
        return str(keys[tenant])

    def say(self, msg: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.t0:6.1f}s[/] {msg}")

    def watch(self, msg: str) -> None:
        self.console.print(f"[bold cyan]watch in `servelab top`:[/] {msg}")

    def admin(self, path: str) -> dict[str, Any]:
        req = urllib.request.Request(
            self.gateway + path, headers={"authorization": f"Bearer {self.info['admin_token']}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def usage_totals(self, tenant: str) -> dict[str, int]:
        return {
            k: int(v)
            for k, v in self.admin(f"/admin/v1/tenants/{tenant}/usage?events=1")["totals"].items()
            if k != "cost_usd"
        }

    def usage_events(self, tenant: str, n: int = 1000) -> dict[str, dict[str, str]]:
        """The tenant's newest usage events by request id."""
        events = self.admin(f"/admin/v1/tenants/{tenant}/usage?events={n}")["recent_events"]
        return {e["request_id"]: e for e in events}

    def scrape_gateways(self) -> list[pp.Snapshot]:
        return [pp.scrape(u + "/metrics") for u in self.info.get("gateway_urls", [self.gateway])]

    def backend_names(self) -> dict[str, str]:
        """Backend URL -> process name, for the main model's replicas (spares included)."""
        return {
            c["url"]: n
            for n, c in self.info.get("children", {}).items()
            if n.startswith("sim-") and n != "sim-m2"
        }

    def running_backends(self) -> list[str]:
        return [
            c["url"]
            for n, c in self.info.get("children", {}).items()
            if n.startswith("sim-") and n != "sim-m2" and c.get("pid")
        ]

    def spare_backends(self) -> list[str]:
        return [
            c["url"]
            for n, c in self.info.get("children", {}).items()
            if n.startswith("sim-") and n != "sim-m2" and not c.get("pid")
        ]


class Precondition(Exception):
    """The stack cannot run this scenario as it is; the message says how to start one that can."""


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    needs: str
    run: Callable[[Context], list[Check]]


def show(name: str, checks: list[Check], console: Console) -> bool:
    table = Table(title=f"scenario {name}: verdict", title_justify="left")
    for col in ("check", "expected", "measured", "result"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, c.expected, c.measured, "[green]PASS[/]" if c.ok else "[red]FAIL[/]")
    console.print(table)
    ok = bool(checks) and all(c.ok for c in checks)
    console.print(
        f"[bold]{name}: {'[green]expected behaviour seen' if ok else '[red]expected behaviour NOT seen'}[/]"
    )
    return ok


def write_json(path: Path, name: str, checks: list[Check], ok: bool) -> None:
    path.write_text(json.dumps({"scenario": name, "ok": ok, "checks": [asdict(c) for c in checks]}, indent=2))


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values by nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]
