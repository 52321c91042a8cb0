"""The worker's ClickHouse reads and writes: flush intents, rows, landings, flush ranges and skip requests.

The sink knows tables and columns, not the protocol: each write carries the deduplication token it is
given (`agents/checkpoint.py` derives tokens from offset ranges and orders the writes). Not thread-safe:
the worker calls it from its one ClickHouse thread.

On a cluster, deduplication works per shard (every table has a deterministic sharding key, see
`tables/ddl.py`), inserts into the Distributed tables are synchronous so that tokens reach the shards, and
the intents and landings are the one thing a read must never see stale: a replica that lags would return
an older range (the worker would replay it under a different token and count events twice) or miss a
landing (a table written again). So they are inserted with a quorum of replicas (linearized,
`insert_quorum_parallel = 0`) and read with `select_sequential_consistency`, which only answers from a
replica that has every quorum insert.
"""

from __future__ import annotations

import math
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import msgspec
from clickhouse_connect.driver.client import Client
from kern_telemetry_client.contract import CLIENT_REPORT, OS, TEAM, WORKFLOW

from pipeline import _fold, dimensions, ledger
from pipeline.admission import DAY_S, Admitted, Keys
from pipeline.projector import SESSION_HASHES
from pipeline.rejections import GONE, Reason
from pipeline.rollup import Fingerprint, LogIdentity, PartitionRollup
from tables.ddl import SchemaOptions, Table
from tables.schema import (
    ADMITTED_VALUES,
    CLIENT_DROPS_MINUTE,
    FLUSH_LANDINGS,
    INGEST_FLUSHES,
    INGEST_LEDGER,
    LAUNCHES_MINUTE,
    LEDGER_OUTCOMES,
    QUALITY_MINUTE,
    RUNS_MINUTE,
    SESSION_SIGHTINGS,
    SKIP_REQUESTS,
    TEAM_RUNS_MINUTE,
    VALUE_CANDIDATES,
    VALUE_SIGHTINGS,
    WORKFLOW_RUNS_MINUTE,
)

#: The columns each write names (the others take their DEFAULT); rows are built in these orders below.
RUNS_COLUMNS = ("window_start", *dimensions.NAMES, "runs")
#: Per kind with a pattern (`dimensions.PATTERNS`): its table, and the columns of a row of it.
PATTERN_WRITES = tuple(
    (kind, table, ("window_start", "sdk_version", *(d.name for d in dimensions.PATTERNS[kind]), count))
    for kind, table, count in (
        (OS, LAUNCHES_MINUTE, "launches"),
        (TEAM, TEAM_RUNS_MINUTE, "runs"),
        (WORKFLOW, WORKFLOW_RUNS_MINUTE, "runs"),
    )
)
QUALITY_COLUMNS = ("window_start", "kind", "reason", "events")
FLUSH_COLUMNS = (
    "topic",
    "partition",
    "start_offset",
    "end_offset",
    "events",
    *LEDGER_OUTCOMES,
    "admission_epoch",
    "log_generation",
    "topic_id",
    "fingerprint_offset",
    "fingerprint",
    "log_end_seen",
    "tables",
    "flushed_at",
    "ledger_total",
)
LANDING_COLUMNS = ("topic", "partition", "table_name", "log_generation", "start_offset", "end_offset")
SKIP_COLUMNS = ("topic", "partition", "through_offset", "reason")
DROPS_COLUMNS = ("window_start", "sdk_version", "reason", "events")
SESSION_COLUMNS = ("day", *dimensions.SKETCH, "session_hashes", "installation_hashes")
SIGHTING_COLUMNS = ("day", "field", "value_hash", "installation_hashes")
ADMITTED_COLUMNS = ("epoch", "field", "value", "value_hash")
WRITES = {
    RUNS_MINUTE.name: RUNS_COLUMNS,
    **{table.name: columns for _, table, columns in PATTERN_WRITES},
    QUALITY_MINUTE.name: QUALITY_COLUMNS,
    INGEST_FLUSHES.name: FLUSH_COLUMNS,
    FLUSH_LANDINGS.name: LANDING_COLUMNS,
    SKIP_REQUESTS.name: SKIP_COLUMNS,
    CLIENT_DROPS_MINUTE.name: DROPS_COLUMNS,
    SESSION_SIGHTINGS.name: SESSION_COLUMNS,
    VALUE_SIGHTINGS.name: SIGHTING_COLUMNS,
    ADMITTED_VALUES.name: ADMITTED_COLUMNS,
}

