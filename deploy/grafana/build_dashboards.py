"""Writes servelab's two Grafana dashboards (platform view, serving view) as provisioned JSON.

    .venv/bin/python deploy/grafana/build_dashboards.py

Why generated: the same JSON is provisioned by docker compose (deploy/grafana/dashboards) and by
the Kubernetes Grafana component (k8s/components/grafana/dashboards, which kustomize may only read
from inside its own folder), and hand-edited Grafana JSON drifts. tests/deploy check that the
committed files equal this script's output, and that every metric name in every PromQL expression
is one the gateway or a backend exports in a live scrape.

The serving view uses vLLM's own metric names, which the simulator exports too, so it works on
either backend. The platform view uses the gateway's `servelab_gateway_*` metrics. Spend comes
from `servelab_gateway_cost_usd_total`, which each replica increments at settle by exactly the
micro-dollars settle.lua metered, so it holds for any config's prices; quota left comes from
`servelab_gateway_quota_remaining_tokens`, each replica's last-seen value (see the quota panel).
The usage API (`/v1/usage`, `servelab usage`) stays the bill of record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
OUT_DIRS = (
    REPO / "deploy" / "grafana" / "dashboards",
    REPO / "k8s" / "components" / "grafana" / "dashboards",
)
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}

Panel = dict[str, Any]


def _timeseries(
    title: str, targets: list[tuple[str, str]], unit: str, x: int, y: int, w: int = 12, description: str = ""
) -> Panel:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit, "min": 0}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {"datasource": DATASOURCE, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _stat(title: str, expr: str, unit: str, x: int, y: int, w: int = 6, description: str = "") -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": 4},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
        },
        "targets": [{"datasource": DATASOURCE, "refId": "A", "expr": expr, "legendFormat": title}],
    }


def _quantiles(metric: str, by: str = "") -> list[tuple[str, str]]:
    group = f"le{', ' + by if by else ''}"
    label = f"{{{{{by}}}}} " if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[$__rate_interval])))",
            f"{label}p{p}",
        )
        for q, p in ((0.5, 50), (0.95, 95), (0.99, 99))
    ]


def _dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, Any]:
    for i, panel in enumerate(panels, start=1):
        panel["id"] = i
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["servelab"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "timezone": "utc",
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def platform() -> dict[str, Any]:
    rate = "[$__rate_interval]"
    panels = [
        _stat("Requests/s (all tenants)", f"sum(rate(servelab_gateway_requests_total{rate}))", "reqps", 0, 0),
        _stat("429s/s (all limits)", f"sum(rate(servelab_gateway_rate_limited_total{rate}))", "reqps", 6, 0),
        _stat("In flight (all replicas)", "sum(servelab_gateway_in_flight_requests)", "short", 12, 0),
        _stat("Redis up (worst replica)", "min(servelab_gateway_redis_up)", "bool", 18, 0),
        _timeseries(
            "Requests/s by tenant",
            [
                (f"sum by (tenant) (rate(servelab_gateway_requests_total{rate}))", "{{tenant}}"),
            ],
            "reqps",
            0,
            4,
        ),
        _timeseries(
            "Requests/s by status",
            [
                (f"sum by (status) (rate(servelab_gateway_requests_total{rate}))", "{{status}}"),
            ],
            "reqps",
            12,
            4,
        ),
        _timeseries(
            "Tokens/s by tenant",
            [
                (f"sum by (tenant) (rate(servelab_gateway_prompt_tokens_total{rate}))", "{{tenant}} prompt"),
                (
                    f"sum by (tenant) (rate(servelab_gateway_completion_tokens_total{rate}))",
                    "{{tenant}} completion",
                ),
            ],
            "short",
            0,
            12,
        ),
        _timeseries(
            "429s/s by tenant and limit",
            [
                (
                    f"sum by (tenant, limit) (rate(servelab_gateway_rate_limited_total{rate}))",
                    "{{tenant}} {{limit}}",
                ),
            ],
            "reqps",
            12,
            12,
        ),
        _timeseries(
            "Spend by tenant, USD/h",
            [
                (f"sum by (tenant) (rate(servelab_gateway_cost_usd_total{rate})) * 3600", "{{tenant}} USD/h"),
            ],
            "currencyUSD",
            0,
            20,
            description="Dollars metered per hour, summed over replicas and models: each replica adds "
            "exactly the micro-dollars settle.lua metered (a replayed request id adds nothing). The bill "
            "of record is /v1/usage (servelab usage).",
        ),
        _timeseries(
            "Monthly token quota left by tenant",
            [
                # Each replica reports the quota left as of its own last admission or settle for the
                # tenant. Within a month the tenant's net use only grows, so the replica that saw it
                # last has the lowest value: min is the freshest number, and a lower bound (it may
                # still count reservations of requests in flight, as the limiter itself does).
                # max would pick the most stale replica, which could show quota long since spent.
                # min lags at month rollover or after a plan raise until each replica sees the
                # tenant again.
                ("min by (tenant) (servelab_gateway_quota_remaining_tokens)", "{{tenant}}"),
            ],
            "short",
            12,
            20,
            description="tokens_per_month minus tokens used and reserved this month, the lowest any "
            "replica last saw. Per-replica last-seen values: the authoritative number is /v1/usage "
            "(servelab usage), read from Redis.",
        ),
        _timeseries(
            "Gateway end-to-end latency", _quantiles("servelab_gateway_request_duration_seconds"), "s", 0, 28
        ),
        _timeseries(
            "Gateway time to first token (streaming)",
            _quantiles("servelab_gateway_time_to_first_token_seconds"),
            "s",
            12,
            28,
        ),
        _timeseries(
            "Admission round trip to Redis", _quantiles("servelab_gateway_admission_seconds"), "s", 0, 36
        ),
        _timeseries("Gateway overhead", _quantiles("servelab_gateway_overhead_seconds"), "s", 12, 36),
        _timeseries(
            "Backend errors/s",
            [
                (
                    f"sum by (backend, kind) (rate(servelab_gateway_backend_errors_total{rate}))",
                    "{{backend}} {{kind}}",
                ),
            ],
            "reqps",
            0,
            44,
        ),
        _timeseries(
            "Client disconnects/s",
            [
                (f"sum by (tenant) (rate(servelab_gateway_client_disconnects_total{rate}))", "{{tenant}}"),
            ],
            "reqps",
            12,
            44,
        ),
    ]
    return _dashboard(
        "servelab-platform",
        "servelab: platform",
        "Per-tenant traffic, tokens, rate limiting and spend at the gateway.",
        panels,
    )


def serving() -> dict[str, Any]:
    rate = "[$__rate_interval]"
    panels = [
        _timeseries("Time to first token", _quantiles("vllm:time_to_first_token_seconds"), "s", 0, 0),
        _timeseries("Time per output token", _quantiles("vllm:time_per_output_token_seconds"), "s", 12, 0),
        _timeseries("End-to-end request latency", _quantiles("vllm:e2e_request_latency_seconds"), "s", 0, 8),
        _timeseries(
            "Requests running / waiting",
            [
                ("sum by (instance) (vllm:num_requests_running)", "{{instance}} running"),
                ("sum by (instance) (vllm:num_requests_waiting)", "{{instance}} waiting"),
            ],
            "short",
            12,
            8,
        ),
        _timeseries(
            "KV-cache usage",
            [
                ("max by (instance) (vllm:gpu_cache_usage_perc)", "{{instance}}"),
            ],
            "percentunit",
            0,
            16,
        ),
        _timeseries(
            "Tokens/s",
            [
                (f"sum by (instance) (rate(vllm:prompt_tokens_total{rate}))", "{{instance}} prompt"),
                (f"sum by (instance) (rate(vllm:generation_tokens_total{rate}))", "{{instance}} generation"),
            ],
            "short",
            12,
            16,
        ),
        _timeseries(
            "Preemptions/s",
            [
                (f"sum by (instance) (rate(vllm:num_preemptions_total{rate}))", "{{instance}}"),
            ],
            "short",
            0,
            24,
        ),
    ]
    return _dashboard(
        "servelab-serving",
        "servelab: serving",
        "vLLM (or the simulator, same metric names): latency percentiles, queue, KV cache, "
        "throughput, preemptions.",
        panels,
    )


def dashboards() -> dict[str, str]:
    """File name -> JSON text, as committed."""
    return {
        "servelab-platform.json": json.dumps(platform(), indent=2) + "\n",
        "servelab-serving.json": json.dumps(serving(), indent=2) + "\n",
    }


def main() -> None:
    for out in OUT_DIRS:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in dashboards().items():
            (out / name).write_text(text)
            print(f"wrote {out.relative_to(REPO) / name}")


if __name__ == "__main__":
    main()
