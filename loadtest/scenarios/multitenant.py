"""Locustfile `multitenant`: one stream per tenant key; the noisy tenant's stream floods.

The per-tenant rates are in the run config (runner.py builds them); users are assigned to
tenants in proportion, each with its own pacer, so a flood from one tenant never slows the
arrivals of another on the client side.
"""

from __future__ import annotations

from loadtest.users import LlmUser

__all__ = ["LlmUser"]
