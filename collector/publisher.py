"""The collector's side of Kafka: one aiokafka producer, a lane per partition, the broker's state, and the
bound on what waits.

A request's events all go into one Kafka record batch, so the broker writes them whole or not at all.
Requests take the partitions in turn. Each partition has one lane: at most one record batch in flight,
and the requests that arrive meanwhile join the next batch (up to KERN_COLLECTOR_MAX_BATCH_BYTES), which
leaves when the one in flight is acknowledged. Under load, batches grow instead of queueing (aiokafka
itself sends one batch per partition per request to a broker); when idle, a request leaves at once.

`publish` returns once the broker acknowledged the request's batch (acks=all), or raises:

- `Unavailable` (answered 503): nothing of it was handed to the producer. The broker is known to be
  unreachable (a probe asks it for metadata every second; a batch that failed marks it down until the
  next probe succeeds; the batches waiting behind a failed one fail with it), or the producer has not
  started yet; or `BufferFull`: the bytes waiting for acknowledgement, with the bodies being read (`admit`),
  would exceed `max_pending_bytes` (backpressure: no queue grows without bound).
- `NotAcknowledged` (answered 504): its batch was handed over and failed, or was not acknowledged in
  time. The broker may or may not have written it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from typing import Any

from aiokafka.errors import KafkaError

from collector.metrics import CollectorMetrics
from pipeline.config import Settings
from pipeline.kafka import collector_producer

log = logging.getLogger("collector.kafka")

PROBE_INTERVAL_S = 1.0
START_RETRY_S = 1.0
RECORD_OVERHEAD = 32  # bytes a record adds to its value in a batch, at most (lengths, deltas, attributes)


class Unavailable(Exception):
    """Nothing was handed to the producer."""


class BufferFull(Unavailable):
    """Nothing was handed over: what waits for acknowledgement is at its bound."""


class NotAcknowledged(Exception):
    """Handed to the producer; failed or not acknowledged in time."""


class _Batch:
    """The next record batch of a lane, open to requests until its lane sends it."""

    def __init__(self, builder, size_limit: int):
        self.builder = builder
        self.room = size_limit
        self.acknowledged = asyncio.get_running_loop().create_future()
        self.acknowledged.add_done_callback(_retrieve)  # its requests may have left already (timeout)


class _Lane:
    def __init__(self, partition: int):
        self.partition = partition
        self.waiting: deque[_Batch] = deque()  # the last one is open to requests
        self.wake = asyncio.Event()


class Publisher:
    def __init__(
        self,
        settings: Settings,
        max_batch_bytes: int,
        ack_timeout_s: float,
        max_pending_bytes: int,
        metrics: CollectorMetrics,
    ):
        self.settings = settings
        self.max_batch_bytes = max_batch_bytes
        self.ack_timeout_s = ack_timeout_s
        self.max_pending_bytes = max_pending_bytes
        self.metrics = metrics
        self.pending_bytes = 0
        self.problem: str | None = "starting"  # why the broker cannot take batches now; None: it can
        self._producer: Any = None  # aiokafka's (no type hints), built inside the running loop: `start`
        self._started = False
        self._lanes: list[_Lane] = []
        self._turn = itertools.count()
        self._tasks: list[asyncio.Task] = []
        metrics.kafka_up.set(0)
        metrics.max_pending_bytes.set(max_pending_bytes)

    async def start(self) -> None:
        self._producer = collector_producer(self.settings, self.max_batch_bytes, self.ack_timeout_s)
        self._tasks.append(asyncio.create_task(self._run(), name="kafka"))

    async def stop(self) -> None:
        """After the server answered the requests in flight: stop the lanes and the probe, close the producer."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._started:
            await self._producer.stop()

    def admit(self, size: int) -> None:
        """Count `size` bytes in the pending bound (a batch waiting for the broker, or a body being read), or
        BufferFull; `release` them when they leave. When nothing waits any size passes, so that a batch larger
        than the bound is not refused for ever."""
        if self.pending_bytes and self.pending_bytes + size > self.max_pending_bytes:
            raise BufferFull(f"{self.pending_bytes} bytes of batches and bodies wait")
        self._pending(size)

    def release(self, size: int) -> None:
        self._pending(-size)

    async def publish(self, events: list, size: int) -> None:
        if self.problem is not None:
            raise Unavailable(self.problem)
        self.admit(size)
        lane = self._lanes[next(self._turn) % len(self._lanes)]
        need = size + RECORD_OVERHEAD * len(events)
        if not lane.waiting or lane.waiting[-1].room < need:
            lane.waiting.append(_Batch(self._producer.create_batch(), self.max_batch_bytes + (64 << 10)))
            lane.wake.set()
        batch = lane.waiting[-1]
        append = batch.builder.append
        for event in events:
            append(key=None, value=event, timestamp=None)
        batch.room -= need
        try:  # at worst it waits for the batch ahead, then for its own: each fails at the ack timeout
            await asyncio.wait_for(asyncio.shield(batch.acknowledged), 2 * self.ack_timeout_s + 1)
        except TimeoutError as error:
            raise NotAcknowledged("timeout") from error
        finally:
            self.release(size)

    async def _send(self, lane: _Lane) -> None:
        """A lane's loop: send its oldest batch, wait for the broker, settle the batch's requests."""
        while True:
            while not lane.waiting:
                lane.wake.clear()
                await lane.wake.wait()
            batch = lane.waiting.popleft()
            try:
                acknowledged = await self._producer.send_batch(
                    batch.builder, self.settings.topic, partition=lane.partition
                )
            except KafkaError as error:  # no metadata or no room within the ack timeout: not handed over
                self._fail(lane, batch, Unavailable, error)
                continue
            try:
                await acknowledged
            except KafkaError as error:
                self._fail(lane, batch, NotAcknowledged, error)
            else:
                batch.acknowledged.set_result(None)

    def _fail(self, lane: _Lane, batch: _Batch, outcome: type[Exception], error: Exception) -> None:
        """The broker failed a batch: it and the batches waiting behind it (never handed over) fail."""
        self._down(type(error).__name__)
        batch.acknowledged.set_exception(outcome(self.problem))
        while lane.waiting:
            lane.waiting.popleft().acknowledged.set_exception(Unavailable(self.problem))

    def _pending(self, size: int) -> None:
        self.pending_bytes += size
        self.metrics.pending_bytes.set(self.pending_bytes)

    def _down(self, reason: str) -> None:
        if self.problem is None:
            log.warning("kafka: broker unreachable (%s); answering 503 until it answers again", reason)
            self.metrics.kafka_up.set(0)
        self.problem = f"broker unreachable: {reason}"

    def _up(self) -> None:
        if self.problem is not None:
            log.info("kafka: the broker answers; taking batches")
            self.metrics.kafka_up.set(1)
        self.problem = None

    async def _run(self) -> None:
        """Start the producer and the lanes (retrying: the broker may come up after the collector; a topic
        that gains partitions later is used after a restart), then probe the broker."""
        while not self._lanes:
            try:
                if not self._started:
                    await self._producer.start()
                    self._started = True
                partitions = sorted(await self._producer.partitions_for(self.settings.topic))
            except KafkaError as error:
                self._down(type(error).__name__)
                await asyncio.sleep(START_RETRY_S)
                continue
            self._lanes = [_Lane(partition) for partition in partitions]
            self._tasks += [
                asyncio.create_task(self._send(lane), name=f"lane {lane.partition}") for lane in self._lanes
            ]
        while True:
            try:
                await asyncio.wait_for(self._producer.client.fetch_all_metadata(), PROBE_INTERVAL_S * 2)
            except (TimeoutError, KafkaError) as error:
                self._down(type(error).__name__)
            else:
                self._up()
            await asyncio.sleep(PROBE_INTERVAL_S)


def _retrieve(future: asyncio.Future) -> None:
    """Take a settled batch's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
