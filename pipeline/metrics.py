"""The worker's Prometheus metrics: what `/metrics` exposes (prometheus-client, one registry per worker).

Prometheus conventions: snake_case, base units (seconds), `_total` for counters (prometheus-client adds
the suffix). Offsets are never labels: a label per offset would be a new series per flush. Updated per
batch or per flush, never per event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from kern_telemetry_client.contract import DROP_REASONS
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from pipeline import _fold
from pipeline.rejections import GONE, QUALITY_ONLY

disable_created_metrics()  # no `*_created` series: a counter's start time says nothing an operator uses
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER_DROP = "other"  # the `reason` of client drops the contract does not name (stored values: bounded labels)


class NativeFold(Collector):
    """The events the native fold counted (`pipeline/native/fold.c`), read from it at each scrape: beside
    `kern_events_consumed_total`, the share of the load on the fast path. A falling share (an SDK that
    escapes its strings, a flood of values not yet admitted) costs the worker rate before anything fails."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "kern_events_folded_natively",
            "Records the native fold counted; the others went through the Python fold.",
            value=_fold.counted(),
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        registry.register(NativeFold())
        self.up = Gauge("kern_up", "1 when no component of the worker is degraded.", registry=registry)
        self.degraded = Gauge(
            "kern_degraded",
            "1 while a component is degraded (kafka, clickhouse, backpressure, or a paused partition).",
            ["component"],
            registry=registry,
        )
        self.events_consumed = Counter(
            "kern_events_consumed", "Records consumed from the events topic, replays included.", registry=registry
        )
        self.events_flushed = Counter(
            "kern_events_flushed", "Records whose rollup landed in ClickHouse.", registry=registry
        )
        self.dead_letters = Counter(
            "kern_dead_letters", "Events sent to the dead-letter topic, by reason.", ["reason"], registry=registry
        )
        self.quality_notes = Counter(
            "kern_quality_notes",
            "Notes on events, never dead-lettered, by reason: late "
            "(not counted), future_timestamp and bad_timestamp (the record's time used), "
            "redacted_value, invalid_value and rare_value (one per field stored so).",
            ["reason"],
            registry=registry,
        )
        for note in sorted(QUALITY_ONLY):
            self.quality_notes.labels(note.value)
        self.client_drops = Counter(
            "kern_client_drops",
            "Events SDK clients report they dropped (their client "
            "reports), by reason; reasons the contract does not name are `other`.",
            ["reason"],
            registry=registry,
        )
        for reason in (*DROP_REASONS, OTHER_DROP):
            self.client_drops.labels(reason)
        self.offsets_gone = Counter(
            "kern_offsets_gone",
            "Offsets without records counted, by outcome: skipped by "
            "an operator (kern-telemetry skip), expired (removed by retention before they "
            "were consumed), lost (gone from a truncated or replaced log before they were "
            "consumed).",
            ["outcome"],
            registry=registry,
        )
        for outcome in GONE:  # every outcome a series from the start, so that rates and alerts see zeros
            self.offsets_gone.labels(outcome.value)
        self.log_changes = Counter(
            "kern_log_changes",
            "Times a partition's log was not the one the ledger "
            "describes, by change: new log, truncated, diverged, expired.",
            ["change"],
            registry=registry,
        )
        self.flushes = Counter("kern_flushes", "Flushes that landed in ClickHouse.", registry=registry)
        self.flush_failures = Counter(
            "kern_flush_failures", "Flush attempts that failed (each is retried).", registry=registry
        )
        self.flush_duration = Histogram(
            "kern_flush_duration_seconds",
            "Time to write one batch of flushes (intents, rows, landings, sketches) to ClickHouse.",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.last_flush_age = Gauge(
            "kern_last_flush_age_seconds",
            "Seconds since the last flush landed (0 before the first).",
            registry=registry,
        )
        self.freshness = Gauge(
            "kern_partition_freshness_seconds",
            "Age of the partition's oldest record not "
            "flushed yet: by its Kafka timestamp once consumed, since its lag was first seen "
            "before; 0 when caught up.",
            ["partition"],
            registry=registry,
        )
        self.pending_rows = Gauge(
            "kern_pending_rows",
            "Rows folded but not flushed yet (backpressure pauses consumption above KERN_MAX_PENDING_ROWS).",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "kern_consumer_lag",
            "Records in the partition's log after its last landed flush (log end offset minus flushed end offset).",
            ["partition"],
            registry=registry,
        )
        self.partition_poisoned = Gauge(
            "kern_partition_poisoned",
            "1 while the partition is paused before a record batch it cannot decode.",
            ["partition", "error"],
            registry=registry,
        )
        self.values_suppressed = Counter(
            "kern_values_suppressed",
            "Rare values stored as (rare) without being "
            "tracked as candidates: the cardinality guard was full for their window "
            "and field.",
            ["field"],
            registry=registry,
        )
        self.admission_epoch = Gauge(
            "kern_admission_epoch",
            "The admission epoch this worker projects with (values admitted after k distinct installations).",
            registry=registry,
        )
        self.grain_disagreements = Gauge(
            "kern_grain_disagreements",
            "Closed periods of an hourly or daily grain whose total is not that of the grain it is built from "
            "after the builder settled them, in two audits in a row (`kern-telemetry grains --repair`).",
            ["table"],
            registry=registry,
        )
        self.ledger_disagreements = Gauge(
            "kern_ledger_disagreements",
            "Partitions whose ledger does not add up to their latest intent's running total, seen in two checks "
            "in a row (`kern-telemetry ledger`).",
            registry=registry,
        )
        self.fetch_errors = Counter("kern_fetch_errors", "Fetches the Kafka client raised for.", registry=registry)
        self.offset_gaps_refused = Counter(
            "kern_offset_gaps_refused",
            "Batches refused because they did not start where the partition's folding stood.",
            registry=registry,
        )

    def client_dropped(self, reason: str, events: int) -> None:
        self.client_drops.labels(reason if reason in DROP_REASONS else OTHER_DROP).inc(events)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels) or 0

    def values(self) -> Callable[..., float]:
        """A reader of every sample as the registry holds it now, collected once (`value` collects the whole
        registry, /proc included, for each sample it reads)."""
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in self.registry.collect()
            for sample in metric.samples
        }

        def value(name: str, labels: dict[str, str] | None = None) -> float:
            return samples.get((name, tuple(sorted((labels or {}).items()))), 0)

        return value

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
