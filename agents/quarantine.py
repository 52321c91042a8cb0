"""Partitions paused before a record batch they cannot decode, and how they resume.

When aiokafka cannot decode a batch (a codec this build lacks, a corrupt batch), the fetcher finds the
partition whose own fetch fails (`agents/fetching.py`) and hands it here: the bad batch is located on the
broker's raw bytes (`agents/poison.py`), the decodable records before it are folded, and the partition
is paused right before it. Losing nothing is the default; an operator who decides the records are lost
asks to skip them (`kern-telemetry skip`), and the partition resumes after them.
"""

from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer

from agents.checkpoint import Checkpoint
from agents.flushing import Flusher
from agents.partitions import Partitions, PartitionState
from agents.poison import find_undecodable_batch
from agents.retry import first_line
from pipeline.health import Health
from pipeline.sink import SkipRequest

log = logging.getLogger(__name__)

_DRAIN_S = 30  # longest wait for the decodable records before a bad batch
_DRAIN_WAIT_MS = 1000


class Quarantine:
    """Partitions paused before a batch they cannot decode, and how they resume: the decodable records
    before the batch are folded, the partition is paused right there (backpressure never resumes it), and
    it resumes when an operator asks to skip through the batch (`kern-telemetry skip`), with the skipped
    range flushed like any range (intent, quality rows by offsets, a dead letter with the reason), so that
    it is never consumed again after a crash or a rebalance and the ledger stays whole."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        partitions: Partitions,
        checkpoint: Checkpoint,
        flusher: Flusher,
        health: Health,
        max_partition_fetch_bytes: int,
    ):
        self.consumer = consumer
        self.partitions = partitions
        self.checkpoint = checkpoint
        self.flusher = flusher
        self.health = health
        self.max_bytes = max_partition_fetch_bytes

    async def examine(self, state: PartitionState, error: Exception) -> list:
        """Find the batch of `state`'s partition that cannot be decoded; pause the partition right before
        it and return the decodable records that precede it. Nothing when the broker's raw batches all
        decode (the failure was elsewhere): the partition stays as it is and is fetched again."""
        found = await find_undecodable_batch(self.consumer, state.tp, state.cursor, self.max_bytes)
        state.seek(self.consumer)
        if found is None:
            log.warning(
                "partition %d: fetch failed (%s: %s) but every batch from offset %d decodes; retrying",
                state.partition,
                type(error).__name__,
                first_line(error),
                state.cursor,
            )
            return []
        records: list = []
        deadline = time.monotonic() + _DRAIN_S
        try:
            while len(records) < found.records_before and time.monotonic() < deadline:
                drained = await self.consumer.getmany(
                    state.tp, timeout_ms=_DRAIN_WAIT_MS, max_records=found.records_before - len(records)
                )
                records += drained.get(state.tp, [])
        except Exception as exc:  # noqa: BLE001 - the next fetch error examines the partition again
            log.warning("partition %d: draining up to offset %d failed: %s", state.partition, found.first_offset, exc)
        if len(records) == found.records_before:  # exactly up to the bad batch: stop there
            self.consumer.pause(state.tp)
            state.poison = found
            self.health.poisoned(state.partition, found, state.tp.topic)
        return records

    async def apply_skips(self) -> None:
        """Resume every poisoned partition an operator asked to skip through."""
        for state in [s for s in self.partitions if s.poison is not None]:
            request = await self.checkpoint.clickhouse.call(
                self.checkpoint.sink.skip_request, state.tp.topic, state.partition, state.cursor
            )
            if request is not None and self.partitions.get(state.partition) is state and state.poison is not None:
                self._skip(state, request)

    def _skip(self, state: PartitionState, request: SkipRequest) -> None:
        if (pending := state.close()) is not None:
            self.flusher.ready.append(pending)
        self.flusher.ready.append(self.checkpoint.skipped(state, request.through_offset, request.reason))
        log.warning(
            "partition %d: skipping offsets %d-%d as an operator asked (%s); consumption resumes",
            state.partition,
            state.cursor,
            request.through_offset,
            request.reason,
        )
        state.skip_through(request.through_offset)
        self.health.unpoisoned(state.partition)
        state.seek(self.consumer)
        if not self.partitions.paused:
            self.consumer.resume(state.tp)
        self.flusher.flush_soon()
