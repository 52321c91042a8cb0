"""Configuration: one `Settings` object read from `KERN_*` environment variables and a `.env` file.

Secrets (Kafka SASL password, ClickHouse password) are `SecretStr`, so they print as `**********`;
they can also come from files in the directory named by `KERN_SECRETS_DIR` (one file per setting, named
like its variable, e.g. `KERN_CLICKHOUSE_PASSWORD`), the Docker/Kubernetes secret layout.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TOPIC = "kern.telemetry.events"
#: Hash secrets anyone can read (docker-compose.yml's default): whoever knows the secret can test a guessed
#: session id or value against the keyed hashes, so the worker refuses them outside development.
DEV_HASH_SECRETS = frozenset({"kern-dev-hash-secret-change-me"})
MIN_HASH_SECRET_LENGTH = 16


class KernSettings(BaseSettings):
    """Settings from the environment or `.env`, with secrets (passwords, tokens) as files in KERN_SECRETS_DIR."""

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        secrets_dir = os.environ.get("KERN_SECRETS_DIR")
        return cls(_secrets_dir=secrets_dir, **overrides) if secrets_dir else cls(**overrides)


class Settings(KernSettings):
    model_config = SettingsConfigDict(
        env_prefix="KERN_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # Kafka
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated")
    topic: str = Field(DEFAULT_TOPIC, description="Topic the SDKs produce events to")
    topic_partitions: int = Field(4, ge=1, description="Partitions when the CLI creates the topics")
    topic_replication: int = Field(1, ge=1, description="Replication factor when the CLI creates the topics")
    topic_retention_hours: int = Field(
        72,
        ge=1,
        description="Retention of the topics the CLI creates: the raw events are the only place identifiers "
        "exist, so keep it short, but longer than a worker may be down",
    )
    consumer_group: str = Field("kern-telemetry-rollup", description="Consumer group of the workers")
    kafka_session_timeout_seconds: float = Field(
        10.0,
        ge=1,
        le=300,
        description="The workers' consumer-group session: how soon a crashed worker's partitions move to another "
        "(heartbeats every fifth of it). A Kafka broker accepts 6 to 300 s by default "
        "(group.min/max.session.timeout.ms); Tansu also holds a new group's first join for half of it",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None

    # ClickHouse
    clickhouse_dsn: str = Field(
        "chdb://.kern/chdb",
        repr=False,  # may carry a password: print `safe_dsn`
        description="http(s)://host:port for a server, chdb:///abs/path (or chdb://rel/path) for the embedded engine",
    )
    clickhouse_database: str = Field("kern_telemetry", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    clickhouse_user: str | None = None
    clickhouse_password: SecretStr | None = None
    clickhouse_cluster: str | None = Field(
        None, description="Cluster name: generate Replicated/Distributed DDL ON CLUSTER"
    )
    clickhouse_ca_cert: Path | None = None
    clickhouse_insert_lanes: int = Field(
        4,
        ge=1,
        le=8,
        description="ClickHouse clients a flush writes on at once: each of a batch's small rollups (distinct "
        "partitions, a caught-up worker's) has its inserts on one of them",
    )

    # Rollup
    window_seconds: int = Field(60, ge=1, le=3600, description="Tumbling window size (event time)")
    allowed_lateness_seconds: int = Field(
        3600, ge=0, description="How much older than its Kafka record an event may be"
    )
    future_tolerance_seconds: int = Field(300, ge=0, description="How far ahead of its Kafka record an event may be")
    max_event_bytes: int = Field(65536, ge=1024, description="Larger events go to the DLQ as oversized")
    flush_interval_seconds: float = Field(
        1.0, gt=0, description="Flush pending aggregates at least this often once caught up"
    )
    flush_max_events: int = Field(
        300_000, ge=1, description="Flush once the rollups being folded hold this many events, all partitions together"
    )
    catch_up_lag_events: int = Field(50_000, ge=1, description="A partition this far behind its log end is catching up")
    catch_up_flush_interval_seconds: float = Field(
        5.0, gt=0, description="Flush interval while catching up: fewer, larger inserts clear a backlog faster"
    )
    max_pending_rows: int = Field(500_000, ge=1000, description="Pause consumption above this many unflushed rows")

    # Operations
    stall_seconds: float = Field(
        10.0,
        gt=0,
        description="A partition whose log has records while nothing was consumed for this long is "
        "stalled: /health degrades",
    )
    log_incident_hold_seconds: float = Field(
        900.0,
        ge=0,
        description="How long a partition's log incident (new log, truncated, expired) keeps /health degraded",
    )
    audit_seconds: float = Field(
        600.0,
        gt=0,
        description="How often the worker settles the closed periods of the hourly and daily grains against "
        "the grains they are built from (`kern-telemetry grains`; the builder alone) and checks the ledger "
        "against its intents' running totals (`kern-telemetry ledger`): a disagreement seen twice in a row "
        "degrades /health, and so does a check that fails",
    )
    grain_build_seconds: float = Field(
        5.0,
        gt=0,
        description="How often the worker that owns partition 0 tops the hourly and daily grains up to the "
        "grains they are built from over the periods live records reach: how far they may trail the minute grain",
    )
    dedup_horizon_seconds: float = Field(
        300.0,
        gt=0,
        description="How long after a flush's first attempt a retry may come (a crash, then a "
        "takeover): ClickHouse's deduplication windows must cover it",
    )

    # Privacy
    hash_secret: SecretStr | None = Field(
        None,
        description="Master secret of the keyed hashes of sessions and candidate values (required by the "
        "worker; never stored in ClickHouse or Kafka)",
    )
    dev: bool = Field(
        False,
        description="Development: the worker accepts a published or short KERN_HASH_SECRET "
        "(docker-compose.yml sets it; never in production)",
    )
    k_anonymity: int = Field(
        10, ge=1, description="Distinct installations of one day a value needs before it is stored"
    )
    admission_refresh_seconds: float = Field(5.0, gt=0, description="How often workers load newly admitted values")
    max_new_values_per_flush: int = Field(
        20, ge=1, description="New candidate values a flush tracks per window and field; more are suppressed"
    )

    # Retention (days; 0 keeps forever)
    retention_minute_days: int = Field(30, ge=0)
    retention_hour_days: int = Field(400, ge=0)
    retention_day_days: int = Field(0, ge=0)

    # Worker web endpoints (health, metrics)
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)
    log_level: Literal["debug", "info", "warn", "error"] = "info"

    @field_validator("clickhouse_dsn")
    @classmethod
    def _absolute_chdb_path(cls, dsn: str) -> str:
        """chDB wants an absolute path; `chdb://rel/path` is taken relative to the working directory."""
        if dsn.startswith("chdb://") and not dsn.startswith("chdb:///"):
            return "chdb://" + os.path.abspath(dsn.removeprefix("chdb://"))
        return dsn

    def hash_secret_problem(self) -> str | None:
        """Why a worker must not start with this hash secret: none, or one anyone can read or guess (unless
        `dev`)."""
        if self.hash_secret is None:
            return (
                "KERN_HASH_SECRET is not set: the worker counts sessions and candidate values only by keyed "
                "hashes derived from it, and every worker needs the same one (README: Privacy)"
            )
        secret = self.hash_secret.get_secret_value()
        if self.dev:
            return None
        fix = (
            "set a random one, the same for every worker (`python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`), or KERN_DEV=1 for a development cluster"
        )
        if secret in DEV_HASH_SECRETS:
            return f"KERN_HASH_SECRET is the development default of docker-compose.yml, which anyone can read: {fix}"
        if len(secret) < MIN_HASH_SECRET_LENGTH:
            return f"KERN_HASH_SECRET has {len(secret)} characters, fewer than {MIN_HASH_SECRET_LENGTH}: {fix}"
        return None

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb://")

    @cached_property
    def safe_dsn(self) -> str:
        """The DSN with any password masked, for logs and messages."""
        return redact_url(self.clickhouse_dsn)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