_encode_rows = msgspec.json.Encoder().encode_lines
#: Every insert is deduplicated by its token, in its tables and their views. None is merged on insert
#: (`optimize_on_insert`, on by default, sorts and sums a block as a merge would): a rollup's rows are
#: one per key already and every reader sums or merges what a key has, so that only cost time, ~15% of a
#: flush's in chDB (README: Performance).
_INSERTS = {
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "optimize_on_insert": 0,
}
_CLUSTER_INSERTS = {"distributed_foreground_insert": 1}  # tokens reach the shards only synchronously
_CLUSTER_INTENTS = {"insert_quorum": "auto", "insert_quorum_parallel": 0}
_CLUSTER_INTENT_READS = {"select_sequential_consistency": 1}


class FlushRange(NamedTuple):
    """The last recorded flush of a partition, as its intent and landings say."""

    start_offset: int
    end_offset: int
    skipped: int = 0  # offsets an operator skipped: the range is not re-consumed
    expired: int = 0  # offsets retention removed before they were consumed
    lost: int = 0  # offsets gone from a truncated log before they were consumed
    admission_epoch: int = 0  # the admission its rows were projected with
    log: LogIdentity = LogIdentity()
    fingerprint: Fingerprint | None = None  # of the last record folded up to its end
    log_end_seen: int = 0  # the highest log end the worker had seen when it flushed
    tables: tuple[str, ...] = ()  # the summing tables it writes rows to (empty: recorded before version 6)
    flushed_at: float = 0.0
    landed: frozenset[str] = frozenset()  # the summing tables whose rows landed
    ledger_total: int = -1  # its log's running ledger total through its end (-1: recorded before version 9)

    @property
    def gone(self) -> Reason | None:
        """Which outcome a range without records to count records (None for a range of records)."""
        return next((reason for reason in GONE if getattr(self, reason.value)), None)

    @property
    def pending(self) -> tuple[str, ...]:
        """The summing tables its rows have still to land in."""
        return tuple(table for table in self.tables if table not in self.landed)


class SkipRequest(NamedTuple):
    through_offset: int
    reason: str


