"""Rates and percentiles as Prometheus computes them, with numbers worked out by hand."""

from __future__ import annotations

import math

from servelab import promparse as pp

BEFORE = """
# TYPE x_seconds histogram
x_seconds_bucket{le="0.1"} 1
x_seconds_bucket{le="0.5"} 1
x_seconds_bucket{le="1.0"} 1
x_seconds_bucket{le="+Inf"} 1
x_seconds_sum 0.05
x_seconds_count 1
# TYPE req counter
req_total{tenant="a"} 10
req_total{tenant="b"} 100
"""
AFTER = """
# TYPE x_seconds histogram
x_seconds_bucket{le="0.1"} 3
x_seconds_bucket{le="0.5"} 7
x_seconds_bucket{le="1.0"} 9
x_seconds_bucket{le="+Inf"} 11
x_seconds_sum 9.0
x_seconds_count 11
# TYPE req counter
req_total{tenant="a"} 30
req_total{tenant="b"} 4
"""


def test_window_quantile_interpolates_inside_the_bucket_of_the_rank() -> None:
    prev, cur = pp.parse(BEFORE, t=0.0), pp.parse(AFTER, t=10.0)
    # window increases per bucket (cumulative): 0.1 -> 2, 0.5 -> 6, 1.0 -> 8, +Inf -> 10
    assert pp.bucket_increase(prev, cur, "x_seconds") == [
        (0.1, 2.0),
        (0.5, 6.0),
        (1.0, 8.0),
        (math.inf, 10.0),
    ]
    # p50: rank 5 falls in (0.1, 0.5], 3 of its 4 observations in: 0.1 + 0.4 * 3/4 = 0.4
    assert pp.window_quantile(0.5, prev, cur, "x_seconds") == 0.4
    # p10: rank 1 in the first bucket, which starts at 0: 0.1 * 1/2
    assert pp.window_quantile(0.1, prev, cur, "x_seconds") == 0.05
    # p95: rank 9.5 lies in +Inf: the highest finite bound, as Prometheus answers
    assert pp.window_quantile(0.95, prev, cur, "x_seconds") == 1.0


def test_rates_from_increases_and_a_reset_counts_from_zero() -> None:
    prev, cur = pp.parse(BEFORE, t=0.0), pp.parse(AFTER, t=10.0)
    assert pp.increase(prev, cur, "req_total", tenant="a") == 20
    assert pp.increase(prev, cur, "req_total", tenant="b") == 4  # 100 -> 4: restarted, 4 since
    assert pp.rate(prev, cur, "req_total") == 2.4
    assert pp.increase_by(prev, cur, "req_total", "tenant") == {"a": 20, "b": 4}


def test_empty_window_has_no_percentile_and_a_down_target_is_data() -> None:
    same = pp.parse(AFTER, t=0.0)
    assert math.isnan(pp.window_quantile(0.5, same, pp.parse(AFTER, t=1.0), "x_seconds"))
    down = pp.scrape("http://127.0.0.1:9/metrics", timeout_s=0.5)
    assert not down.ok and down.error
