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
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import mode
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from agents.partitions import PartitionState
from agents.poison import find_undecodable_batch
from pipeline.config import Settings
from pipeline.events import EventProjector
from pipeline.health import Health
from pipeline.kafka import client_options
from pipeline.rollup import OffsetGap, PartitionRollup
from pipeline.sink import ClickHouseSink, FlushRange, SkipRequest, connect
from tables.ddl import SchemaOptions
from tables.migrate import migrate

log = logging.getLogger(__name__)

KAFKA_PROBE_S = 5.0
_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 15.0
_FETCHER_TURNS = 4
_MAX_PARTITION_FETCH_BYTES = 16 << 20
_ISOLATION_WAIT_MS = 1000  # per partition, when finding which one a failed fetch came from
_SKIP_POLL_S = 2.0  # how often a worker with a poisoned partition looks for an operator's skip


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
        self.partitions: dict[int, PartitionState] = {}  # assigned and positioned
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
            fetch_max_bytes=64 << 20, max_partition_fetch_bytes=_MAX_PARTITION_FETCH_BYTES, fetch_max_wait_ms=200,
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
            for tp, messages in (await self._fetch()).items():
                state = self.partitions.get(tp.partition)
                if state is not None and not self._closing:
                    self._fold(state, messages)
            self._apply_backpressure()
            if self._due():
                self._flush_now.set()

    async def _fetch(self) -> dict:
        """The next batches. Empty when a rebalance completed after `getmany` returned them: every
        partition was sought again, so they are stale (aiokafka itself drops what an assignment made stale
        before it returns)."""
        try:
            batches = await self.consumer.getmany(timeout_ms=100)
        except Exception as exc:  # noqa: BLE001 - a batch aiokafka could not decode, or a fetch error
            assignments = self._assignments
            batches = await self._after_fetch_error(exc)
        else:
            if not batches:
                return batches
            assignments = self._assignments
            await _let_the_fetcher_run()
        return batches if assignments == self._assignments else {}

    def _fold(self, state: PartitionState, messages: list) -> None:
        self.health.consumed(len(messages))
        ready = len(self._ready)
        try:
            state.fold(messages, self.projector.project, self._ready)
        except OffsetGap as gap:  # records were skipped on the way here: fetch again from the cursor
            self.health.gaps_refused += 1
            log.warning("refused a batch: %s; fetching again from offset %d", gap, state.cursor)
            state.seek(self.consumer)
        if len(self._ready) > ready:  # a replayed range completed
            self._flush_now.set()

    async def _after_fetch_error(self, error: Exception) -> dict:
        """aiokafka raised for a whole fetch: the records it had drained for the other partitions are
        gone, and their positions moved past them. Seek every partition back to its cursor, then drain
        them one at a time: a partition whose own fetch raises is examined (`agents/poison.py`), its
        decodable records before the bad batch are folded, and it is paused until an operator skips the
        batch. The other partitions go on."""
        self.health.fetch_errors += 1
        for state in self.partitions.values():
            state.seek(self.consumer)
        batches, poisoned = {}, []
        for state in list(self.partitions.values()):
            if state.poison is not None or self._paused:
                continue
            try:
                batches.update(await self.consumer.getmany(state.tp, timeout_ms=_ISOLATION_WAIT_MS))
            except Exception as exc:  # noqa: BLE001 - this partition's own fetch failed
                records = await self._examine(state, exc)
                if records:
                    batches[state.tp] = records
                if state.poison is not None:
                    poisoned.append(state.partition)
        if not poisoned:
            self.health.degrade("kafka", f"fetch failed: {type(error).__name__}: {_first_line(error)}")
            await asyncio.sleep(1)
        return batches

    async def _examine(self, state: PartitionState, error: Exception) -> list:
        """Find the batch of `state`'s partition that cannot be decoded; pause the partition right before
        it and return the decodable records that precede it. Nothing when the broker's raw batches all
        decode (the failure was elsewhere): the partition stays as it is and is fetched again."""
        found = await find_undecodable_batch(self.consumer, state.tp, state.cursor, _MAX_PARTITION_FETCH_BYTES)
        state.seek(self.consumer)
        if found is None:
            log.warning("partition %d: fetch failed (%s: %s) but every batch from offset %d decodes; retrying",
                        state.partition, type(error).__name__, _first_line(error), state.cursor)
            return []
        records: list = []
        deadline = time.monotonic() + 30
        try:
            while len(records) < found.records_before and time.monotonic() < deadline:
                drained = await self.consumer.getmany(state.tp, timeout_ms=_ISOLATION_WAIT_MS,
                                                      max_records=found.records_before - len(records))
                records += drained.get(state.tp, [])
        except Exception as exc:  # noqa: BLE001 - the next fetch error examines the partition again
            log.warning("partition %d: draining up to offset %d failed: %s", state.partition, found.first_offset, exc)
        if len(records) == found.records_before:  # exactly up to the bad batch: stop there
            self.consumer.pause(state.tp)
            state.poison = found
            self.health.poisoned(state.partition, found, self.topic)
        return records

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

    def _due(self) -> bool:
        if self._paused:  # backpressure: only a flush frees the rows that paused consumption
            return True
        settings = self.settings
        interval = settings.catch_up_flush_interval_seconds if self._catching_up() else settings.flush_interval_seconds
        if time.monotonic() - self._last_flush >= interval:
            return True
        return any(s.rollup is not None and s.rollup.events >= settings.flush_max_events
                   for s in self.partitions.values())

    def _catching_up(self) -> bool:
        """Whether a partition is far behind its log end (per the last fetch): then freshness is already
        lost, and larger flushes (fewer inserts, fewer ClickHouse parts) get the backlog done sooner."""
        highwater = self.consumer.highwater
        return any((highwater(state.tp) or 0) - state.cursor > self.settings.catch_up_lag_events
                   for state in self.partitions.values() if state.rollup is not None and state.poison is None)

    def _unflushed_rows(self) -> int:
        return sum(s.rollup.rows for s in self.partitions.values() if s.rollup is not None) + \
            sum(r.rows for r in self._ready)

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
            self.consumer.resume(*self._consumable())
            self.health.recover("backpressure")

    def _consumable(self) -> list[TopicPartition]:
        """Assigned partitions that nothing but backpressure may pause (a poisoned one stays paused)."""
        return [tp for tp in self.consumer.assignment()
                if (state := self.partitions.get(tp.partition)) is None or state.poison is None]

    @mode.Service.task
    async def _apply_skips(self) -> None:
        """A poisoned partition resumes when an operator asked to skip through its bad batch
        (`kern-telemetry skip`): the skipped range is flushed like any range (intent, quality rows by
        offsets, a dead letter with the reason), so it is never consumed again after a crash or a
        rebalance, and the ledger stays whole."""
        await self._wait_started()
        while not self.should_stop and not self._closing:
            await asyncio.sleep(_SKIP_POLL_S)
            for state in [s for s in self.partitions.values() if s.poison is not None]:
                try:
                    request = await self._clickhouse(self.sink.skip_request, self.topic, state.partition, None,
                                                     state.cursor)
                except Exception as exc:  # noqa: BLE001 - ClickHouse unreachable: its health says so
                    log.debug("skip requests not readable: %s", exc)
                    break
                if request is None or self.partitions.get(state.partition) is not state or state.poison is None:
                    continue
                self._skip(state, request)

    def _skip(self, state: PartitionState, request: SkipRequest) -> None:
        if (pending := state.close()) is not None:
            self._ready.append(pending)
        self._ready.append(PartitionRollup.skip(self.topic, state.partition, state.cursor, request.through_offset + 1,
                                                self._window(request.requested_at_s), request.reason))
        log.warning("partition %d: skipping offsets %d-%d as an operator asked (%s); consumption resumes",
                    state.partition, state.cursor, request.through_offset, request.reason)
        state.skip_through(request.through_offset)
        self.health.unpoisoned(state.partition)
        state.seek(self.consumer)
        if not self._paused:
            self.consumer.resume(state.tp)
        self._flush_now.set()

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
        """Move the rollups being folded to the ready list (a replay closes only at its end)."""
        for state in self.partitions.values():
            if (rollup := state.close()) is not None:
                self._ready.append(rollup)
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
                self.partitions.pop(partition, None)
                self.health.unpoisoned(partition)
            self.health.assigned -= revoked
        log.info("partitions revoked: %s", sorted(revoked))

    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Start each partition at its last recorded flush (replayed, see `pipeline/sink.py`), or at the
        beginning of the log when it has none. Positions are looked up first and then set without an
        await in between, so `getmany` cannot hand out records from a position about to change."""
        last_flushes = {tp: await self._retry("clickhouse", self._clickhouse, self.sink.last_flush, self.topic,
                                              tp.partition) for tp in partitions}
        skips = {tp: await self._retry("clickhouse", self._clickhouse, self.sink.skip_request, self.topic,
                                       tp.partition, last.end_offset - 1)
                 for tp, last in last_flushes.items() if last is not None and last.skipped}
        fresh = [tp for tp, last in last_flushes.items() if last is None]
        beginnings = await self._retry("kafka", self.consumer.beginning_offsets, fresh) if fresh else {}
        for tp, last in last_flushes.items():
            state = self._state_at(tp, last, beginnings.get(tp), skips.get(tp))
            self.partitions[tp.partition] = state
            state.seek(self.consumer)
            self.health.assigned.add(tp.partition)
        self._assignments += 1
        if partitions:
            log.info("partitions assigned: %s", sorted(tp.partition for tp in partitions))
        if self._paused:
            self.consumer.pause(*partitions)

    def _state_at(self, tp: TopicPartition, last: FlushRange | None, beginning: int | None,
                  skip: SkipRequest | None) -> PartitionState:
        """A newly assigned partition: at the beginning of the log, replaying its last recorded range, or
        after the range an operator skipped (whose own rows are written again; its records never read)."""
        if last is None:
            return PartitionState(tp, beginning)
        state = PartitionState(tp, last.end_offset)
        if not last.skipped:
            state.replay(last.start_offset, last.end_offset)
        elif skip is None:
            log.error("partition %d: the skipped range %d-%d has no skip request any more; its quality rows are not "
                      "rewritten", tp.partition, last.start_offset, last.end_offset - 1)
        else:
            self._ready.append(PartitionRollup.skip(self.topic, tp.partition, last.start_offset, last.end_offset,
                                                    self._window(skip.requested_at_s), skip.reason, replay=True))
            self._flush_now.set()
        return state

    def _window(self, epoch_s: int) -> int:
        return epoch_s - epoch_s % self.settings.window_seconds

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