class ClickHouseSink:
    def __init__(self, client: Client, opts: SchemaOptions):
        self.client = client
        self.opts = opts
        cluster = bool(opts.cluster)
        self._inserts = {**_INSERTS, **(_CLUSTER_INSERTS if cluster else {})}
        self._intents = {**self._inserts, **(_CLUSTER_INTENTS if cluster else {})}
        self._intent_reads = _CLUSTER_INTENT_READS if cluster else {}

    def last_flush(self, topic: str, partition: int) -> FlushRange | None:
        """The partition's last recorded range (of its newest log) and the summing tables it landed in."""
        where = "WHERE topic = {topic:String} AND partition = {partition:UInt32}"
        parameters = {"topic": topic, "partition": partition}
        result = self.client.query(
            "SELECT start_offset, end_offset, skipped, expired, lost, admission_epoch, log_generation, topic_id, "
            "fingerprint_offset, fingerprint, log_end_seen, tables, toUnixTimestamp64Milli(flushed_at), ledger_total "
            f"FROM {INGEST_FLUSHES.target(self.opts)} {where} ORDER BY log_generation DESC, end_offset DESC LIMIT 1",
            parameters=parameters,
            settings=self._intent_reads,
        )
        if not result.result_rows:
            return None
        (
            start,
            end,
            skipped,
            expired,
            lost,
            epoch,
            generation,
            topic_id,
            fingerprint_offset,
            fingerprint,
            seen,
            tables,
            flushed_ms,
            ledger_total,
        ) = result.result_rows[0]
        landed = self.client.query(
            f"SELECT DISTINCT table_name FROM {FLUSH_LANDINGS.target(self.opts)} {where} "
            "AND log_generation = {generation:UInt32} AND start_offset = {start:UInt64} AND end_offset = {end:UInt64}",
            parameters={**parameters, "generation": generation, "start": start, "end": end},
            settings=self._intent_reads,
        ).result_rows
        return FlushRange(
            start,
            end,
            skipped,
            expired,
            lost,
            epoch,
            LogIdentity(generation, topic_id),
            Fingerprint(fingerprint_offset, fingerprint) if fingerprint_offset >= 0 else None,
            seen,
            tuple(tables),
            flushed_ms / 1000,
            frozenset(table for (table,) in landed),
            ledger_total,
        )

    def ledger_sum(self, topic: str, partition: int, generation: int) -> int:
        """What `ingest_ledger` accounts for in a log generation of a partition (`ledger.ACCOUNTED`): where
        the running total starts when the last intent was recorded before version 9."""
        return int(
            self.client.query(
                f"SELECT sum({ledger.ACCOUNTED}) FROM {INGEST_LEDGER.target(self.opts)} WHERE topic = {{topic:String}} "
                "AND partition = {partition:UInt32} AND log_generation = {generation:UInt32}",
                parameters={"topic": topic, "partition": partition, "generation": generation},
                settings=self._intent_reads,
            ).result_rows[0][0]
        )

    def record_intent(
        self, rollup: PartitionRollup, token: str, tables: Iterable[str], log_end_seen: int, ledger_total: int
    ) -> None:
        fingerprint = rollup.fingerprint or Fingerprint(-1, 0)
        row = (
            rollup.topic,
            rollup.partition,
            rollup.start_offset,
            rollup.end_offset,
            rollup.events,
            rollup.counted,
            rollup.dead_lettered,
            rollup.late,
            rollup.skipped,
            rollup.expired,
            rollup.lost,
            rollup.epoch,
            rollup.log.generation,
            rollup.log.topic_id,
            *fingerprint,
            log_end_seen,
            list(tables),
            rollup.flushed_at,
            ledger_total,
        )
        self._insert(INGEST_FLUSHES.target(self.opts), [row], FLUSH_COLUMNS, token, self._intents)

    def summing_rows(self, rollup: PartitionRollup) -> list[tuple[Table, tuple[str, ...], list]]:
        """The rows of a rollup for the summing tables (a row written twice counts twice) that get any:
        usage events to the runs table, launches, team and workflow runs with their patterns to their
        tables, client reports to the drops table, and the quality counts."""
        summing = [
            (RUNS_MINUTE, RUNS_COLUMNS, [(w, *dims, n) for (w, dims), n in rollup.run_counts().items()]),
            *(
                (table, columns, [(*key, n) for key, n in rollup.patterns(kind).items()])
                for kind, table, columns in PATTERN_WRITES
            ),
            (CLIENT_DROPS_MINUTE, DROPS_COLUMNS, [(*key, n) for key, n in rollup.client_drops().items()]),
            (QUALITY_MINUTE, QUALITY_COLUMNS, [(*key, n) for key, n in rollup.quality.items()]),
        ]
        return [table for table in summing if table[2]]

    def insert_rows(self, table: Table, columns: tuple[str, ...], rows: Iterable[tuple], token: str) -> None:
        self._insert(table.target(self.opts), rows, columns, token, self._inserts)

    def record_landings(self, landings: list[tuple[PartitionRollup, Table]], token: str) -> None:
        """That each (rollup, summing table) landed, in one insert."""
        rows = [
            (rollup.topic, rollup.partition, table.name, rollup.log.generation, rollup.start_offset, rollup.end_offset)
            for rollup, table in landings
        ]
        self._insert(FLUSH_LANDINGS.target(self.opts), rows, LANDING_COLUMNS, token, self._intents)

    def admitted(self) -> list[Admitted]:
        return [
            Admitted(*row)
            for row in self.client.query(
                f"SELECT epoch, field, value FROM {ADMITTED_VALUES.target(self.opts)}"
            ).result_rows
        ]

    def ready_candidates(self, k: int) -> set[tuple[str, int]]:
        """(field, value hash) of the candidates seen from k distinct installations on one day (today or
        yesterday: older ones expire)."""
        return {
            (field, value_hash)
            for field, value_hash in self.client.query(
                f"SELECT field, value_hash FROM {VALUE_CANDIDATES.target(self.opts)} WHERE day >= today() - 1 "
                "GROUP BY field, value_hash, day HAVING uniqCombined64Merge(installations) >= {k:UInt32}",
                parameters={"k": k},
            ).result_rows
        }

    def admit(self, epoch: int, values: list[tuple[str, str, int]]) -> None:
        """Write an admission epoch ((field, value, value hash) rows). Deduplicated by the epoch number:
        of two workers writing the same epoch, the first one's rows are the epoch."""
        self._insert(
            ADMITTED_VALUES.target(self.opts),
            [(epoch, *row) for row in values],
            ADMITTED_COLUMNS,
            f"admission/{epoch}",
            self._intents,
        )

    def request_skip(self, topic: str, partition: int, through_offset: int, reason: str) -> None:
        self.client.insert(
            SKIP_REQUESTS.target(self.opts), [(topic, partition, through_offset, reason)], column_names=SKIP_COLUMNS
        )

    def skip_request(self, topic: str, partition: int, at_or_after: int) -> SkipRequest | None:
        """The request to skip `partition` with the lowest end at or after `at_or_after` (its earliest reason)."""
        result = self.client.query(
            f"SELECT through_offset, argMin(reason, requested_at) FROM {SKIP_REQUESTS.target(self.opts)} "
            "WHERE topic = {topic:String} AND partition = {partition:UInt32} AND through_offset >= {at:UInt64} "
            "GROUP BY through_offset ORDER BY through_offset LIMIT 1",
            parameters={"topic": topic, "partition": partition, "at": at_or_after},
        )
        return SkipRequest(*result.result_rows[0]) if result.result_rows else None

    def dedup_window_problem(self, partitions: int, flush_interval_s: float, horizon_s: float) -> str | None:
        """Whether every table remembers the blocks of the last `horizon_s` seconds, when `partitions` each
        flush every `flush_interval_s` (one block per table and flush): what the deduplication tokens must
        cover (`agents/checkpoint.py`). The reason when a window is too small, else None."""
        defaults = {
            name: value
            for name, value in self.client.query(
                "SELECT name, value FROM system.merge_tree_settings WHERE name IN ({names:Array(String)})",
                parameters={"names": list(_WINDOWS)},
            ).result_rows
        }
        tables = self.client.query(
            "SELECT name, engine_full FROM system.tables WHERE database = {db:String} AND engine LIKE '%MergeTree'",
            parameters={"db": self.opts.database},
        ).result_rows
        blocks_needed = math.ceil(partitions * horizon_s / flush_interval_s)
        problems = []
        blocks_setting, seconds_setting = _WINDOWS[:2] if self.opts.cluster else (_WINDOWS[2], None)
        for name, engine_full in tables:
            blocks = _window(engine_full, blocks_setting, defaults)
            seconds = _window(engine_full, seconds_setting, defaults) if seconds_setting else None
            if blocks < blocks_needed or (seconds is not None and seconds < horizon_s):
                problems.append(f"{name}: {blocks} blocks" + (f", {seconds} s" if seconds is not None else ""))
        if not problems:
            return None
        return (
            f"deduplication window too small for {partitions} partitions flushing every {flush_interval_s} s "
            f"over {horizon_s:.0f} s ({blocks_needed} blocks): {'; '.join(problems[:5])}. A flush retried after "
            "a crash between a table's insert and its landing may count twice; raise the tables' window "
            "(README: Guarantees)"
        )

    def _insert(self, table: str, rows: Iterable[tuple], columns: tuple[str, ...], token: str, settings: dict) -> None:
        """Rows go as JSONCompactEachRow, encoded by msgspec in C and parsed by ClickHouse: the worker
        spends no Python time per column value (clickhouse-connect's Native encoder is pure Python).
        No rows, no insert."""
        body = _encode_rows(rows)
        if not body:
            return
        self.client.raw_insert(
            table, columns, body, settings={**settings, "insert_deduplication_token": token}, fmt="JSONCompactEachRow"
        )


