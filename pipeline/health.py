"""Worker health: what `/health` reports, and what the logs say on a change.

A component (kafka, clickhouse, backpressure, or a paused partition) is degraded from its first failure
until its next success; the worker is healthy when no component is degraded. The numbers in the report
are read from the worker's metrics (`pipeline/metrics.py`), which count them once.
"""

from __future__ import annotations

import logging
import time

from pipeline.metrics import Metrics

log = logging.getLogger("pipeline.health")


class Health:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.degraded: dict[str, str] = {}
        self.assigned: set[int] = set()  # partitions this worker owns now
        self.flushed_offsets: dict[int, int] = {}  # partition -> end offset of its last landed flush
        self.log_ends: dict[int, int] = {}  # partition -> the log end offset the broker last reported
        self.poison: dict[int, dict] = {}  # partition -> what cannot be decoded there, and how to resolve it
        self.last_flush_at: float | None = None
        self.metrics.up.set(1)

    @property
    def ok(self) -> bool:
        return not self.degraded

    def degrade(self, component: str, reason: str) -> None:
        if self.degraded.get(component) != reason:
            log.warning("degraded: %s: %s", component, reason)
        self.degraded[component] = reason
        self.metrics.degraded.labels(component).set(1)
        self.metrics.up.set(0)

    def recover(self, component: str) -> None:
        if self.degraded.pop(component, None) is not None:
            log.warning("recovered: %s", component)
            self.metrics.degraded.labels(component).set(0)
            self.metrics.up.set(int(self.ok))

    def poisoned(self, partition: int, batch, topic: str) -> None:
        """A partition paused before a batch it cannot decode (`agents/poison.py`)."""
        command = (f"kern-telemetry skip --topic {topic} --partition {partition} "
                   f"--through-offset {batch.last_offset} --reason '...'")
        self.poison[partition] = {"first_offset": batch.first_offset, "last_offset": batch.last_offset,
                                  "codec": batch.codec, "error": batch.error, "since": time.time(),
                                  "resolve": command}
        log.error("partition %d paused: %s. Nothing after it is counted until it can be decoded (install the "
                  "codec, restart) or an operator skips it: %s", partition, batch.describe(), command)
        self.metrics.partition_poisoned.labels(str(partition), batch.error.split(":")[0]).set(1)
        self.degrade(f"partition {partition}", f"paused: {batch.describe()}")

    def unpoisoned(self, partition: int) -> None:
        if (poison := self.poison.pop(partition, None)) is not None:
            self.metrics.partition_poisoned.remove(str(partition), poison["error"].split(":")[0])
            self.recover(f"partition {partition}")

    def flushed(self, partition: int, end_offset: int) -> None:
        self.flushed_offsets[partition] = end_offset
        self.last_flush_at = time.time()
        self._lag(partition)

    def log_end(self, partition: int, end_offset: int) -> None:
        self.log_ends[partition] = end_offset
        self._lag(partition)

    def revoked(self, partitions: set[int]) -> None:
        self.assigned -= partitions
        for partition in partitions:
            self.unpoisoned(partition)
            if self.log_ends.pop(partition, None) is not None:
                self.metrics.consumer_lag.remove(str(partition))

    def _lag(self, partition: int) -> None:
        if partition in self.log_ends and partition in self.assigned:
            lag = self.log_ends[partition] - self.flushed_offsets.get(partition, 0)
            self.metrics.consumer_lag.labels(str(partition)).set(max(lag, 0))

    def report(self) -> dict:
        value = self.metrics.value
        return {
            "status": "ok" if self.ok else "degraded",
            "degraded": dict(self.degraded),
            "events_consumed": int(value("kern_events_consumed_total")),
            "events_flushed": int(value("kern_events_flushed_total")),
            "dead_letters": int(sum(s.value for m in self.metrics.dead_letters.collect() for s in m.samples
                                    if s.name.endswith("_total"))),
            "flushes": int(value("kern_flushes_total")),
            "flush_failures": int(value("kern_flush_failures_total")),
            "fetch_errors": int(value("kern_fetch_errors_total")),
            "offset_gaps_refused": int(value("kern_offset_gaps_refused_total")),
            "pending_rows": int(value("kern_pending_rows")),
            "assigned_partitions": sorted(self.assigned),
            "flushed_offsets": {str(p): o for p, o in sorted(self.flushed_offsets.items())},
            "consumer_lag": {str(p): int(value("kern_consumer_lag", {"partition": str(p)}))
                             for p in sorted(self.assigned) if p in self.log_ends},
            "poisoned_partitions": {str(p): dict(v) for p, v in sorted(self.poison.items())},
            "admission_epoch": int(value("kern_admission_epoch")),
            # rare values the cardinality guard did not track, by field: a flood of new values
            "suppressed_values": {s.labels["field"]: int(s.value) for m in self.metrics.values_suppressed.collect()
                                  for s in m.samples if s.name.endswith("_total")},
            "last_flush_age_s": None if self.last_flush_at is None else round(time.time() - self.last_flush_at, 3),
        }
