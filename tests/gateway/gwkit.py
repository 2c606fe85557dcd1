"""Helpers shared by the gateway tests (imported as a plain module: tests/ is not a package)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

ADMIN_TOKEN = "test-admin-token"


def plan(**overrides: Any) -> dict[str, Any]:
    base = {
        "requests_per_minute": 100_000,
        "tokens_per_minute": 10_000_000,
        "tokens_per_month": 1_000_000_000,
        "max_concurrent_requests": 1000,
        "default_max_tokens": 16,
    }
    base.update(overrides)
    return base


@dataclass
class GatewayHandle:
    url: str
    config_path: Path
    clients: list[openai.OpenAI] = field(default_factory=list)
    stopper: Callable[[], bool] | None = None  # set by the in-process `gateway` fixture

    def stop(self) -> bool:
        """Stop an in-process gateway now; True when its server thread has exited."""
        assert self.stopper is not None, "only in-process gateways can be stopped this way"
        return self.stopper()

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)

    def new_key(self, tenant: str) -> str:
        with self.admin() as c:
            r = c.post(f"/admin/v1/tenants/{tenant}/keys", json={"name": "test"})
            assert r.status_code == 201, r.text
            return str(r.json()["key"])

    def client(self, key: str, **kw: Any) -> openai.OpenAI:
        """An SDK client closed when the test ends."""
        c = openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **kw)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def usage(self, tenant: str) -> dict[str, Any]:
        with self.admin() as c:
            r = c.get(f"/admin/v1/tenants/{tenant}/usage")
            assert r.status_code == 200, r.text
            return dict(r.json())
