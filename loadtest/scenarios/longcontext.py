"""Locustfile `longcontext`: long prompts and short outputs, open loop (prefill-heavy)."""

from __future__ import annotations

from loadtest.users import LlmUser

__all__ = ["LlmUser"]
