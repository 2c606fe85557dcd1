"""Gateway commands: run a gateway, and manage tenants, keys and usage through the admin API.

    servelab gateway --config gateway/demo.yaml --host 127.0.0.1 --port 8080
    servelab tenants list | show TENANT | set-limits TENANT --requests-per-minute N ... | reset-limits TENANT
    servelab keys create TENANT [--name NAME] | list TENANT | revoke KEY_ID
    servelab usage TENANT [--month YYYY-MM]

The management commands are HTTP clients of /admin/v1 (`--url`, default http://127.0.0.1:8080;
`--admin-token`, default from SERVELAB_ADMIN_TOKEN), so they work against any replica, local or
remote, and never touch Redis directly.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

DEFAULT_URL = "http://127.0.0.1:8080"

UrlOpt = Annotated[str, typer.Option("--url", help="Gateway base URL.", envvar="SERVELAB_GATEWAY_URL")]
TokenOpt = Annotated[
    str,
    typer.Option(
        "--admin-token", help="Admin bearer token.", envvar="SERVELAB_ADMIN_TOKEN", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")]


def run_gateway(
    config: Path | None,
    host: str,
    port: int,
    redis_failure_mode: str | None = None,
    lease_ttl_s: float | None = None,
    log_level: str | None = None,
) -> None:
    """Start one gateway process (uvicorn, uvloop + httptools, access log off) until SIGTERM/Ctrl-C."""
    import uvicorn

    from gateway.app import create_app
    from gateway.config import ConfigError
    from gateway.settings import GatewaySettings

    overrides: dict[str, Any] = {}
    if config is not None:
        overrides["config_path"] = config
    if redis_failure_mode is not None:
        overrides["redis_failure_mode"] = redis_failure_mode
    if lease_ttl_s is not None:
        overrides["lease_ttl_s"] = lease_ttl_s
    if log_level is not None:
        overrides["log_level"] = log_level
    settings = GatewaySettings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(settings)
    except ConfigError as exc:
        print(f"error: invalid gateway config\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,  # bound to 127.0.0.1 or behind a known proxy: skip the per-request rewrite
        server_header=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )


def _client(url: str, token: str) -> Any:
    import httpx

    if not token:
        raise typer.BadParameter("no admin token: pass --admin-token or set SERVELAB_ADMIN_TOKEN")
    return httpx.Client(base_url=url.rstrip("/"), headers={"authorization": f"Bearer {token}"}, timeout=10.0)


def _call(url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import httpx

    try:
        with _client(url, token) as c:
            resp = c.request(method, path, json=body)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the gateway at {url}: {exc}", err=True)
        raise typer.Exit(1) from None
    data = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else resp.text
    if resp.status_code >= 400:
        msg = data.get("error", {}).get("message") if isinstance(data, dict) else data
        typer.echo(f"error: HTTP {resp.status_code}: {msg}", err=True)
        raise typer.Exit(1)
    return data


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    Console().print(table)


def register(app: typer.Typer) -> None:
    @app.command("gateway")
    def gateway_cmd(
        config: Annotated[Path | None, typer.Option(help="YAML config (default: the demo config).")] = None,
        host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port.")] = 8080,
        redis_failure_mode: Annotated[str | None, typer.Option(help="closed (503) or open.")] = None,
        lease_ttl_s: Annotated[float | None, typer.Option(help="Concurrency lease expiry, s.")] = None,
    ) -> None:
        """Run the multi-tenant OpenAI-compatible gateway (env: REDIS_URL, SERVELAB_ADMIN_TOKEN)."""
        run_gateway(config, host, port, redis_failure_mode, lease_ttl_s)

    tenants = typer.Typer(
        help="Tenants and their effective plans (from the gateway's config).", no_args_is_help=True
    )
    keys = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
    app.add_typer(tenants, name="tenants")
    app.add_typer(keys, name="keys")

    @tenants.command("list")
    def tenants_list(url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = "", as_json: JsonOpt = False) -> None:
        """List tenants with their plan limits."""
        data = _call(url, admin_token, "GET", "/admin/v1/tenants")["data"]
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        rows = [{"tenant": t["tenant"], **t["plan"], "models": ",".join(t["models"])} for t in data]
        _table(
            rows,
            [
                "tenant",
                "name",
                "requests_per_minute",
                "tokens_per_minute",
                "tokens_per_month",
                "max_concurrent_requests",
                "fair_share_weight",
                "models",
            ],
        )

    @tenants.command("show")
    def tenants_show(tenant: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = "") -> None:
        """One tenant's effective plan and models."""
        typer.echo(json.dumps(_call(url, admin_token, "GET", f"/admin/v1/tenants/{tenant}"), indent=2))

    @tenants.command("set-limits")
    def tenants_set_limits(
        tenant: str,
        requests_per_minute: Annotated[int | None, typer.Option()] = None,
        tokens_per_minute: Annotated[int | None, typer.Option()] = None,
        tokens_per_month: Annotated[int | None, typer.Option()] = None,
        max_concurrent_requests: Annotated[int | None, typer.Option()] = None,
        fair_share_weight: Annotated[float | None, typer.Option()] = None,
        default_max_tokens: Annotated[int | None, typer.Option()] = None,
        url: UrlOpt = DEFAULT_URL,
        admin_token: TokenOpt = "",
    ) -> None:
        """Change TENANT's limits at run time on every replica (until reset-limits)."""
        fields = {
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "tokens_per_month": tokens_per_month,
            "max_concurrent_requests": max_concurrent_requests,
            "fair_share_weight": fair_share_weight,
            "default_max_tokens": default_max_tokens,
        }
        body = {k: v for k, v in fields.items() if v is not None}
        typer.echo(
            json.dumps(_call(url, admin_token, "PUT", f"/admin/v1/tenants/{tenant}/plan", body), indent=2)
        )

    @tenants.command("reset-limits")
    def tenants_reset_limits(tenant: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = "") -> None:
        """Drop TENANT's runtime limit changes: back to the YAML config."""
        typer.echo(
            json.dumps(_call(url, admin_token, "DELETE", f"/admin/v1/tenants/{tenant}/plan"), indent=2)
        )

    @keys.command("create")
    def keys_create(
        tenant: str,
        name: Annotated[str, typer.Option(help="Label.")] = "",
        url: UrlOpt = DEFAULT_URL,
        admin_token: TokenOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Create a key for TENANT; the key is printed once and stored only as a SHA-256 digest."""
        data = _call(url, admin_token, "POST", f"/admin/v1/tenants/{tenant}/keys", {"name": name})
        if as_json:
            typer.echo(json.dumps(data))
        else:
            typer.echo(
                f"key_id: {data['key_id']}\ntenant: {data['tenant']}\nkey:    {data['key']}\n"
                "(store it now: it cannot be shown again)"
            )

    @keys.command("list")
    def keys_list(
        tenant: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = "", as_json: JsonOpt = False
    ) -> None:
        """List TENANT's keys (ids, names, prefixes; never the keys)."""
        data = _call(url, admin_token, "GET", f"/admin/v1/tenants/{tenant}/keys")["data"]
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        _table(data, ["key_id", "name", "prefix", "created_at", "revoked_at"])

    @keys.command("revoke")
    def keys_revoke(key_id: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = "") -> None:
        """Revoke a key; every gateway replica rejects it within a second."""
        data = _call(url, admin_token, "DELETE", f"/admin/v1/keys/{key_id}")
        typer.echo(f"revoked {data['key_id']} of tenant {data['tenant']}")

    @app.command("usage")
    def usage_cmd(
        tenant: str,
        month: Annotated[str | None, typer.Option(help="YYYY-MM")] = None,
        url: UrlOpt = DEFAULT_URL,
        admin_token: TokenOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """TENANT's metered usage and cost per day and model, and its monthly quota."""
        path = f"/admin/v1/tenants/{tenant}/usage" + (f"?month={month}" if month else "")
        data = _call(url, admin_token, "GET", path)
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        _table(data["data"], ["date", "model", "requests", "prompt_tokens", "completion_tokens", "cost_usd"])
        t, q = data["totals"], data["quota"]
        typer.echo(
            f"{data['tenant']} {data['month']}: {t['requests']} requests, "
            f"{t['prompt_tokens']} prompt + {t['completion_tokens']} completion tokens, "
            f"${t['cost_usd']:.6f}; quota {q['tokens_used']}/{q['tokens_per_month']} tokens"
        )


def main() -> None:
    """Entry point of `python -m gateway`: the run command only."""
    standalone = typer.Typer(add_completion=False)

    @standalone.command()
    def run(
        config: Annotated[Path | None, typer.Option()] = None,
        host: Annotated[str, typer.Option()] = "127.0.0.1",
        port: Annotated[int, typer.Option()] = 8080,
        redis_failure_mode: Annotated[str | None, typer.Option()] = None,
        lease_ttl_s: Annotated[float | None, typer.Option()] = None,
    ) -> None:
        run_gateway(config, host, port, redis_failure_mode, lease_ttl_s)

    standalone()