_WINDOWS = (
    "replicated_deduplication_window",
    "replicated_deduplication_window_seconds",
    "non_replicated_deduplication_window",
)


def _window(engine_full: str, setting: str, defaults: dict[str, str]) -> int:
    """A table's deduplication setting: its own (`SETTINGS name = N` in its engine), else the server's."""
    _, found, rest = engine_full.partition(f" {setting} = ")
    digits = rest[: rest.find(",")] if "," in rest else rest
    return int(digits) if found and digits.strip().isdigit() else int(defaults.get(setting, 0))


def _session_rows(rollups: Iterable[PartitionRollup], keys: Keys) -> Iterator[tuple]:
    """Per rollup, day and sketch key (`dimensions.SKETCH`), the keyed hashes of the distinct sessions of
    the rollup's runs (in order of first sight) and of their installations (sorted: a replay writes the same
    rows), both hashed as folded. One row at a time, each sketch's hashes released once its row is
    encoded: a catching-up flush holds hundreds of thousands of them per rollup. The sessions' JSON is made
    in C without the GIL (`_fold.distinct_json`, which leaves out `NO_SESSION`, 0): in Python it held up
    the fold on the other core for ~6% of its time (py-spy, 7 December)."""
    for rollup in rollups:
        sessions: dict[tuple, array] = defaultdict(SESSION_HASHES)
        installations: dict[tuple, set] = defaultdict(set)
        for key, ids in rollup.sessions.items():
            window_start, dims = key
            if dims[0] != CLIENT_REPORT:
                sketch_key = (window_start // DAY_S, *(dims[i] for i in dimensions.SKETCH_INDEXES))
                sessions[sketch_key] += ids
                if found := rollup.installations.get(key):
                    installations[sketch_key] |= found
        for sketch_key in list(sessions):
            distinct = _fold.distinct_json(sessions.pop(sketch_key))
            present = sorted(installations.pop(sketch_key, ()))
            if distinct != b"[]" or present:
                yield (*sketch_key, msgspec.Raw(distinct), present)


def _sighting_rows(rollups: Iterable[PartitionRollup], keys: Keys) -> list[tuple]:
    """Per day, the keyed hash of each candidate value of the rollups with the keyed hashes of the
    installations that sent it (hashed as folded)."""
    sightings: dict[tuple, set] = defaultdict(set)
    for rollup in rollups:
        for (window_start, field, value), found in rollup.candidates.items():
            sightings[(window_start // DAY_S, field, keys.value(field, value))] |= found
    return [(day, field, value_hash, sorted(found)) for (day, field, value_hash), found in sightings.items()]


#: The sketch tables with their columns and their rows for some rollups (writing a hash twice changes
#: nothing, so one insert serves a batch of flushes): the keyed hashes of the sessions and installations
#: per sketch key, and of the candidate values with their installations'.
SKETCHES = (
    (SESSION_SIGHTINGS, SESSION_COLUMNS, _session_rows),
    (VALUE_SIGHTINGS, SIGHTING_COLUMNS, _sighting_rows),
)
