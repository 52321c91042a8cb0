"""Exactly-once counts: how a partition's rollups reach ClickHouse, and where a worker resumes a partition.

A flush covers one source partition's contiguous offset range [start, end): its rollup (`pipeline/rollup.py`)
is a pure function of the records in the range, so rebuilding it from the same offsets gives the same rows.
The protocol, per source partition:

1. **Dead letters** of the range go to the DLQ topic, keyed by their source position (at-least-once:
   a crash before step 2 sends them again; a consumer of the DLQ drops duplicates by key).
2. **Intent**: the range, what it covered (counted, dead-lettered, late, skipped: the ledger) and the
   admission epoch its rows were projected with go to `ingest_flushes`, before any of its data.
3. **Rows**: runs, client drops, quality, session and candidate sightings, each insert with a
   deduplication token derived from the range (`token`). ClickHouse drops a block whose token it has
   seen, in the table and in its materialized views, so writing the same range twice counts it once.
4. **Offsets** are committed to Kafka, for lag monitoring only: `ingest_flushes` is the truth.
5. **Resume**, when a worker gets a partition (start, restart after a crash, rebalance): it reads the
   partition's last recorded range and re-consumes exactly that range into an identical rollup before
   anything newer (`Replay`), projected with the recorded admission epoch and closed only at the
   range's end: whatever of the last flush had not landed lands now, whatever had is dropped as a
   duplicate. A range an operator skipped is never
   re-consumed: its rows are rebuilt from its skip request. A partition without a flush starts at the
   beginning of its log. Everything after the last range's end was never part of a recorded flush.
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from agents.admission import Admitter
from agents.clickhouse import ClickHouseThread
from pipeline.config import Settings
from pipeline.health import Health
from pipeline.projector import EventProjector
from pipeline.rejections import QUALITY_ONLY, Reason
from pipeline.rollup import PartitionRollup
from pipeline.sink import ClickHouseSink, FlushRange, SkipRequest

log = logging.getLogger(__name__)


def token(rollup: PartitionRollup) -> str:
    """The deterministic identity of a flush: the same range always gets the same token."""
    return f"{rollup.topic}/{rollup.partition}/{rollup.start_offset}-{rollup.end_offset}"


class Replay:
    """Step 5: the recorded range [start, end) re-consumed into an identical rollup, projected with the
    admission epoch the first attempt recorded. It closes exactly at `end`: flushing part of it under its
    token would make ClickHouse drop the rest as a duplicate later."""

    __slots__ = ("rollup", "end", "projector")

    def __init__(self, topic: str, partition: int, start: int, end: int, projector: EventProjector):
        # its dead letters were sent by the first attempt
        self.rollup = PartitionRollup(topic, partition, start, replay=True, epoch=projector.epoch)
        self.end = end
        self.projector = projector

    def fold(self, messages: list) -> tuple[PartitionRollup | None, list]:
        """Fold the records inside the range; returns the rollup once the range is complete (or once
        records past it arrive: the rest of the range is gone from the log) and the records after it."""
        cut = bisect.bisect_left(messages, self.end, key=_offset)
        if cut:
            self.rollup.add(messages[:cut], self.projector)
        if self.rollup.end_offset >= self.end or cut < len(messages):
            return self.rollup, messages[cut:]
        return None, []


class Resumption(NamedTuple):
    """Where an assigned partition starts (step 5)."""

    cursor: int  # the first offset folded after the replay (or from the start)
    replay: Replay | None = None  # the last recorded range, re-consumed first
    rewrite: PartitionRollup | None = None  # the rows of a skipped range, written again


class Checkpoint:
    def __init__(self, settings: Settings, sink: ClickHouseSink, clickhouse: ClickHouseThread,
                 producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, health: Health, admitter: Admitter):
        self.settings = settings
        self.sink = sink
        self.admitter = admitter
        self.clickhouse = clickhouse
        self.producer = producer
        self.consumer = consumer
        self.health = health
        self.metrics = health.metrics

    async def flush(self, rollup: PartitionRollup) -> None:
        """Steps 1 to 4 for one closed rollup. Raises when ClickHouse fails: the caller retries the same
        rollup, whose dead letters are not sent again."""
        log.debug("flushing %s: %d events, %d rows, %d dead letters", token(rollup), rollup.events, rollup.rows,
                  len(rollup.dead_letters))
        if rollup.dead_letters:  # 1.
            sends = [await self.producer.send(self.settings.dlq_topic, value=letter.value, key=letter.key)
                     for letter in rollup.dead_letters]
            for sent in sends:
                await sent
            rollup.dead_letters.clear()
        started = time.perf_counter()
        await self.clickhouse.call(self._write, rollup)  # 2. and 3.
        self.metrics.flush_duration.observe(time.perf_counter() - started)
        self._count(rollup)
        self.admitter.consider(rollup)
        try:  # 4.
            await self.consumer.commit({TopicPartition(rollup.topic, rollup.partition):
                                        OffsetAndMetadata(rollup.end_offset, "")})
        except Exception as exc:  # noqa: BLE001 - informational only; ingest_flushes is the truth
            log.debug("offset commit for partition %d skipped: %s", rollup.partition, exc)

    def _write(self, rollup: PartitionRollup) -> None:
        flush = token(rollup)
        self.sink.record_intent(rollup, flush)  # 2.
        self.sink.write_rows(rollup, flush, self.admitter.keys)  # 3.

    def _count(self, rollup: PartitionRollup) -> None:
        metrics = self.metrics
        metrics.flushes.inc()
        metrics.events_flushed.inc(rollup.events)
        if not rollup.replay:  # a replay's dead letters were counted when they were sent
            for (_, _, reason), events in rollup.quality.items():
                if reason not in QUALITY_ONLY and reason is not Reason.SKIPPED:
                    metrics.dead_letters.labels(reason).inc(events)
            metrics.offsets_skipped.inc(rollup.skipped)
            for field, values in rollup.suppressed.items():
                metrics.values_suppressed.labels(field).inc(values)
        self.health.flushed(rollup.partition, rollup.end_offset)

    async def resume(self, tp: TopicPartition) -> Resumption:
        """Step 5 for one assigned partition (blocking calls on the ClickHouse thread)."""
        last: FlushRange | None = await self.clickhouse.call(self.sink.last_flush, tp.topic, tp.partition)
        if last is None:
            beginning = (await self.consumer.beginning_offsets([tp]))[tp]
            return Resumption(beginning)
        if not last.skipped:
            return Resumption(last.end_offset, Replay(tp.topic, tp.partition, last.start_offset, last.end_offset,
                                                      self.projector(last.admission_epoch)))
        skip: SkipRequest | None = await self.clickhouse.call(self.sink.skip_request, tp.topic, tp.partition,
                                                              last.end_offset - 1)
        if skip is None:
            log.error("partition %d: the skipped range %d-%d has no skip request any more; its quality rows are not "
                      "written again", tp.partition, last.start_offset, last.end_offset - 1)
            return Resumption(last.end_offset)
        return Resumption(last.end_offset, rewrite=self.skipped(tp, last.start_offset, last.end_offset, skip,
                                                                replay=True))

    def projector(self, epoch: int) -> EventProjector:
        """A projector with the admission of `epoch`."""
        return EventProjector.from_settings(self.settings, self.admitter.admissions.at(epoch))

    def skipped(self, tp: TopicPartition, start: int, end: int, request: SkipRequest,
                replay: bool = False) -> PartitionRollup:
        """The flush of the range [start, end) an operator skipped, counted in the window of the request,
        so that a rewrite after a crash is identical."""
        at = request.requested_at_s
        return PartitionRollup.skip(tp.topic, tp.partition, start, end, at - at % self.settings.window_seconds,
                                    request.reason, replay=replay)


def _offset(message: Any) -> int:
    return message.offset
