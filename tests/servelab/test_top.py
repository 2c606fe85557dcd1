"""`servelab top` under a pseudo-terminal shows what /metrics says over the same window.

The test scrapes the gateway and the backend itself before `top` starts and after the load ends
(nothing else talks to the stack in between), waits for `top` to draw frames whose scrapes are
later than its own, and compares the screen, cell by cell, with its own arithmetic over the same
two scrapes: 429 counts per limit, spend, quota left, token rates times the window shown, TTFT and
TPOT percentiles from the backend's bucket increases and the gateway's added latency percentiles.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from ptyscreen import PtyScreen

from servelab import promparse as pp
from servelab.procs import free_port
from servelab.stack import Stack, StackConfig
from servelab.top import GW, TPOT, TTFT, fmt_s, fmt_usd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    cfg = StackConfig(
        state_dir=tmp_path_factory.mktemp("stack"),
        gateway_port=free_port(),
        backend_port=free_port(),
        ready_timeout_s=90,
    )
    with Stack(cfg) as s:
        yield s


def _settled(url: str) -> pp.Snapshot:
    """A scrape after which the counters no longer move (settles land just after the last byte)."""
    last = pp.scrape(url)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.3)
        cur = pp.scrape(url)
        counters = {k: v for k, v in cur.samples.items() if k[0].endswith(("_total", "_count", "_bucket"))}
        if counters == {k: v for k, v in last.samples.items() if k in counters}:
            return cur
        last = cur
    raise AssertionError(f"{url} counters still moving after 20 s")


def _row(screen: str, first_cell: str) -> list[str]:
    for line in screen.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1] == first_cell:
            return cells[1:-1]
    raise AssertionError(f"no row {first_cell!r} on screen:\n{screen}")


def _frame(screen: str) -> int:
    """The number of the frame on screen once it is drawn whole (its header and its last line
    agree), else 0: a frame caught mid-redraw has the new header over the previous frame's rows."""
    words = screen.split()
    numbers = [int(nxt) for word, nxt in itertools.pairwise(words) if word == "frame" and nxt.isdigit()]
    if len(numbers) >= 2 and numbers[0] == numbers[-1]:
        return numbers[0]
    return 0


def _started(screen: str) -> int:
    """The newest frame begun on screen (its header), drawn whole or not."""
    words = screen.split()
    return next((int(n) for w, n in itertools.pairwise(words) if w == "frame" and n.isdigit()), 0)


def test_top_screen_equals_metrics_over_the_same_window(stack: Stack, tmp_path: Path) -> None:
    info = stack.info
    gw_m, be_m = info["gateway_url"] + "/metrics", info["backend_urls"][0] + "/metrics"
    before_gw, before_be = pp.scrape(gw_m), pp.scrape(be_m)
    screen = PtyScreen(
        [
            sys.executable,
            "-m",
            "servelab.cli",
            "top",
            "--state-dir",
            str(stack.state),
            "--window",
            "600",
            "--refresh",
            "0.5",
        ],
        cols=170,
        rows=50,
    )
    try:
        screen.wait_for(lambda t: _frame(t) >= 1, 60, "the first frame")

        acme = openai.OpenAI(base_url=info["gateway_url"] + "/v1", api_key=info["keys"]["acme"])

        def streams() -> None:
            for _ in range(3):
                out = acme.chat.completions.create(
                    model=info["model"],
                    messages=[{"role": "user", "content": "tell me a story"}],
                    max_tokens=24,
                    stream=True,
                )
                for _chunk in out:
                    pass

        workers = [threading.Thread(target=streams) for _ in range(4)]
        for w in workers:
            w.start()
        tiny = openai.OpenAI(
            base_url=info["gateway_url"] + "/v1", api_key=info["keys"]["tiny"], max_retries=0
        )
        limited = 0
        for _ in range(9):
            try:
                tiny.chat.completions.create(
                    model=info["model"], messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
            except openai.RateLimitError:
                limited += 1
        for w in workers:
            w.join(timeout=120)
        assert limited > 0, "the tight plan let 9 quick requests through: the test needs 429s"

        after_gw, after_be = _settled(gw_m), _settled(be_m)
        seen = _started(screen.drain())
        text = screen.wait_for(lambda t: _frame(t) >= seen + 2, 30, "two frames after the load")
        span = float(text.split("window", 1)[1].split()[0])

        # tiny: 429s by limit, and every cell that is a plain counter or gauge
        tiny_row = _row(text, "tiny")
        expected = pp.increase_by(before_gw, after_gw, GW + "rate_limited_total", "limit", tenant="tiny")
        shown = dict(part.rsplit(" ", 1) for part in tiny_row[4].split(", "))
        assert {k: float(v) for k, v in shown.items()} == {k: v for k, v in expected.items() if v > 0}
        assert sum(expected.values()) == limited

        acme_row = _row(text, "acme")
        assert acme_row[7] == fmt_usd(after_gw.value(GW + "cost_usd_total", tenant="acme"))
        assert acme_row[8] == f"{after_gw.value(GW + 'quota_remaining_tokens', tenant='acme'):,.0f}"
        for col, name in ((1, "requests_total"), (2, "prompt_tokens_total"), (3, "completion_tokens_total")):
            total = pp.increase(before_gw, after_gw, GW + name, tenant="acme")
            assert total > 0
            assert float(acme_row[col].replace(",", "")) * span == pytest.approx(
                total, rel=0.03, abs=0.05 * span
            )

        # the backend's TTFT/TPOT percentiles over the window, from its own bucket increases
        be_row = _row(text, info["backend_urls"][0])
        assert be_row[1] == "up"
        assert be_row[5:9] == [
            fmt_s(pp.window_quantile(0.5, before_be, after_be, TTFT)),
            fmt_s(pp.window_quantile(0.95, before_be, after_be, TTFT)),
            fmt_s(pp.window_quantile(0.5, before_be, after_be, TPOT)),
            fmt_s(pp.window_quantile(0.95, before_be, after_be, TPOT)),
        ]
        assert be_row[5] != "-"
        p50 = pp.window_quantile(0.5, before_gw, after_gw, GW + "overhead_seconds")
        added = f"added latency p50 {fmt_s(p50)}"
        assert added in text, [ln for ln in text.splitlines() if "added" in ln]

        assert screen.interrupt() == 0, "Ctrl-C should end top cleanly"
    finally:
        screen.close()
