"""The collector's Prometheus metrics (prometheus-client, its own registry), named as the worker's are
(`pipeline/metrics.py`). No label ever comes from a request: no address, header or value; `reason` is
one of the collector's own codes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from pipeline.metrics import CONTENT_TYPE

__all__ = ["CONTENT_TYPE", "CollectorMetrics"]


class CollectorMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        self.requests = Counter(
            "kern_collector_requests",
            "Requests answered, by status code and reason (accepted, "
            "or why refused): every request but /health's and /metrics', aiohttp's own answers "
            "to malformed HTTP included.",
            ["code", "reason"],
            registry=registry,
        )
        self.events = Counter(
            "kern_collector_events", "Events the broker acknowledged (answered 202).", registry=registry
        )
        self.request_duration = Histogram(
            "kern_collector_request_duration_seconds",
            "Time from a request's headers to its answer (the requests counted above).",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.pending_bytes = Gauge(
            "kern_collector_pending_bytes",
            "Bytes handed to the Kafka producer and not "
            "acknowledged yet, and bytes of the bodies being read (503 beyond "
            "KERN_COLLECTOR_MAX_PENDING_BYTES).",
            registry=registry,
        )
        self.max_pending_bytes = Gauge(
            "kern_collector_max_pending_bytes",
            "The bound of the pending bytes (KERN_COLLECTOR_MAX_PENDING_BYTES).",
            registry=registry,
        )
        self.bodies = Gauge("kern_collector_bodies", "Request bodies being read.", registry=registry)
        self.body_bytes = Gauge(
            "kern_collector_body_bytes",
            "Bytes counted for the bodies being read (their declared "
            "length, or KERN_COLLECTOR_MAX_BODY_BYTES when chunked); part of the pending bytes.",
            registry=registry,
        )
        self.connections = Gauge(
            "kern_collector_connections",
            "Open connections (at most the connection cap, "
            "but for a burst accepted at once, until the next connection).",
            registry=registry,
        )
        self.connection_cap = Gauge(
            "kern_collector_connection_cap",
            "The connection cap: "
            "KERN_COLLECTOR_MAX_CONNECTIONS, at most the open-file limit less the "
            "descriptors kept for the process.",
            registry=registry,
        )
        self.connections_evicted = Counter(
            "kern_collector_connections_evicted",
            "Idle connections (between "
            "requests, or headers incomplete) closed at the connection cap to make "
            "room for a new one.",
            registry=registry,
        )
        self.kafka_up = Gauge("kern_collector_kafka_up", "1 while the broker answers.", registry=registry)
        self.rate_limited_clients = Gauge(
            "kern_collector_rate_limit_clients",
            "Clients the rate limiter remembers (keyed digests; bounded by KERN_COLLECTOR_RATE_LIMIT_CLIENTS).",
            registry=registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
