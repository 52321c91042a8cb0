"""Worker health and metrics: what `/health` and `/metrics` report, and what the logs say on a change.

A component (kafka, clickhouse, backpressure, or a poisoned partition) is degraded from its first failure
until its next success; the worker is healthy when no component is degraded.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("pipeline.health")


class Health:
    def __init__(self) -> None:
        self.degraded: dict[str, str] = {}
        self.started = time.time()
        self.events = 0  # consumed
        self.events_flushed = 0  # in rollups that landed in ClickHouse
        self.dead_letters = 0
        self.flushes = 0
        self.flush_failures = 0
        self.flush_seconds = 0.0
        self.last_flush_at: float | None = None
        self.pending_rows = 0
        self.flushed_offsets: dict[int, int] = {}  # partition -> end offset of its last landed flush
        self.assigned: set[int] = set()  # partitions this worker owns now
        self.poison: dict[int, dict] = {}  # partition -> what cannot be decoded there, and how to resolve it
        self.fetch_errors = 0  # fetches aiokafka raised for
        self.gaps_refused = 0  # batches refused because they did not start where folding stood
        # Wall and process CPU time at the first consumed event and at the last landed flush, so a
        # benchmark can measure the processing span without the worker's start-up.
        self.first_event_at: float | None = None
        self.first_event_cpu: float | None = None
        self.last_flush_cpu: float | None = None

    @property
    def ok(self) -> bool:
        return not self.degraded

    def degrade(self, component: str, reason: str) -> None:
        if self.degraded.get(component) != reason:
            log.warning("degraded: %s: %s", component, reason)
        self.degraded[component] = reason

    def recover(self, component: str) -> None:
        if self.degraded.pop(component, None) is not None:
            log.warning("recovered: %s", component)

    def poisoned(self, partition: int, batch, topic: str) -> None:
        """A partition paused before a batch it cannot decode (`agents/poison.py`)."""
        command = (f"kern-telemetry skip --topic {topic} --partition {partition} "
                   f"--through-offset {batch.last_offset} --reason '...'")
        self.poison[partition] = {"first_offset": batch.first_offset, "last_offset": batch.last_offset,
                                  "codec": batch.codec, "error": batch.error, "since": time.time(),
                                  "resolve": command}
        log.error("partition %d paused: %s. Nothing after it is counted until it can be decoded (install the "
                  "codec, restart) or an operator skips it: %s", partition, batch.describe(), command)
        self.degrade(f"partition {partition}", f"paused: {batch.describe()}")

    def unpoisoned(self, partition: int) -> None:
        if self.poison.pop(partition, None) is not None:
            self.recover(f"partition {partition}")

    def consumed(self, events: int) -> None:
        if self.first_event_at is None:
            self.first_event_at = time.time()
            self.first_event_cpu = time.process_time()
        self.events += events

    def flushed(self, partition: int, end_offset: int, events: int, seconds: float) -> None:
        self.last_flush_cpu = time.process_time()
        self.flushed_offsets[partition] = end_offset
        self.flushes += 1
        self.events_flushed += events
        self.flush_seconds += seconds
        self.last_flush_at = time.time()

    def report(self) -> dict:
        return {
            "status": "ok" if self.ok else "degraded",
            "degraded": dict(self.degraded),
            "events_consumed": self.events,
            "events_flushed": self.events_flushed,
            "dead_letters": self.dead_letters,
            "flushes": self.flushes,
            "flush_failures": self.flush_failures,
            "pending_rows": self.pending_rows,
            "flushed_offsets": {str(p): o for p, o in sorted(self.flushed_offsets.items())},
            "assigned_partitions": sorted(self.assigned),
            "poisoned_partitions": {str(p): dict(v) for p, v in sorted(self.poison.items())},
            "fetch_errors": self.fetch_errors,
            "offset_gaps_refused": self.gaps_refused,
            "last_flush_age_s": None if self.last_flush_at is None else round(time.time() - self.last_flush_at, 3),
            "first_event_at": self.first_event_at,
            "last_flush_at": self.last_flush_at,
            "cpu_seconds_processing": None if self.last_flush_cpu is None or self.first_event_cpu is None
            else round(self.last_flush_cpu - self.first_event_cpu, 3),
        }

    def prometheus(self) -> str:
        lines = [
            ("kern_up", "gauge", int(self.ok)),
            ("kern_events_consumed_total", "counter", self.events),
            ("kern_events_flushed_total", "counter", self.events_flushed),
            ("kern_dead_letters_total", "counter", self.dead_letters),
            ("kern_flushes_total", "counter", self.flushes),
            ("kern_flush_failures_total", "counter", self.flush_failures),
            ("kern_flush_seconds_total", "counter", round(self.flush_seconds, 6)),
            ("kern_pending_rows", "gauge", self.pending_rows),
            ("kern_fetch_errors_total", "counter", self.fetch_errors),
            ("kern_offset_gaps_refused_total", "counter", self.gaps_refused),
        ]
        out = []
        for name, kind, value in lines:
            out += [f"# TYPE {name} {kind}", f"{name} {value}"]
        out.append("# TYPE kern_partition_poisoned gauge")
        out += [f'kern_partition_poisoned{{partition="{p}",error="{v["error"].split(":")[0]}"}} 1'
                for p, v in sorted(self.poison.items())]
        return "\n".join(out) + "\n"
