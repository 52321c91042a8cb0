"""Worker health: what `/health` reports, and what the logs say on a change.

A component (kafka, clickhouse, backpressure, a paused or stalled partition) is degraded from its first
failure until its next success; an incident (a partition's log replaced, truncated or expired:
`agents/logs.py`) degrades its partition's `log` component for `hold_s`, so that an operator and an alert
see it. The worker is healthy when no component is degraded. The numbers in the report are read from
the worker's metrics (`pipeline/metrics.py`), which count them once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable

from pipeline.config import Settings
from pipeline.ledger import Disagreement as LedgerDisagreement
from pipeline.metrics import Metrics

log = logging.getLogger("pipeline.health")


class Health:
    def __init__(self, metrics: Metrics | None = None, hold_s: float = 900.0, stall_s: float = 10.0) -> None:
        self.metrics = metrics or Metrics()
        self.hold_s = hold_s
        self.stall_s = stall_s
        self.degraded: dict[str, str] = {}
        self._held: dict[str, float] = {}  # component -> when its incident stops degrading (monotonic)
        self.incidents: list[dict] = []  # the latest log incidents, newest last
        self._progress: dict[int, tuple[int, float]] = {}  # partition -> (cursor, since when it stands there)
        self._lag_since: dict[int, float] = {}  # partition -> since when it has records nothing folded yet
        self.assigned: set[int] = set()  # partitions this worker owns now
        self.flushed_offsets: dict[int, int] = {}  # partition -> end offset of its last landed flush
        self._generations: dict[int, int] = {}  # partition -> the log generation `flushed_offsets` is of
        self.log_ends: dict[int, int] = {}  # partition -> the log end offset the broker last reported
        self.poison: dict[int, dict] = {}  # partition -> what cannot be decoded there, and how to resolve it
        self.last_flush_at: float | None = None
        self._suspects: dict[str, set] = {}  # check -> the disagreements its last run saw
        self.metrics.up.set(1)
        self.metrics.last_flush_age.set_function(
            lambda: 0.0 if self.last_flush_at is None else time.time() - self.last_flush_at
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Health:
        return cls(hold_s=settings.log_incident_hold_seconds, stall_s=settings.stall_seconds)

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

    def log_changed(self, partition: int, change: str, description: str) -> None:
        """An incident of a partition's log (`agents/logs.py`): degraded for `hold_s`, counted, logged."""
        component = f"log {partition}"
        log.error("partition %d: %s: %s", partition, change, description)
        self.metrics.log_changes.labels(change).inc()
        self.incidents = [
            *self.incidents[-9:],
            {"partition": partition, "change": change, "description": description, "at": time.time()},
        ]
        self.degrade(component, f"{change}: {description}")
        self._held[component] = time.monotonic() + self.hold_s

    def progress(self, partition: int, cursor: int, oldest_unflushed_ms: int | None, paused: bool) -> None:
        """Once per probe, per partition: where folding stands and the Kafka timestamp of the oldest record
        folded but not flushed. Sets the partition's freshness (the age of the oldest record not flushed:
        by its timestamp once folded, since the lag was first seen before) and degrades a partition whose
        log has records while its cursor stood still for `stall_s` (not paused: backpressure and poison
        say so themselves)."""
        now, wall = time.monotonic(), time.time()
        behind = self.log_ends.get(partition, 0) > cursor
        since = self._lag_since.setdefault(partition, wall) if behind else self._lag_since.pop(partition, None)
        if oldest_unflushed_ms is not None:
            age = wall - oldest_unflushed_ms / 1000
        else:
            age = wall - since if since is not None else 0.0
        self.metrics.freshness.labels(str(partition)).set(max(age, 0.0))
        last_cursor, standing_since = self._progress.get(partition, (None, now))
        if cursor != last_cursor or not behind or paused:
            self._progress[partition] = (cursor, now)
            self.recover(f"partition {partition} stalled")
        elif now - standing_since >= self.stall_s:
            lag = self.log_ends[partition] - cursor
            self.degrade(
                f"partition {partition} stalled",
                f"{lag} records in the log after offset {cursor}, nothing consumed for {now - standing_since:.0f} s",
            )

    def tick(self) -> None:
        """Let incidents older than `hold_s` stop degrading."""
        now = time.monotonic()
        for component, until in list(self._held.items()):
            if now >= until:
                del self._held[component]
                self.recover(component)

    def poisoned(self, partition: int, batch, topic: str) -> None:
        """A partition paused before a batch it cannot decode (`agents/poison.py`)."""
        command = (
            f"kern-telemetry skip --topic {topic} --partition {partition} "
            f"--through-offset {batch.last_offset} --reason '...'"
        )
        self.poison[partition] = {
            "first_offset": batch.first_offset,
            "last_offset": batch.last_offset,
            "codec": batch.codec,
            "error": batch.error,
            "since": time.time(),
            "resolve": command,
        }
        log.error(
            "partition %d paused: %s. Nothing after it is counted until it can be decoded (install the "
            "codec, restart) or an operator skips it: %s",
            partition,
            batch.describe(),
            command,
        )
        self.metrics.partition_poisoned.labels(str(partition), batch.error.split(":")[0]).set(1)
        self.degrade(f"partition {partition}", f"paused: {batch.describe()}")

    def unpoisoned(self, partition: int) -> None:
        if (poison := self.poison.pop(partition, None)) is not None:
            self.metrics.partition_poisoned.remove(str(partition), poison["error"].split(":")[0])
            self.recover(f"partition {partition}")

    def flushed(self, partition: int, end_offset: int, generation: int = 0) -> None:
        self.last_flush_at = time.time()
        self.resumed(partition, end_offset, generation)

    def resumed(self, partition: int, landed_end: int, generation: int = 0) -> None:
        """Where the partition's landed flushes end, in its log `generation` (a flush of an older log, such as
        its lost offsets, does not move it)."""
        if generation >= self._generations.get(partition, 0):
            self._generations[partition] = generation
            self.flushed_offsets[partition] = landed_end
            self._lag(partition)

    def log_end(self, partition: int, end_offset: int) -> None:
        self.log_ends[partition] = end_offset
        self._lag(partition)

    def revoked(self, partitions: set[int]) -> None:
        self.assigned -= partitions
        for partition in partitions:
            self.unpoisoned(partition)
            self.recover(f"partition {partition} stalled")
            self._progress.pop(partition, None)
            self._lag_since.pop(partition, None)
            if self.log_ends.pop(partition, None) is not None:
                self.metrics.consumer_lag.remove(str(partition))
            with contextlib.suppress(KeyError):  # never probed
                self.metrics.freshness.remove(str(partition))

    def _lag(self, partition: int) -> None:
        if partition in self.log_ends and partition in self.assigned:
            lag = self.log_ends[partition] - self.flushed_offsets.get(partition, 0)
            self.metrics.consumer_lag.labels(str(partition)).set(max(lag, 0))

    def _confirmed(self, check: str, disagreements: Iterable) -> list:
        """The disagreements `check` saw in its run before too: one seen once may be an insert that landed
        between the check's reads."""
        seen = set(disagreements)
        confirmed = sorted(seen & self._suspects.get(check, set()))
        self._suspects[check] = seen
        return confirmed

    def check_failed(self, check: str, error: Exception) -> None:
        """A periodic check of ClickHouse's tables that could not run: what it looks for goes unseen."""
        self.degrade(f"{check} unchecked", f"the check failed: {str(error)[:300]}")

    def grains_built(self, error: Exception | None) -> None:
        """A pass of the builder of the hourly and daily grains (`pipeline/grains.py`): one that failed
        degrades `grains unbuilt` until one succeeds (the coarse grains fall behind the minute grain)."""
        if error is None:
            self.recover("grains unbuilt")
        else:
            self.degrade("grains unbuilt", f"the hourly and daily grains could not be built: {str(error)[:300]}")

    def grains_checked(self, tables: Iterable[str], disagreeing: Iterable[tuple[str, str]]) -> None:
        """A check of the coarse grains `tables` (`pipeline/grains.py`): `disagreeing` (table, period) pairs
        that the check before saw too degrade `grains` and count per table."""
        self.recover("grains unchecked")
        confirmed = self._confirmed("grains", disagreeing)
        for table in tables:
            self.metrics.grain_disagreements.labels(table).set(sum(t == table for t, _ in confirmed))
        if confirmed:
            periods = ", ".join(f"{table} {period}" for table, period in confirmed[:5])
            more = f" and {len(confirmed) - 5} more" if len(confirmed) > 5 else ""
            self.degrade(
                "grains",
                f"{len(confirmed)} period(s) disagree with the grain they are built from: {periods}{more}; "
                "`kern-telemetry grains` lists them, and --repair settles them once no worker writes into them",
            )
        else:
            self.recover("grains")

    def ledger_checked(self, disagreements: Iterable[LedgerDisagreement]) -> None:
        """A check of the ledger against its intents' running totals (`pipeline/ledger.py`): a partition
        found short (or over) by the same offsets in the check before too degrades `ledger`."""
        self.recover("ledger unchecked")
        found = {(d.topic, d.partition, d.generation, d.missing): d for d in disagreements}
        confirmed = [found[key] for key in self._confirmed("ledger", found)]
        self.metrics.ledger_disagreements.set(len(confirmed))
        if confirmed:
            self.degrade(
                "ledger",
                "; ".join(d.describe() for d in confirmed[:5])
                + (f" and {len(confirmed) - 5} more" if len(confirmed) > 5 else "")
                + " of the offsets its latest intent's running total accounts for: a ClickHouse killed in the "
                "middle of an insert lost an intent or ledger block (`kern-telemetry ledger`)",
            )
        else:
            self.recover("ledger")

    def report(self) -> dict:
        self.tick()
        value = self.metrics.values()
        return {
            "status": "ok" if self.ok else "degraded",
            "degraded": dict(self.degraded),
            "events_consumed": int(value("kern_events_consumed_total")),
            "events_folded_natively": int(value("kern_events_folded_natively_total")),
            "events_flushed": int(value("kern_events_flushed_total")),
            "dead_letters": int(
                sum(
                    s.value for m in self.metrics.dead_letters.collect() for s in m.samples if s.name.endswith("_total")
                )
            ),
            "flushes": int(value("kern_flushes_total")),
            "flush_failures": int(value("kern_flush_failures_total")),
            "fetch_errors": int(value("kern_fetch_errors_total")),
            "offset_gaps_refused": int(value("kern_offset_gaps_refused_total")),
            "pending_rows": int(value("kern_pending_rows")),
            "assigned_partitions": sorted(self.assigned),
            "flushed_offsets": {str(p): o for p, o in sorted(self.flushed_offsets.items())},
            "consumer_lag": {
                str(p): int(value("kern_consumer_lag", {"partition": str(p)}))
                for p in sorted(self.assigned)
                if p in self.log_ends
            },
            "poisoned_partitions": {str(p): dict(v) for p, v in sorted(self.poison.items())},
            "admission_epoch": int(value("kern_admission_epoch")),
            # rare values the cardinality guard did not track, by field: a flood of new values
            "suppressed_values": {
                s.labels["field"]: int(s.value)
                for m in self.metrics.values_suppressed.collect()
                for s in m.samples
                if s.name.endswith("_total")
            },
            "last_flush_age_s": None if self.last_flush_at is None else round(time.time() - self.last_flush_at, 3),
            "freshness_s": {
                str(p): round(value("kern_partition_freshness_seconds", {"partition": str(p)}), 3)
                for p in sorted(self.assigned)
            },
            "log_incidents": list(self.incidents),
            "offsets_gone": {
                s.labels["outcome"]: int(s.value)
                for m in self.metrics.offsets_gone.collect()
                for s in m.samples
                if s.name.endswith("_total")
            },
        }
