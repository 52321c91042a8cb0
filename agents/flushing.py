"""When rollups flush, and what happens while they cannot.

- **Schedule**: every `KERN_FLUSH_INTERVAL_SECONDS` once caught up; every
  `KERN_CATCH_UP_FLUSH_INTERVAL_SECONDS` while a partition is more than `KERN_CATCH_UP_LAG_EVENTS` behind
  its log end (freshness is lost anyway, and fewer, larger inserts clear a backlog sooner); at once when the
  rollups being folded hold `KERN_FLUSH_MAX_EVENTS` events together (so their memory, ~260 bytes an event
  of the worst shape, is bounded whatever the worker's speed), a replayed range completes, or backpressure
  paused consumption.
- **The log first**: before rollups are written, the agent confirms their log is still the broker's
  (`RollupAgent.confirm_logs`): a recreated topic's records never flush as the old log's.
- **Order and retries**: closed rollups wait in `ready` and flush in order (`agents/checkpoint.py`), in
  batches of at most one per partition and `BATCH_MAX_EVENTS` (one landings insert and one insert per
  sketch table for the whole batch), retried with backoff until they land; between attempts the lock is
  free, so a revocation can drop the rollups of partitions this worker lost.
- **Backpressure**: above `KERN_MAX_PENDING_ROWS` unflushed rows every partition is paused; below half of
  it they resume (but a poisoned one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer

from agents.checkpoint import Checkpoint, batch_of
from agents.partitions import Partitions
from agents.retry import backoff, first_line
from pipeline.config import Settings
from pipeline.health import Health
from pipeline.rollup import PartitionRollup


class Flusher:
    def __init__(
        self,
        settings: Settings,
        partitions: Partitions,
        checkpoint: Checkpoint,
        consumer: AIOKafkaConsumer,
        health: Health,
        confirm_logs: Callable[[bool], Awaitable[None]],
    ):
        self.settings = settings
        self.partitions = partitions
        self.checkpoint = checkpoint
        self.consumer = consumer
        self.health = health
        self.confirm_logs = confirm_logs
        self.ready: list[PartitionRollup] = []  # closed rollups, flushed in order
        self.lock = asyncio.Lock()  # held by a flush attempt
        self._now = asyncio.Event()
        self._last = time.monotonic()

    def flush_soon(self) -> None:
        self._now.set()

    def due(self) -> bool:
        if self.partitions.paused:  # backpressure: only a flush frees the rows that paused consumption
            return True
        settings = self.settings
        catching_up = self.partitions.behind(self.consumer.highwater, settings.catch_up_lag_events)
        interval = settings.catch_up_flush_interval_seconds if catching_up else settings.flush_interval_seconds
        return (
            time.monotonic() - self._last >= interval or self.partitions.unflushed_events() >= settings.flush_max_events
        )

    def apply_backpressure(self) -> None:
        rows = self.partitions.unflushed_rows() + sum(rollup.rows for rollup in self.ready)
        self.health.metrics.pending_rows.set(rows)
        bound = self.settings.max_pending_rows
        if not self.partitions.paused and rows >= bound:
            self.partitions.pause(self.consumer)
            self.health.degrade("backpressure", f"{rows} unflushed rows >= {bound}: consumption paused")
        elif self.partitions.paused and rows < bound // 2:
            self.partitions.resume(self.consumer)
            self.health.recover("backpressure")

    async def run(self, stopping) -> None:
        """The flush loop: wake at the flush interval or when asked, flush what is due."""
        while not stopping():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), self.settings.flush_interval_seconds)
            self._now.clear()
            if stopping():
                return
            if self.ready or self.due():
                await self.flush_all()

    async def flush_all(self) -> None:
        """Close every rollup being folded and flush everything ready, retrying until it lands."""
        self.partitions.close_all(self.ready)
        self._last = time.monotonic()
        await self.confirm_logs(bool(self.ready))
        delays = backoff()
        while self.ready:
            async with self.lock:
                try:
                    while self.ready:
                        batch = batch_of(self.ready)
                        await self.checkpoint.flush(batch)
                        del self.ready[: len(batch)]
                except Exception as exc:  # noqa: BLE001 - any failure: keep the rollup, retry later
                    self.health.metrics.flush_failures.inc()
                    self.health.degrade("clickhouse", f"flush failed: {type(exc).__name__}: {first_line(exc)}")
                else:
                    self.health.recover("clickhouse")
                    self.apply_backpressure()
                    return
            await asyncio.sleep(next(delays))

    def drop(self, partitions: set[int]) -> None:
        """Forget the ready rollups of revoked partitions (call with the lock held)."""
        self.ready = [rollup for rollup in self.ready if rollup.partition not in partitions]
