"""The collector's own settings, `KERN_COLLECTOR_*` variables (or `.env`). The Kafka connection, the
topic, the per-event limit (`KERN_MAX_EVENT_BYTES`, the workers' own) and the log level are the
pipeline's settings (`pipeline.config.Settings`), read from the same environment."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from pipeline.config import KernSettings


class CollectorSettings(KernSettings):
    model_config = SettingsConfigDict(
        env_prefix="KERN_COLLECTOR_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    host: str = Field("127.0.0.1", description="Bind address (0.0.0.0 to serve other machines)")
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Request body as received (gzip'd or not)")
    max_batch_bytes: int = Field(
        1_000_000,
        ge=1024,
        le=4_000_000,
        description="Body after gunzip. A batch is one Kafka record batch: keep it under the broker's "
        "message.max.bytes (Kafka's default 1 MiB)",
    )
    max_batch_events: int = Field(1000, ge=1, description="Events per request")
    rate_limit_per_second: float = Field(20.0, ge=0, description="Requests per second per client (0: no limit)")
    rate_limit_burst: int = Field(100, ge=1, description="Requests a client may send at once before the rate applies")
    rate_limit_clients: int = Field(50_000, ge=1, description="Clients the rate limiter remembers at most")
    client_address_header: str | None = Field(
        None,
        description="Header whose last address names the client, set by a trusted proxy in front "
        "(e.g. X-Forwarded-For); default: the connection's peer",
    )
    auth_token: SecretStr | None = Field(None, description="Bearer token required of every POST (private deployments)")
    stop_sending: bool = Field(False, description="Answer every POST 410: the Kern client turns itself off")
    ack_timeout_seconds: float = Field(5.0, gt=0, description="Longest wait for the broker's acknowledgement")
    max_pending_bytes: int = Field(
        32 << 20,
        ge=1,
        description="Bytes handed to the producer and not yet "
        "acknowledged, with the bodies being read "
        "(their declared lengths); beyond them: 503",
    )
    retry_after_seconds: int = Field(5, ge=1, description="Retry-After of a 503")
    idle_timeout_seconds: float = Field(
        15.0,
        gt=0,
        description="A connection is closed when a request's headers are not complete this long after "
        "it opened or after its previous answer: idle keep-alive connections and slow "
        "headers alike (aiohttp's keep-alive timeout)",
    )
    body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest time for a body to arrive once its headers did; then 408 and the connection is closed",
    )
    max_connections: int = Field(
        4096,
        ge=64,
        description="Open connections at most (and at most the open-file "
        "limit less the descriptors `collector/connections.py` "
        "keeps); at the cap an idle one is closed for a new one",
    )
