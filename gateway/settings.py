"""Process settings of one gateway replica, from the environment.

Secrets and per-process knobs live here (envoyproxy/ratelimit keeps process settings apart from
the limits file); tenants, plans and models live in the YAML file that `config.py` reads. Every
variable has the `SERVELAB_` prefix, except that the conventional `REDIS_URL` is accepted too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.redistarget import RedisTarget


class GatewaySettings(BaseSettings):
    """Everything one gateway process needs besides its YAML config."""

    # Inputs are left out of validation errors: the Redis URL and the admin token carry secrets.
    model_config = SettingsConfigDict(
        env_prefix="SERVELAB_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    config_path: Path = Field(
        default=Path(__file__).with_name("demo.yaml"),
        description="YAML file with plans, tenants and models.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("SERVELAB_REDIS_URL", "REDIS_URL", "redis_url"),
        description="Redis that holds keys, buckets, leases and usage (shared by all replicas): "
        "redis://[user:password@]host:port/db, rediss://... for TLS (ssl_ca_certs=, ssl_certfile=, "
        "ssl_keyfile=, ssl_cert_reqs=, ssl_check_hostname= query parameters), or "
        "redis+sentinel://[user:password@]host:26379,host2:26379/<master>/db to follow Sentinel "
        "failovers (sentinel_password= if the Sentinels require one).",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for /admin/v1; the admin API answers 503 when unset."
    )
    redis_failure_mode: Literal["closed", "open"] = Field(
        default="closed",
        description="When Redis is unreachable: 'closed' answers 503, 'open' serves unlimited, unmetered.",
    )
    redis_pool_max_connections: int = Field(default=256, description="Size of the blocking Redis pool.")
    redis_pool_timeout_s: float = Field(default=2.0, description="Wait for a free pooled connection.")
    redis_socket_timeout_s: float = Field(default=1.0, description="Per-command socket timeout.")
    redis_connect_timeout_s: float = Field(default=0.5, description="TCP connect timeout to Redis.")
    redis_settle_wait_replicas: int = Field(
        default=0,
        ge=0,
        description="Replicas that must acknowledge a settle (Redis WAIT) before it counts; fewer "
        "spools it for replay. 0: off. With Sentinel, 1 keeps metering whole when the primary dies; "
        "all replicas keeps it whole through a planned SENTINEL FAILOVER too. While too few replicas "
        "answer, settles wait in the spool: nothing is lost, usage shows up late (docs/scaling.md).",
    )
    redis_settle_wait_ms: int = Field(
        default=100, ge=1, description="How long a settle waits for its replicas before it is spooled."
    )
    lease_ttl_s: float = Field(
        default=120.0, description="Concurrency lease expiry; bounds what a crashed replica can leak."
    )
    lease_heartbeat_s: float | None = Field(
        default=None,
        gt=0,
        description="How often a running request renews its lease and checkpoints its usage "
        "(default: a third of lease_ttl_s). Requests shorter than this send no heartbeat.",
    )
    spool_dir: Path = Field(
        default=Path(".servelab-spool"),
        description="Folder of durable settle spools (append + fsync), one file per replica, for "
        "settles that could not reach Redis; replayed when Redis answers again. A replica also "
        "replays the unlocked files a dead replica left here (share it between replicas on a host).",
    )
    recovery_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often this replica looks for requests of dead replicas to settle from their "
        "last checkpoint.",
    )
    prompt_reservation: Literal["body_bytes", "bytes_div_4"] = Field(
        default="body_bytes",
        description="Tokens reserved for the prompt before a request runs: 'body_bytes' (a bound no "
        "prompt shape can beat, see gateway/estimate.py) or 'bytes_div_4' (ceil(prompt bytes / 4), "
        "more headroom, beatable by about 4x).",
    )
    settled_ttl_s: int = Field(default=86_400, description="How long a settled request id is remembered.")
    key_cache_ttl_s: float = Field(
        default=30.0, description="Per-process API-key cache TTL; pub/sub revocation is the fast path."
    )
    usage_stream_maxlen: int = Field(default=100_000, description="Approximate cap of each usage stream.")
    max_body_bytes: int = Field(default=1_048_576, description="Request bodies above this get 413.")
    upstream_connect_timeout_s: float = Field(default=5.0, description="TCP connect timeout to a backend.")
    upstream_read_timeout_s: float = Field(
        default=300.0, description="Longest silence allowed between two reads from a backend."
    )
    backend_down_s: float = Field(
        default=2.0, description="How long a backend that refused a connection is skipped by routing."
    )
    prefix_affinity_load_bound: int | None = Field(
        default=None,
        description="Route a prompt to the backend its prefix went to before, unless that backend has more"
        " than this many outstanding requests above the least loaded (gateway/prefixroute.py); unset: off.",
    )
    queue_timeout_s: float = Field(
        default=30.0, description="Longest wait in the fair queue of a saturated model before a 503."
    )
    log_level: str = Field(default="info", description="Python logging level of the gateway loggers.")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        RedisTarget.parse(value)  # fail at start-up with a message naming what is wrong
        return value
