"""The gateway's Prometheus metrics, all in one registry per app (never the global one).

Names follow Prometheus conventions: `servelab_gateway_` prefix, base units (`_seconds`),
`_total` only on counters. Labels are bounded: tenant and model come from the config file,
status is an HTTP code, limit is one of five names. Request ids are never labels.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_FAST = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TPOT = (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "servelab_gateway_requests_total",
            "Proxied requests by outcome.",
            ["tenant", "model", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "servelab_gateway_prompt_tokens_total", "Prompt tokens metered.", ["tenant", "model"], registry=r
        )
        self.completion_tokens = Counter(
            "servelab_gateway_completion_tokens_total",
            "Completion tokens metered.",
            ["tenant", "model"],
            registry=r,
        )
        self.cost_usd = Counter(
            "servelab_gateway_cost_usd_total",
            "Dollars metered, incremented at settle by exactly the integer micro-dollars that settle.lua "
            "added to the tenant's usage (so it agrees with /v1/usage and `servelab usage`); a replayed "
            "request id adds nothing.",
            ["tenant", "model"],
            registry=r,
        )
        self.quota_remaining = Gauge(
            "servelab_gateway_quota_remaining_tokens",
            "Monthly token quota left (tokens_per_month minus used and in-flight reservations) as this "
            "replica last saw it, at its last admission or settle for the tenant; negative after an "
            "overrun. Per replica and possibly stale: the authoritative number is in Redis "
            "(/v1/usage, `servelab usage`).",
            ["tenant"],
            registry=r,
        )
        self.rate_limited = Counter(
            "servelab_gateway_rate_limited_total",
            "429 answers by the limit hit.",
            ["tenant", "limit"],
            registry=r,
        )
        self.admission_seconds = Histogram(
            "servelab_gateway_admission_seconds",
            "Time of the admission round trip to Redis.",
            buckets=_FAST,
            registry=r,
        )
        self.overhead_seconds = Histogram(
            "servelab_gateway_overhead_seconds",
            "Time the gateway itself added before the upstream call and "
            "after its response (non-streaming) or before it (streaming).",
            buckets=_FAST,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "servelab_gateway_time_to_first_token_seconds",
            "Streaming: request received to first content chunk forwarded.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.tpot_seconds = Histogram(
            "servelab_gateway_time_per_output_token_seconds",
            "Streaming: (end - first token) / (completion tokens - 1).",
            ["model"],
            buckets=_TPOT,
            registry=r,
        )
        self.e2e_seconds = Histogram(
            "servelab_gateway_request_duration_seconds",
            "Request received to last byte sent.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "servelab_gateway_queue_wait_seconds",
            "Time an admitted request waited in the fair queue for a backend slot.",
            ["tenant"],
            buckets=_LATENCY,
            registry=r,
        )
        self.in_flight = Gauge(
            "servelab_gateway_in_flight_requests", "Proxied requests in progress.", registry=r
        )
        self.redis_up = Gauge(
            "servelab_gateway_redis_up", "1 when the last Redis call worked, else 0.", registry=r
        )
        self.redis_errors = Counter(
            "servelab_gateway_redis_errors_total", "Redis calls that failed.", ["op"], registry=r
        )
        self.fail_open = Counter(
            "servelab_gateway_fail_open_requests_total",
            "Requests served without admission or metering while Redis was down.",
            registry=r,
        )
        self.disconnects = Counter(
            "servelab_gateway_client_disconnects_total",
            "Streams the client closed before the end.",
            ["tenant"],
            registry=r,
        )
        self.backend_errors = Counter(
            "servelab_gateway_backend_errors_total",
            "Failed backend calls by kind.",
            ["backend", "kind"],
            registry=r,
        )
        # Per model version (and backend region): what the rollout gate (rollout.py) compares.
        # Separate families so the per-model ones above keep their labels for dashboards.
        self.version_requests = Counter(
            "servelab_gateway_version_requests_total",
            "Requests by model alias, version, backend region ('' before a backend was chosen) and status.",
            ["model", "version", "region", "status"],
            registry=r,
        )
        self.version_ttft_seconds = Histogram(
            "servelab_gateway_version_time_to_first_token_seconds",
            "Streaming: request received to first content chunk forwarded, by model version.",
            ["model", "version"],
            buckets=_LATENCY,
            registry=r,
        )
        self.version_tpot_seconds = Histogram(
            "servelab_gateway_version_time_per_output_token_seconds",
            "Streaming: (end - first token) / (completion tokens - 1), by model version.",
            ["model", "version"],
            buckets=_TPOT,
            registry=r,
        )
        self.heartbeats = Counter(
            "servelab_gateway_lease_heartbeats_total",
            "Lease renewals (with a usage checkpoint) sent by requests that outlived the heartbeat interval.",
            registry=r,
        )
        self.settles_spooled = Counter(
            "servelab_gateway_settles_spooled_total",
            "Settles that could not reach Redis and were written to the local spool for replay.",
            registry=r,
        )
        self.settles_lost = Counter(
            "servelab_gateway_settles_lost_total",
            "Settles that reached neither Redis nor the spool (the disk failed too): usage lost.",
            registry=r,
        )
        self.recovered = Counter(
            "servelab_gateway_recovered_requests_total",
            "Requests of dead replicas this replica settled from their last checkpoint.",
            ["tenant"],
            registry=r,
        )
        self.redis_up.set(1)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: the label lookup is a measurable part of a request."""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c
