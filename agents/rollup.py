"""The rollup agent: drains the events topic in batches, folds each source partition into a pending
rollup, and flushes rollups to ClickHouse idempotently (protocol in `pipeline/sink.py`).

Why not a stock `@app.agent`: Faust's stream path builds an Event and an ack per record and measured
~12,000 events/s here; a per-event windowed Table ~3,000. This agent is a Faust (mode) service that
runs inside the Faust worker (lifecycle, signals, web endpoints, logging) but reads `getmany` batches
straight from aiokafka, the client Faust itself uses, and keeps no per-event changelog: ClickHouse
sums the partial aggregates that each flush writes.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import mode
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from pipeline.config import Settings
from pipeline.events import EventProjector
from pipeline.health import Health
from pipeline.kafka import client_options
from pipeline.rollup import PartitionRollup
from pipeline.sink import ClickHouseSink, connect
from tables.migrations import migrate
from tables.schema import SchemaOptions

log = logging.getLogger(__name__)

KAFKA_PROBE_S = 5.0
_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 15.0
_FETCHER_TURNS = 4


class RollupAgent(mode.Service):
    def __init__(self, settings: Settings, health: Health | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.settings = settings
        self.topic = settings.topic
        self.health = health or Health()
        self.projector = EventProjector.from_settings(settings)
        self._clickhouse_thread = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")
        self.sink: ClickHouseSink | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._pending: dict[int, PartitionRollup] = {}  # partition -> rollup being folded
        self._replay_end: dict[int, int] = {}  # partition -> end offset of the range being replayed
        self._positioned: set[int] = set()  # assigned partitions whose start offset is settled
        self._assignments = 0  # completed `on_assigned` calls
        self._ready: list[PartitionRollup] = []  # closed rollups, flushed in order
        self._flush_lock = asyncio.Lock()
        self._flush_now = asyncio.Event()
        self._last_flush = time.monotonic()
        self._paused = False
        self._closing = False

    # --- lifecycle ---------------------------------------------------------------------------------

    async def on_start(self) -> None:
        settings = self.settings
        self.sink = await self._retry("clickhouse", self._clickhouse, self._open_sink)
        self.producer = AIOKafkaProducer(client_id="kern-telemetry-dlq", acks="all", linger_ms=20,
                                         **client_options(settings))
        await self._retry("kafka", self.producer.start)
        self.consumer = AIOKafkaConsumer(
            group_id=settings.consumer_group, client_id="kern-telemetry-rollup",
            enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20, fetch_max_wait_ms=200,
            max_poll_records=50_000, session_timeout_ms=10_000, heartbeat_interval_ms=2_000,
            rebalance_timeout_ms=10_000, **client_options(settings))
        await self._retry("kafka", self.consumer.start)
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        # The hot path allocates many short-lived, never-cyclic tuples: keep the cyclic GC from
        # re-scanning start-up objects (Faust, aiokafka, ClickHouse client) and from running every 700.
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
        log.info("rollup agent started: topic %s, ClickHouse %s", self.topic, settings.safe_dsn)

    def _open_sink(self) -> ClickHouseSink:
        client = connect(self.settings)
        migrate(client, SchemaOptions.from_settings(self.settings))
        return ClickHouseSink(client, self.settings.clickhouse_database,
                              distributed=bool(self.settings.clickhouse_cluster))

    async def on_stop(self) -> None:
        """Graceful stop: no more fetches, flush what is pending, commit, close."""
        self._closing = True
        if self.consumer is not None and self.sink is not None:
            self._close_all()
            try:
                await asyncio.wait_for(self._flush_ready(), timeout=self.settings.flush_interval_seconds + 20)
            except asyncio.TimeoutError:
                log.warning("stopped before the last flush landed; the next worker replays it")
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        self._clickhouse_thread.shutdown(wait=True)

    # --- consuming ---------------------------------------------------------------------------------

    @mode.Service.task
    async def _consume(self) -> None:
        await self._wait_started()
        while not self.should_stop and not self._closing:
            try:
                batches = await self.consumer.getmany(timeout_ms=100)
            except Exception as exc:  # noqa: BLE001 - reconnects are aiokafka's; keep polling
                self.health.degrade("kafka", f"fetch failed: {type(exc).__name__}")
                await asyncio.sleep(1)
                continue
            if batches:
                assignments = self._assignments
                await _let_the_fetcher_run()
                if assignments != self._assignments:  # every partition was sought again: these are stale
                    continue
            for tp, messages in batches.items():
                # Records fetched before `on_assigned` sought the partition come from the wrong offset.
                if tp.partition in self._positioned and not self._closing:
                    self._fold(tp.partition, messages)
            self._apply_backpressure()
            if self._due():
                self._flush_now.set()

    @mode.Service.task
    async def _probe_kafka(self) -> None:
        """aiokafka retries a lost broker silently (getmany just returns nothing), so ask the broker for
        metadata every few seconds: the health report says whether it answers."""
        await self._wait_started()
        while not self.should_stop and not self._closing:
            try:
                await asyncio.wait_for(self.consumer.topics(), timeout=KAFKA_PROBE_S)
                self.health.recover("kafka")
            except Exception as exc:  # noqa: BLE001 - any failure to reach the broker
                self.health.degrade("kafka", f"broker unreachable: {type(exc).__name__}")
            await asyncio.sleep(KAFKA_PROBE_S)

    async def _wait_started(self) -> None:
        while self.consumer is None and not self.should_stop:
            await asyncio.sleep(0.05)

    def _fold(self, partition: int, messages: list) -> None:
        project = self.projector.project
        self.health.consumed(len(messages))
        end = self._replay_end.get(partition)
        if end is not None:
            cut = bisect.bisect_left(messages, end, key=_offset)
            if cut:
                self._pending[partition].add(messages[:cut], project)
            if self._pending[partition].end_offset >= end or cut < len(messages):
                self._ready.append(self._pending.pop(partition))
                del self._replay_end[partition]
                self._flush_now.set()
            messages = messages[cut:]
            if not messages:
                return
        rollup = self._pending.get(partition)
        if rollup is None:
            rollup = self._pending[partition] = PartitionRollup(self.topic, partition, messages[0].offset)
        rollup.add(messages, project)

    def _due(self) -> bool:
        if self._paused:  # backpressure: only a flush frees the rows that paused consumption
            return True
        settings = self.settings
        interval = settings.catch_up_flush_interval_seconds if self._catching_up() else settings.flush_interval_seconds
        if time.monotonic() - self._last_flush >= interval:
            return True
        return any(r.events >= settings.flush_max_events for r in self._pending.values())

    def _catching_up(self) -> bool:
        """Whether a partition is far behind its log end (per the last fetch): then freshness is already
        lost, and larger flushes (fewer inserts, fewer ClickHouse parts) get the backlog done sooner."""
        highwater = self.consumer.highwater
        return any((highwater(TopicPartition(self.topic, partition)) or 0) - rollup.end_offset
                   > self.settings.catch_up_lag_events for partition, rollup in self._pending.items())

    def _unflushed_rows(self) -> int:
        return sum(r.rows for r in self._pending.values()) + sum(r.rows for r in self._ready)

    def _apply_backpressure(self) -> None:
        rows = self._unflushed_rows()
        self.health.pending_rows = rows
        bound = self.settings.max_pending_rows
        if not self._paused and rows >= bound:
            self._paused = True
            self.consumer.pause(*self.consumer.assignment())
            self.health.degrade("backpressure", f"{rows} unflushed rows >= {bound}: consumption paused")
        elif self._paused and rows < bound // 2:
            self._paused = False
            self.consumer.resume(*self.consumer.assignment())
            self.health.recover("backpressure")

    # --- flushing ----------------------------------------------------------------------------------

    @mode.Service.task
    async def _flusher(self) -> None:
        await self._wait_started()
        while not self.should_stop and not self._closing:
            try:
                await asyncio.wait_for(self._flush_now.wait(), self.settings.flush_interval_seconds)
            except asyncio.TimeoutError:
                pass
            self._flush_now.clear()
            if self._closing:
                return
            if not self._ready and not self._due():
                continue
            self._close_all()
            await self._flush_ready()

    def _close_all(self) -> None:
        """Move pending rollups to the ready list. A replayed range is only closed at its end offset
        (in `_fold`): flushing part of it under its token would make ClickHouse drop the rest later."""
        for partition, rollup in list(self._pending.items()):
            if rollup.events and partition not in self._replay_end:
                self._ready.append(self._pending.pop(partition))
        self._last_flush = time.monotonic()

    async def _flush_ready(self) -> None:
        """Flush the ready rollups in order, retrying with backoff until they land. Between attempts
        the lock is free, so a revocation can drop the rollups of partitions this worker lost."""
        backoff = _BACKOFF_START_S
        while self._ready:
            async with self._flush_lock:
                try:
                    while self._ready:
                        await self._flush(self._ready[0])
                        self._ready.pop(0)
                except Exception as exc:  # noqa: BLE001 - any failure: keep the rollup, retry later
                    self.health.flush_failures += 1
                    self.health.degrade("clickhouse", f"flush failed: {type(exc).__name__}: {_first_line(exc)}")
                else:
                    self.health.recover("clickhouse")
                    self._apply_backpressure()
                    return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def _flush(self, rollup: PartitionRollup) -> None:
        log.debug("flushing %s: %d events, %d rows, %d dead letters", rollup.token, rollup.events, rollup.rows,
                  len(rollup.dead_letters))
        if rollup.dead_letters:
            sends = [await self.producer.send(self.settings.dlq_topic, value=d.value, key=d.key)
                     for d in rollup.dead_letters]
            await asyncio.gather(*sends)
            self.health.dead_letters += len(rollup.dead_letters)
            rollup.dead_letters.clear()  # sent: a retry of the ClickHouse part must not resend them
        started = time.perf_counter()
        await self._clickhouse(self._write, rollup)
        self.health.flushed(rollup.partition, rollup.end_offset, rollup.events, time.perf_counter() - started)
        try:
            await self.consumer.commit({TopicPartition(self.topic, rollup.partition): OffsetAndMetadata(rollup.end_offset, "")})
        except Exception as exc:  # noqa: BLE001 - informational only; ingest_flushes is the truth
            log.debug("offset commit for partition %d skipped: %s", rollup.partition, exc)

    def _write(self, rollup: PartitionRollup) -> None:
        self.sink.record_intent(rollup)
        self.sink.write_rollup(rollup)

    # --- partition assignment ----------------------------------------------------------------------

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        async with self._flush_lock:  # waits for an attempt in progress, so no flush lands after we return
            self._ready = [r for r in self._ready if r.partition not in revoked]
            for partition in revoked:
                self._pending.pop(partition, None)
                self._replay_end.pop(partition, None)
                self._positioned.discard(partition)
            self.health.assigned -= revoked
        log.info("partitions revoked: %s", sorted(revoked))

    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Start each partition at its last recorded flush (replayed, see `pipeline/sink.py`), or at the
        beginning of the log when it has none. Positions are looked up first and then set without an
        await in between, so `getmany` cannot hand out records from a position about to change."""
        last_flushes = {tp: await self._retry("clickhouse", self._clickhouse, self.sink.last_flush, self.topic,
                                              tp.partition) for tp in partitions}
        fresh = [tp for tp, last in last_flushes.items() if last is None]
        beginnings = await self._retry("kafka", self.consumer.beginning_offsets, fresh) if fresh else {}
        for tp, last in last_flushes.items():
            if last is None:
                self.consumer.seek(tp, beginnings[tp])
            else:
                self.consumer.seek(tp, last.start_offset)
                self._replay_end[tp.partition] = last.end_offset
                self._pending[tp.partition] = PartitionRollup(self.topic, tp.partition, last.start_offset, replay=True)
            self._positioned.add(tp.partition)
            self.health.assigned.add(tp.partition)
        self._assignments += 1
        if partitions:
            log.info("partitions assigned: %s", sorted(tp.partition for tp in partitions))
        if self._paused:
            self.consumer.pause(*partitions)

    async def query(self, sql: str) -> Any:
        """Run a read query on this worker's ClickHouse client (the dev dashboard's way into chDB,
        which admits one process per path)."""
        while self.sink is None:
            await asyncio.sleep(0.1)
        return await self._clickhouse(self.sink.client.query, sql)

    # --- helpers -----------------------------------------------------------------------------------

    async def _clickhouse(self, function: Callable, *args: Any) -> Any:
        """Run a blocking ClickHouse call on the one thread that owns the client."""
        return await asyncio.get_running_loop().run_in_executor(self._clickhouse_thread, function, *args)

    async def _retry(self, component: str, function: Callable, *args: Any) -> Any:
        backoff = _BACKOFF_START_S
        while True:
            try:
                result = function(*args)
                if asyncio.iscoroutine(result):
                    result = await result
                self.health.recover(component)
                return result
            except Exception as exc:  # noqa: BLE001
                if self.should_stop:
                    raise
                self.health.degrade(component, f"{type(exc).__name__}: {_first_line(exc)}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)


async def _let_the_fetcher_run() -> None:
    """Give aiokafka's fetch task the few event-loop turns it needs (wake-up, task start, send) to ask
    the broker for the partitions `getmany` just emptied, so the broker prepares the next batch while
    this one is folded. Folding first left the broker idle for ~10% of a backlog drain."""
    for _ in range(_FETCHER_TURNS):
        await asyncio.sleep(0)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, agent: RollupAgent):
        self.agent = agent

    async def on_partitions_revoked(self, revoked):
        await self.agent.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned):
        await self.agent.on_assigned(set(assigned))


def _offset(message: Any) -> int:
    return message.offset


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
