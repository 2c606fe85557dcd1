"""Locustfile `ratelimit`: every tenant offered more than its limit, open loop.

The report compares each tenant's admitted (HTTP 200) requests and tokens per minute, measured
after its bucket's burst was spent, with the configured limits (report.py, ratelimit section).
"""

from __future__ import annotations

from loadtest.users import LlmUser

__all__ = ["LlmUser"]
