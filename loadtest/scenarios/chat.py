"""Locustfile `chat`: steady open-loop chat traffic at the asked rate (or N closed-loop users).

Run through `servelab loadtest chat ...`, which writes the run config this file's user reads.
"""

from __future__ import annotations

from loadtest.users import LlmUser

__all__ = ["LlmUser"]
