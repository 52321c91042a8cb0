"""Exactly-once counts: how a partition's rollups reach ClickHouse, and where a worker resumes a partition.

A flush covers one source partition's contiguous offset range [start, end) of one log (`LogIdentity`: a
partition meets a new log when its topic is recreated or its cluster replaced, `agents/logs.py`). Its
rollup (`pipeline/rollup.py`) is a pure function of the records in the range, so rebuilding it from the
same offsets gives the same rows. The protocol, per source partition (the worker flushes a batch of
rollups of distinct partitions at once, `batch_of`: each step then serves the whole batch, with one insert
for several flushes' landings and for their sketches, and nothing ordering one partition's inserts against
another's, so they run at once on several ClickHouse clients, `write`):

1. **Dead letters** of the range go to the DLQ topic, keyed by their source position, on the DLQ partition
   of their source partition's number (at-least-once: a crash before step 2 sends them again, to the same
   partition; a consumer of the DLQ drops duplicates by key).
2. **Intent**: the range, its log (generation, topic id, the fingerprint of its last record), what it
   covered (the ledger: counted, dead-lettered, late, skipped, expired, lost) and the running total of
   its log's ledger through it (`pipeline/ledger.py` checks the ledger against it), the admission epoch
   its rows were projected with, and the summing tables it writes rows to go to `ingest_flushes`, before
   any of its data.
3. **Rows, table by table.** Each summing table (runs, launches, client drops, quality: a row written
   twice counts twice) gets the range's rows under the range's token, then `flush_landings` records
   that the range landed there (the batch's landings in one insert after its summing inserts, and at
   once when an insert fails). The sketches (sessions, candidate values: a hash written twice changes
   nothing) go with the rows, in any order (after the landings for a batch of one large rollup). A
   retry writes only what has not landed: in this process from the rollup's memory (`landed`), after a
   crash from the landings (step 5).
4. **Offsets** are committed to Kafka, for lag monitoring only: `ingest_flushes` is the truth.
5. **Resume**, when a worker gets a partition (start, restart after a crash, rebalance): it reads the
   partition's last recorded range and the tables it landed in, and checks that the broker's log is the
   one the range describes (`agents/logs.py`); a new, truncated or expired log turns into a new log
   generation and ranges recorded as expired or lost. If the range's rows have not landed in every
   summing table, the range is re-consumed into an identical rollup before anything newer (`Replay`,
   projected with the recorded admission epoch, closed exactly at the range's end) and written where it
   is missing; a range without records (skipped, expired, lost) is rebuilt from its intent. A partition
   without a flush starts at the beginning of its log. Everything after the last range's end was never
   part of a recorded flush.

**Why a replay is exact whatever ClickHouse's deduplication window.** Every insert also carries a
deduplication token derived from the log generation and the range (`token`), so ClickHouse drops a block
it remembers. But it remembers only its last `non_replicated_deduplication_window` blocks per table (on
a cluster `replicated_deduplication_window`, and for at most `replicated_deduplication_window_seconds`):
a flush that keeps failing in one table for an hour while other partitions insert, or a crashed
partition taken over late on a cluster with many partitions, would be rewritten into tables where it had
landed and counted twice. The landings make the rewrite skip those tables, so the tokens only cover the
one gap left: a crash between a table's insert and its landing, retried within seconds by the next
owner. The worker checks at start that the tables' windows cover that (`dedup_window_problem`) and says
in `/health` when they do not.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from agents.admission import Admitter
from agents.clickhouse import ClickHouseThread, Lanes
from agents.logs import SAME, Logs, Recorded, Verdict
from pipeline.admission import Keys
from pipeline.config import Settings
from pipeline.health import Health
from pipeline.kafka import send_grouped
from pipeline.projector import EventProjector
from pipeline.rejections import GONE, QUALITY_ONLY, Reason
from pipeline.rollup import Fingerprint, LogIdentity, PartitionRollup
from pipeline.sink import SKETCHES, ClickHouseSink, FlushRange
from tables.ddl import Table
from tables.schema import INGEST_FLUSHES

log = logging.getLogger(__name__)

_INTENT = INGEST_FLUSHES.name


def token(rollup: PartitionRollup) -> str:
    """The deterministic identity of a flush: the same range of the same log always gets the same token
    (the first log's tokens are those of the releases before log generations)."""
    generation = f"g{rollup.log.generation}/" if rollup.log.generation else ""
    return f"{rollup.topic}/{rollup.partition}/{generation}{rollup.start_offset}-{rollup.end_offset}"


#: (partition, log generation) -> the running ledger total of the last intent recorded in that log
LedgerTotals = dict[tuple[int, int], int]


#: The events a batch of flushes holds at most (but one rollup, however large). Its rollups stay in memory
#: until the whole batch has landed, ~200 bytes an event: batching the large rollups of a catching-up worker
#: raised its peak RSS from ~297 to ~350 MB (`make bench-ab`), while a caught-up worker's small ones share
#: their inserts at no such cost.
BATCH_MAX_EVENTS = 50_000


def write(
    sink: ClickHouseSink,
    batch: list[PartitionRollup],
    keys: Keys,
    log_ends_seen: list[int],
    ledger_totals: LedgerTotals,
    lanes: Lanes | None = None,
) -> None:
    """Steps 2 and 3 for a batch of rollups of distinct partitions (`batch_of`): what of each has not
    landed yet (`rollup.landed`). Nothing orders one partition's inserts against another's, so each
    rollup's intent and then its rows, and each sketch table's insert, go on the `lanes` at once (default:
    `sink` alone, in that order); the landings of the batch go in one insert after them all (also when an
    insert fails, for the tables that got their rows before it). A batch of one large rollup is written on
    the calling thread alone, its sketches after its landings.
    Each intent goes in an insert of its own, under its rollup's token: the ledger sums the intents
    (`ingest_ledger`), so an intent that landed though its insert failed must be dropped as a duplicate
    when it is retried in a batch made up differently (after a revocation, or with rollups that became
    ready meanwhile). Each summing table gets each rollup's rows under that rollup's token; each sketch
    table one insert for the batch. A crash between a table's insert and the landings leaves a gap of
    seconds that the tokens cover, as before; an insert that keeps failing has its predecessors' landings
    recorded. Landings and sketches written twice change nothing. Each intent carries its log's running
    ledger total, raised in `ledger_totals` once the intent is in (a retry computes the same total)."""
    landings: list[tuple[PartitionRollup, Table]] = []

    def flush(rollup: PartitionRollup, log_end_seen: int, lane: ClickHouseSink) -> None:
        tables = lane.summing_rows(rollup)
        if _INTENT not in rollup.landed:  # 2. an insert of its own
            ledger = (rollup.partition, rollup.log.generation)  # a batch's are distinct: no race
            total = ledger_totals.get(ledger, 0) + rollup.accounted
            lane.record_intent(
                rollup, f"{token(rollup)}/{_INTENT}", [table.name for table, _, _ in tables], log_end_seen, total
            )
            ledger_totals[ledger] = total
            rollup.landed.add(_INTENT)
        for table, columns, rows in tables:  # 3.
            if table.name not in rollup.landed:
                lane.insert_rows(table, columns, rows, f"{token(rollup)}/{table.name}")
                landings.append((rollup, table))

    def sketch(table: Table, columns: tuple[str, ...], rows_of: Callable, lane: ClickHouseSink) -> None:
        if pending := [rollup for rollup in batch if table.name not in rollup.landed]:
            lane.insert_rows(
                table, columns, rows_of(pending, keys), _joint(f"{token(r)}/{table.name}" for r in pending)
            )
            for rollup in pending:
                rollup.landed.add(table.name)

    flushes = [partial(flush, rollup, end) for rollup, end in zip(batch, log_ends_seen, strict=True)]
    sketches = [partial(sketch, *sketch_table) for sketch_table in SKETCHES]
    # A batch over BATCH_MAX_EVENTS is one large rollup (catching up), where the inserts' cost is their rows,
    # not their parts: it is written on this thread, its sketches after its landings, as without lanes. On
    # the lanes, its rows' and sketches' transient memory would be allocated and kept by several threads at
    # once (README: Performance, lanes).
    small = sum(rollup.events for rollup in batch) <= BATCH_MAX_EVENTS
    on = lanes if lanes is not None and small else Lanes([sink])
    try:
        on.each(flushes + sketches if small else flushes)
    except Exception:
        with contextlib.suppress(Exception):  # ClickHouse may be away: the retry records them first
            _land(sink, landings)
        raise
    _land(sink, landings)
    if not small:
        on.each(sketches)


def _land(sink: ClickHouseSink, landings: list[tuple[PartitionRollup, Table]]) -> None:
    """Record the landings in one insert, in a fixed order (the lanes append them as they land): the same
    landings retried get the same token."""
    if landings:
        landings.sort(key=lambda landing: (landing[0].partition, landing[1].name))
        sink.record_landings(landings, _joint(f"{token(rollup)}/landed/{table.name}" for rollup, table in landings))
        for rollup, table in landings:
            rollup.landed.add(table.name)
        landings.clear()


def _joint(tokens: Iterable[str]) -> str:
    """The deduplication token of an insert of several flushes' rows: a digest of theirs (the same batch
    retried gets the same token), or the one flush's own token."""
    tokens = list(tokens)
    if len(tokens) == 1:
        return tokens[0]
    return "batch/" + hashlib.blake2b("\n".join(tokens).encode(), digest_size=16).hexdigest()


def batch_of(ready: list[PartitionRollup]) -> list[PartitionRollup]:
    """The rollups at the head of `ready` that flush together: one per partition at most (a partition
    resumes at its last recorded intent, so a later range's intent must never land before an earlier
    range's rows: `Checkpoint.resume` would replay only the later one), `BATCH_MAX_EVENTS` at most."""
    partitions: set[int] = set()
    events = 0
    for count, rollup in enumerate(ready):
        events += rollup.events
        if rollup.partition in partitions or (count and events > BATCH_MAX_EVENTS):
            return ready[:count]
        partitions.add(rollup.partition)
    return list(ready)


class Replay:
    """Step 5: the recorded range [start, end) re-consumed into an identical rollup, projected with the
    admission epoch the first attempt recorded, to be written where it has not landed. It closes exactly
    at `end`: flushing part of it under its token would make ClickHouse drop the rest as a duplicate."""

    __slots__ = ("end", "projector", "rollup")

    def __init__(self, tp: TopicPartition, last: FlushRange, projector: EventProjector):
        # its dead letters were sent by the first attempt
        self.rollup = PartitionRollup(
            tp.topic, tp.partition, last.start_offset, replay=True, epoch=projector.epoch, log=last.log
        )
        self.rollup.flushed_at = last.flushed_at
        self.rollup.landed.update((_INTENT, *last.landed))
        self.end = last.end_offset
        self.projector = projector

    def fold(self, messages: Sequence) -> tuple[PartitionRollup | None, Sequence]:
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
    log: LogIdentity = LogIdentity()  # the log counting goes on in
    fingerprint: Fingerprint | None = None  # of the last record counted in that log
    replay: Replay | None = None  # the last recorded range, re-consumed first
    rewrites: tuple[PartitionRollup, ...] = ()  # flushed before anything newer

    @property
    def landed_end(self) -> int:
        """Where what has landed in every table ends, in `log`."""
        if self.replay is not None:
            return self.replay.rollup.start_offset
        return min((rollup.start_offset for rollup in self.rewrites if rollup.log == self.log), default=self.cursor)


class Checkpoint:
    def __init__(
        self,
        settings: Settings,
        sink: ClickHouseSink,
        clickhouse: ClickHouseThread,
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
        health: Health,
        admitter: Admitter,
        logs: Logs,
        lanes: Lanes | None = None,
    ):
        self.settings = settings
        self.sink = sink
        self.lanes = lanes  # the clients a flush's inserts run on at once (`write`)
        self.admitter = admitter
        self.clickhouse = clickhouse
        self.producer = producer
        self.consumer = consumer
        self.health = health
        self.logs = logs
        self.metrics = health.metrics
        self.ledger_totals: LedgerTotals = {}  # of the partitions assigned, set by `resume`

    async def flush(self, batch: list[PartitionRollup]) -> None:
        """Steps 1 to 4 for closed rollups of distinct partitions (`batch_of`). Raises when ClickHouse fails:
        the caller retries the same batch, whose dead letters are not sent again and whose landed tables are
        not written again."""
        log.debug("flushing %s", ", ".join(f"{token(r)}: {r.events} events, {r.rows} rows" for r in batch))
        if letters := [(r.partition, r.dead_letters) for r in batch if r.dead_letters]:  # 1.
            await send_grouped(self.producer, self.settings.dlq_topic, letters)
            for rollup in batch:
                rollup.dead_letters.clear()
        now = time.time()
        for rollup in batch:
            if rollup.flushed_at is None:
                rollup.flushed_at = now
        log_ends_seen = [max(self.health.log_ends.get(r.partition, 0), r.end_offset) for r in batch]
        started = time.perf_counter()
        await self.clickhouse.call(  # 2. and 3.
            write, self.sink, batch, self.admitter.keys, log_ends_seen, self.ledger_totals, self.lanes
        )
        self.metrics.flush_duration.observe(time.perf_counter() - started)
        for rollup in batch:
            self._count(rollup)
            self.admitter.consider(rollup)
        try:  # 4.
            await self.consumer.commit(
                {TopicPartition(r.topic, r.partition): OffsetAndMetadata(r.end_offset, "") for r in batch}
            )
        except Exception as exc:  # noqa: BLE001 - informational only; ingest_flushes is the truth
            log.debug("offset commit for partitions %s skipped: %s", [r.partition for r in batch], exc)

    def _count(self, rollup: PartitionRollup) -> None:
        metrics = self.metrics
        metrics.flushes.inc()
        metrics.events_flushed.inc(rollup.events)
        if not rollup.replay:  # a replay's dead letters were counted when they were sent
            for (_, _, reason), events in rollup.quality.items():
                if reason in QUALITY_ONLY:
                    metrics.quality_notes.labels(reason).inc(events)
                elif reason not in GONE:
                    metrics.dead_letters.labels(reason).inc(events)
            for (_, _, reason), events in rollup.client_drops().items():
                metrics.client_dropped(reason, events)
            for reason in GONE:
                if offsets := getattr(rollup, reason.value):
                    metrics.offsets_gone.labels(reason.value).inc(offsets)
            for field, values in rollup.suppressed.items():
                metrics.values_suppressed.labels(field).inc(values)
        self.health.flushed(rollup.partition, rollup.end_offset, rollup.log.generation)

    async def resume(self, tp: TopicPartition, known_end: int = 0) -> Resumption:
        """Step 5 for one assigned partition (blocking calls on the ClickHouse thread); `known_end`: an offset
        this worker knows the log had, beyond what the ledger says."""
        last: FlushRange | None = await self.clickhouse.call(self.sink.last_flush, tp.topic, tp.partition)
        for ledger in [ledger for ledger in self.ledger_totals if ledger[0] == tp.partition]:
            del self.ledger_totals[ledger]
        if last is not None:
            total = last.ledger_total
            if total < 0:  # recorded before version 9: the running total starts from the ledger
                total = await self.clickhouse.call(self.sink.ledger_sum, tp.topic, tp.partition, last.log.generation)
            self.ledger_totals[tp.partition, last.log.generation] = total
        if last is None:
            facts = await self.logs.facts(tp, None)
            return Resumption(facts.start, LogIdentity(0, facts.topic_id))
        recorded = Recorded(last.log, last.end_offset, last.fingerprint, max(last.log_end_seen, known_end))
        verdict = await self.logs.judge(tp, recorded)
        rewrites, replay = [], None
        if last.tables and not last.pending:
            pass  # landed everywhere
        elif (gone := last.gone) is not None:
            rewrites.append(self._rebuilt(tp, last, gone))
        elif verdict.change == SAME:
            replay = Replay(tp, last, self.projector(last.admission_epoch))
        else:
            self._unreplayable(tp, last, verdict.change)
        rewrites += gone_ranges(tp, verdict, recorded, self.settings.window_seconds)
        fingerprint = last.fingerprint if verdict.change == SAME else None
        return Resumption(verdict.cursor, verdict.log, fingerprint, replay, tuple(rewrites))

    def _rebuilt(self, tp: TopicPartition, last: FlushRange, reason: Reason) -> PartitionRollup:
        """The flush of a recorded range without records, rebuilt from its intent for its missing tables."""
        rollup = PartitionRollup.gone(
            reason,
            tp.topic,
            tp.partition,
            last.start_offset,
            last.end_offset,
            last.flushed_at,
            self.settings.window_seconds,
            log=last.log,
            previous=last.fingerprint,
            replay=True,
        )
        rollup.landed.update((_INTENT, *last.landed))
        return rollup

    def _unreplayable(self, tp: TopicPartition, last: FlushRange, change: str) -> None:
        """The last range's rows had not landed everywhere and its records are no longer in the log."""
        self.health.log_changed(
            tp.partition,
            change,
            f"the rows of offsets {last.start_offset}-{last.end_offset - 1} (log generation "
            f"{last.log.generation}) had not landed in {', '.join(last.pending)} and their records are gone: "
            "those tables miss them (the ledger counts them)",
        )

    def projector(self, epoch: int) -> EventProjector:
        """A projector with the admission of `epoch`."""
        return EventProjector.from_settings(self.settings, self.admitter.keys, self.admitter.admissions.at(epoch))

    def skipped(self, state: Any, through_offset: int, reason: str) -> PartitionRollup:
        """The flush of the range an operator asked to skip, from where `state`'s folding stands."""
        return PartitionRollup.gone(
            Reason.SKIPPED,
            state.tp.topic,
            state.partition,
            state.cursor,
            through_offset + 1,
            time.time(),
            self.settings.window_seconds,
            reason,
            state.log,
            state.fingerprint,
        )


def gone_ranges(tp: TopicPartition, verdict: Verdict, recorded: Recorded, window_seconds: int) -> list[PartitionRollup]:
    """The flushes of the ranges a verdict records as lost (of the recorded log) and expired (of the log
    counting goes on in), in that order."""
    rollups, now = [], time.time()
    if verdict.lost is not None:
        rollups.append(
            PartitionRollup.gone(
                Reason.LOST,
                tp.topic,
                tp.partition,
                *verdict.lost,
                now,
                window_seconds,
                f"{verdict.change}: gone before it was consumed",
                recorded.log,
                recorded.fingerprint,
            )
        )
    if verdict.expired_from is not None:
        rollups.append(
            PartitionRollup.gone(
                Reason.EXPIRED,
                tp.topic,
                tp.partition,
                verdict.expired_from,
                verdict.cursor,
                now,
                window_seconds,
                "removed by retention before it was consumed",
                verdict.log,
                recorded.fingerprint if verdict.log == recorded.log else None,
            )
        )
    return rollups


def _offset(message: Any) -> int:
    return message.offset
