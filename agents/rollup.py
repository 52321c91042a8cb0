"""The rollup agent: drains the events topic in batches, folds each source partition into a rollup, and
flushes rollups to ClickHouse exactly once (`agents/checkpoint.py`).

Why not a stock `@app.agent`: Faust's stream path builds an Event and an ack per record and measured
~12,000 events/s here; a per-event windowed Table ~3,000. This agent is a Faust (mode) service that runs
inside the Faust worker (lifecycle, signals, web endpoints, logging) but reads `getmany` batches straight
from aiokafka, the client Faust itself uses, and keeps no per-event changelog: ClickHouse sums the partial
aggregates that each flush writes.

It wires the parts and runs seven loops: consume (fetch, fold, backpressure), flush, probe the broker (log
ends, freshness, stalls), load the admission of k-anonymous values (`agents/admission.py`), look for
an operator's skip while a partition is poisoned, build the hourly and daily grains, and settle them against
their sources (`pipeline/grains.py`). When the broker says a position is out of its log's
range, the partition's log is judged again (`agents/logs.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Sequence
from typing import Any

import mode
from aiokafka import TopicPartition

from agents.admission import Admitter
from agents.building import BUILDER_PARTITION, GrainBuilder
from agents.checkpoint import Checkpoint, gone_ranges
from agents.clickhouse import ClickHouseThread, open_lanes, open_sink
from agents.fetching import Fetcher, RebalanceListener
from agents.flushing import Flusher
from agents.logs import SAME, Logs, Recorded
from agents.partitions import Partitions, PartitionState
from agents.quarantine import Quarantine
from agents.retry import retry
from pipeline import grains, ledger
from pipeline.admission import Keys
from pipeline.config import Settings
from pipeline.health import Health
from pipeline.kafka import FETCH_OPTIONS, dead_letter_producer, fetched_records, worker_consumer
from pipeline.projector import EventProjector
from pipeline.rollup import OffsetGap
from pipeline.sink import ClickHouseSink
from tables.ddl import SchemaOptions
from tables.schema import COARSE_GRAINS

log = logging.getLogger(__name__)

KAFKA_PROBE_S = 5.0
_SKIP_POLL_S = 2.0  # how often a worker with a poisoned partition looks for an operator's skip


class RollupAgent(mode.Service):
    # made in on_start, once ClickHouse and the broker answer; the loops start after it
    sink: ClickHouseSink
    admitter: Admitter
    projector: EventProjector  # of the latest admission epoch
    producer: Any  # aiokafka's (it has no type hints)
    consumer: Any
    logs: Logs
    checkpoint: Checkpoint
    flusher: Flusher
    quarantine: Quarantine
    fetcher: Fetcher

    def __init__(self, settings: Settings, health: Health | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if settings.hash_secret is None:
            raise ValueError(
                "KERN_HASH_SECRET is not set: the worker counts sessions and candidate values only "
                "by keyed hashes, and every worker must use the same secret (see the README)"
            )
        self.settings = settings
        self.health = health or Health.from_settings(settings)
        self.keys = Keys(settings.hash_secret.get_secret_value().encode())
        self.clickhouse = ClickHouseThread()
        self.partitions = Partitions()
        self.builder = GrainBuilder(
            settings,
            SchemaOptions.from_settings(settings),
            self.health,
            lambda: self.partitions.get(BUILDER_PARTITION) is not None,
        )
        self._running = False  # on_start made every part (mode starts the loops only then)
        self._closers = contextlib.AsyncExitStack()  # what on_start opened, closed by on_stop in reverse
        self._closing = False
        self._opening: asyncio.Future | None = None  # on_start's

    # --- lifecycle ---------------------------------------------------------------------------------

    async def on_start(self) -> None:
        """Open every part (`_open`). A stop while starting (a SIGTERM during a deploy or a rollout) cancels
        the opening at the step it is in, and `on_stop` closes what it had opened: the worker exits as from
        any stop, not with an error about a thread pool already shut down."""
        self._opening = asyncio.ensure_future(self._open())
        try:
            await self._opening
        except (asyncio.CancelledError, Exception) as exc:  # cancelled by on_stop, or a retry that gave up
            if not self._stopping():
                raise
            log.info("stopped while starting (%s)", type(exc).__name__)

    async def _open(self) -> None:
        settings = self.settings
        self.sink = sink = await self._retry("clickhouse", self.clickhouse.call, open_sink, settings)
        lanes = await self._retry("clickhouse", self.clickhouse.call, open_lanes, settings, sink)
        self._closers.callback(lanes.shutdown)
        self.admitter = Admitter(settings, sink, self.clickhouse, self.keys)
        await self._retry("clickhouse", self.admitter.refresh)
        self.projector = self._projector()
        self.producer = dead_letter_producer(settings)
        self._closers.push_async_callback(self.producer.stop)
        await self._retry("kafka", self.producer.start)
        self.consumer = consumer = worker_consumer(settings)
        self._closers.push_async_callback(consumer.stop)
        await self._retry("kafka", consumer.start)
        await self._check_dedup_window(sink)
        self.logs = Logs(settings, consumer, self.health)
        self._closers.callback(self.logs.close)
        checkpoint = Checkpoint(
            settings, sink, self.clickhouse, self.producer, consumer, self.health, self.admitter, self.logs, lanes
        )
        self.flusher = Flusher(settings, self.partitions, checkpoint, consumer, self.health, self.confirm_logs)
        self.quarantine = Quarantine(
            consumer, self.partitions, checkpoint, self.flusher, self.health, FETCH_OPTIONS["max_partition_fetch_bytes"]
        )
        self.fetcher = Fetcher(consumer, self.partitions, self.quarantine, self.health, self.on_out_of_range)
        self.checkpoint = checkpoint
        consumer.subscribe([settings.topic], listener=RebalanceListener(self.on_revoked, self.on_assigned))
        keep_the_cyclic_gc_off_the_hot_path()
        self._running = True
        log.info("rollup agent started: topic %s, ClickHouse %s", settings.topic, settings.safe_dsn)

    async def _check_dedup_window(self, sink) -> None:
        """Degrade `/health` when ClickHouse's deduplication windows do not cover the partitions this topic
        has (`agents/checkpoint.py`)."""
        try:
            await asyncio.wait_for(self.consumer.topics(), KAFKA_PROBE_S)
        except Exception as exc:  # noqa: BLE001 - the configured count then stands for the topic's
            log.debug("topic metadata not read: %s", exc)
        partitions = (
            len(self.consumer.partitions_for_topic(self.settings.topic) or ()) or self.settings.topic_partitions
        )
        if problem := await self.clickhouse.call(
            sink.dedup_window_problem,
            partitions,
            self.settings.flush_interval_seconds,
            self.settings.dedup_horizon_seconds,
        ):
            self.health.degrade("dedup window", problem)

    async def on_stop(self) -> None:
        """Graceful stop: no more fetches, flush what is pending, build the coarse grains, close."""
        self._closing = True
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
            await asyncio.wait([self._opening])  # what it opened is in the closers
        if self._running:
            try:
                await asyncio.wait_for(self.flusher.flush_all(), timeout=self.settings.flush_interval_seconds + 20)
            except TimeoutError:
                log.warning("stopped before the last flush landed; the next worker replays it")
            with contextlib.suppress(TimeoutError):  # the grains as complete as the minute grain it leaves
                await asyncio.wait_for(self.builder.build(), timeout=20)
        await self._closers.aclose()
        self.clickhouse.shutdown()
        self.builder.shutdown()

    def _stopping(self) -> bool:
        return self.should_stop or self._closing

    # --- loops -------------------------------------------------------------------------------------

    @mode.Service.task
    async def _consume(self) -> None:
        while not self._stopping():
            await self._fold_all(await self.fetcher.fetch())
            collect_between_batches()
            self.flusher.apply_backpressure()
            if self.flusher.due():
                self.flusher.flush_soon()

    async def _fold_all(self, batches: dict) -> None:
        """Fold each partition's records with a turn of the event loop after each: a fetch holds up to
        `max_partition_fetch_bytes` per partition, all read in place, and the heartbeat, the web endpoints
        and the flush wait for no more than one partition's. An assignment completed in a turn makes the
        rest stale (every partition was sought again)."""
        generation = self.partitions.generation
        for tp, messages in batches.items():
            state = self.partitions.get(tp.partition)
            if generation != self.partitions.generation:
                return
            if state is not None and not self._closing:
                self._fold(state, fetched_records(messages))
                await asyncio.sleep(0)

    def _fold(self, state: PartitionState, messages: Sequence) -> None:
        self.health.metrics.events_consumed.inc(len(messages))
        ready = len(self.flusher.ready)
        try:
            state.fold(messages, self.projector, self.flusher.ready)
        except OffsetGap as gap:  # records were skipped on the way here: fetch again from the cursor
            self.health.metrics.offset_gaps_refused.inc()
            log.warning("refused a batch: %s; fetching again from offset %d", gap, state.cursor)
            state.seek(self.consumer)
        if len(self.flusher.ready) > ready:  # a replayed range completed
            self.flusher.flush_soon()

    @mode.Service.task
    async def _flush(self) -> None:
        await self.flusher.run(self._stopping)

    @mode.Service.task
    async def _probe_kafka(self) -> None:
        """aiokafka retries a lost broker silently (getmany just returns nothing), so ask the broker for
        the log end offsets every few seconds: the health report says whether it answers, and the lag of
        each partition comes from them (correct while a partition is paused, unlike the fetch highwater)."""
        while not self._stopping():
            assigned = [state.tp for state in self.partitions]
            try:
                ends = (
                    await asyncio.wait_for(self.consumer.end_offsets(assigned), timeout=KAFKA_PROBE_S)
                    if assigned
                    else await asyncio.wait_for(self.consumer.topics(), timeout=KAFKA_PROBE_S)
                )
            except Exception as exc:  # noqa: BLE001 - any failure to reach the broker
                self.health.degrade("kafka", f"broker unreachable: {type(exc).__name__}")
            else:
                self.health.recover("kafka")
                for tp, end in ends.items() if assigned else ():
                    # The fetch highwater too: Tansu answers ListOffsets with its last batch's base offset + 1.
                    self.health.log_end(tp.partition, max(end, self.consumer.highwater(tp) or 0))
            self._watch_progress()
            await asyncio.sleep(KAFKA_PROBE_S)

    def _watch_progress(self) -> None:
        """Freshness and stalls per partition (`Health.progress`), and incidents that stop degrading."""
        pending: dict[int, int] = {}
        for rollup in self.flusher.ready:
            if rollup.first_ms is not None:
                pending[rollup.partition] = min(pending.get(rollup.partition, rollup.first_ms), rollup.first_ms)
        for state in self.partitions:
            oldest = min((ms for ms in (pending.get(state.partition), state.oldest_ms) if ms is not None), default=None)
            self.health.progress(
                state.partition, state.cursor, oldest, paused=self.partitions.paused or state.poison is not None
            )
        self.health.tick()

    @mode.Service.task
    async def _refresh_admission(self) -> None:
        while not self._stopping():
            await asyncio.sleep(self.settings.admission_refresh_seconds)
            try:
                await self._admit()
            except Exception as exc:  # noqa: BLE001 - ClickHouse unreachable: the flusher's health says so
                log.debug("admission not refreshed: %s", exc)

    async def _admit(self) -> None:
        """Load the admission epochs (writing this worker's proposals first). On a newer epoch, the rollups
        being folded are closed first, so that no rollup mixes two epochs."""
        if await self.admitter.refresh():
            self.partitions.close_all(self.flusher.ready)
            self.flusher.flush_soon()
            self.projector = self._projector()

    def _projector(self) -> EventProjector:
        epoch = self.admitter.admissions.latest
        self.health.metrics.admission_epoch.set(epoch)
        return EventProjector.from_settings(self.settings, self.admitter.keys, self.admitter.admissions.at(epoch))

    @mode.Service.task
    async def _audit(self) -> None:
        """What the frequent build does not reach, and what a ClickHouse that died in the middle of an insert
        may have kept out of a table for good: the hourly and daily grains settled against their sources
        over closed periods, by the builder alone (`pipeline/grains.py`), and the ledger against its
        intents' running totals (`pipeline/ledger.py`). A check that fails degrades /health until it runs
        again: what it looks for would go unseen."""
        tables = [grain.target.name for grain in COARSE_GRAINS]
        horizon = grains.worker_horizon_s(self.settings.topic_retention_hours, self.settings.allowed_lateness_seconds)
        client, opts = self.sink.client, self.sink.opts
        checks = {
            "grains": (
                lambda: self.builder.settle(horizon),
                lambda found: self.health.grains_checked(
                    tables, ((d.grain.target.name, d.period_label) for d in found)
                ),
            ),
            "ledger": (lambda: self.clickhouse.call(ledger.check, client, opts), self.health.ledger_checked),
        }
        for _, report in checks.values():
            report(())  # every series from the start, at 0
        while not self._stopping():
            await asyncio.sleep(self.settings.audit_seconds)
            for name, (check, report) in checks.items():
                try:
                    found = await check()
                except Exception as exc:  # noqa: BLE001 - reported, and the next run tries again
                    self.health.check_failed(name, exc)
                else:
                    report(found)

    @mode.Service.task
    async def _build_grains(self) -> None:
        """Top the hourly and daily grains up to their sources every few seconds, on the worker that owns
        partition 0 (`agents/building.py`)."""
        while not self._stopping():
            await asyncio.sleep(self.settings.grain_build_seconds)
            await self.builder.build()

    @mode.Service.task
    async def _apply_skips(self) -> None:
        while not self._stopping():
            await asyncio.sleep(_SKIP_POLL_S)
            try:
                await self.quarantine.apply_skips()
            except Exception as exc:  # noqa: BLE001 - ClickHouse unreachable: the flusher's health says so
                log.debug("skip requests not readable: %s", exc)

    # --- partition assignment ----------------------------------------------------------------------

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        async with self.flusher.lock:  # waits for an attempt in progress, so no flush lands after we return
            self.flusher.drop(revoked)
            self.partitions.revoke(revoked)
            self.health.revoked(revoked)
        if BUILDER_PARTITION in revoked:
            await self.builder.drain()  # its next owner builds: never beside a pass of this worker's
        log.info("partitions revoked: %s", sorted(revoked))

    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        await self._resume(dict.fromkeys(partitions, 0))
        self.health.assigned |= {tp.partition for tp in partitions}
        if partitions:
            log.info("partitions assigned: %s", sorted(tp.partition for tp in partitions))

    async def _resume(self, known_ends: dict[TopicPartition, int]) -> None:
        """Resume each partition where its last recorded flush says (`agents/checkpoint.py`, step 5);
        `known_ends`: offsets this worker knows its log had, beyond what the ledger says."""
        resumptions = {
            tp: await self._retry("clickhouse", self.checkpoint.resume, tp, end) for tp, end in known_ends.items()
        }
        self.partitions.assign(self.consumer, resumptions)
        for tp, resumption in resumptions.items():
            self.health.resumed(tp.partition, resumption.landed_end, resumption.log.generation)
            if resumption.rewrites:
                self.flusher.ready += resumption.rewrites
                self.flusher.flush_soon()

    async def confirm_logs(self, writing: bool) -> None:
        """Before a flush: whether the topic still has the id its partitions' logs were judged with. A topic
        recreated under this worker while its position is inside the new log (or at its end) fails no fetch;
        it is caught here, before any of the new log's records is flushed as the old log's: the unflushed
        rollups of the partitions are dropped and the partitions resumed from the ledger as on assignment (a
        new log; the dropped offsets recorded as lost of the old one). Asked afresh before a flush that
        writes; an idle worker asks at most every `KAFKA_PROBE_S`."""
        if not any(state.log.topic_id for state in self.partitions):
            return
        try:
            current = await self.logs.topic_id(self.settings.topic, max_age_s=0 if writing else KAFKA_PROBE_S)
        except Exception as exc:  # noqa: BLE001 - the broker does not answer: the probe says so; flush anyway
            log.debug("topic id not read before a flush: %s", exc)
            return
        changed = {
            state.tp: state.cursor
            for state in self.partitions
            if current and state.log.topic_id and state.log.topic_id != current
        }
        if changed:
            partitions = {tp.partition for tp in changed}
            self.flusher.drop(partitions)
            self.partitions.revoke(partitions)
            await self._resume(changed)

    async def on_out_of_range(self, tp: TopicPartition) -> None:
        """The broker says the partition's position is out of its log's range: judge the log again, from what
        this worker has counted (`agents/logs.py`), and count on where the verdict says."""
        state = self.partitions.get(tp.partition)
        if state is None:
            return
        recorded = Recorded(state.log, state.cursor, state.fingerprint, self.health.log_ends.get(tp.partition, 0))
        verdict = await self.logs.judge(tp, recorded)
        if verdict.change != SAME and self.partitions.get(tp.partition) is state:
            gone = gone_ranges(tp, verdict, recorded, self.settings.window_seconds)
            if state.replay is not None:
                self.health.log_changed(
                    tp.partition,
                    verdict.change,
                    f"the replay of offsets "
                    f"{state.replay.rollup.start_offset}-{state.replay.end - 1} cannot complete: "
                    "the tables it had not landed in miss them (the ledger counts them)",
                )
            if (folded := state.restart(verdict.log, verdict.cursor, None)) is not None:
                self.flusher.ready.append(folded)
            self.flusher.ready += gone
            self.flusher.flush_soon()
        state.seek(self.consumer)

    async def _retry(self, component: str, function, *args: Any) -> Any:
        return await retry(self.health, component, function, *args, stopping=lambda: self.should_stop)


_GC_THRESHOLDS = (100_000, 50, 1000)  # as `gc.set_threshold` takes them


def keep_the_cyclic_gc_off_the_hot_path() -> None:
    """The hot path allocates many short-lived, never-cyclic objects. Keep the cyclic GC from re-scanning
    start-up objects (Faust, aiokafka, ClickHouse client), and from running in the middle of a fetched
    batch, where it scans every record still alive in it (5% of the event loop, profiled 7 December): the
    consume loop collects between batches instead (`collect_between_batches`)."""
    gc.collect()
    gc.freeze()
    gc.disable()


def collect_between_batches() -> None:
    """What the automatic collector would do by now, at a point where no fetched record is alive: the
    oldest generation whose count exceeds its threshold (the youngest counts tracked objects made and not
    freed, each older one the collections of the one below it since its own)."""
    counts = gc.get_count()
    if counts[0] > _GC_THRESHOLDS[0]:
        gc.collect(max(g for g in range(3) if counts[g] > _GC_THRESHOLDS[g]))
