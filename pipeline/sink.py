"""The worker's ClickHouse reads and writes: flush intents, rows, flush ranges and skip requests.

The sink knows tables and columns, not the protocol: each write carries the deduplication token it is
given (`agents/checkpoint.py` derives tokens from offset ranges and orders the writes). Not thread-safe:
the worker calls it from its one ClickHouse thread.

On a cluster, deduplication works per shard (every table has a deterministic sharding key, see
`tables/ddl.py`), inserts into the Distributed tables are synchronous so that tokens reach the shards, and
the intents are the one thing a read must never see stale: a replica that lags would return an older
range, the worker would replay it under a different token, and count events twice. So intents are
inserted with a quorum of replicas (linearized, `insert_quorum_parallel = 0`) and read with
`select_sequential_consistency`, which only answers from a replica that has every quorum insert.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from collections import defaultdict
from typing import NamedTuple

import msgspec
from clickhouse_connect.driver.client import Client
from kern_telemetry_client.contract import CLIENT_REPORT

from pipeline import dimensions
from pipeline.admission import DAY_S, Admitted, Keys
from pipeline.rollup import PartitionRollup
from tables.ddl import SchemaOptions
from tables.schema import (ADMITTED_VALUES, CLIENT_DROPS_MINUTE, INGEST_FLUSHES, LAUNCHES_MINUTE, LEDGER_COUNTS,
                           QUALITY_MINUTE, RUNS_MINUTE, SESSION_SIGHTINGS, SKIP_REQUESTS, VALUE_CANDIDATES,
                           VALUE_SIGHTINGS)

#: The columns each write names (the others take their DEFAULT); rows are built in these orders below.
RUNS_COLUMNS = ("window_start", *dimensions.NAMES, "runs")
LAUNCHES_COLUMNS = ("window_start", "sdk_version", *dimensions.LAUNCH_NAMES, "launches")
QUALITY_COLUMNS = ("window_start", "kind", "reason", "events")
FLUSH_COLUMNS = ("topic", "partition", "start_offset", "end_offset", "events", *LEDGER_COUNTS, "admission_epoch")
SKIP_COLUMNS = ("topic", "partition", "through_offset", "reason")
DROPS_COLUMNS = ("window_start", "sdk_version", "reason", "events")
SESSION_COLUMNS = ("day", *dimensions.SKETCH, "session_hashes")
SIGHTING_COLUMNS = ("day", "field", "value_hash", "session_hashes")
ADMITTED_COLUMNS = ("epoch", "field", "value", "value_hash")
WRITES = {RUNS_MINUTE.name: RUNS_COLUMNS, LAUNCHES_MINUTE.name: LAUNCHES_COLUMNS, QUALITY_MINUTE.name: QUALITY_COLUMNS, INGEST_FLUSHES.name: FLUSH_COLUMNS,
          SKIP_REQUESTS.name: SKIP_COLUMNS, CLIENT_DROPS_MINUTE.name: DROPS_COLUMNS,
          SESSION_SIGHTINGS.name: SESSION_COLUMNS, VALUE_SIGHTINGS.name: SIGHTING_COLUMNS,
          ADMITTED_VALUES.name: ADMITTED_COLUMNS}

_encode_rows = msgspec.json.Encoder().encode_lines
_DEDUPLICATED = {"insert_deduplicate": 1, "deduplicate_blocks_in_dependent_materialized_views": 1}
_CLUSTER_INSERTS = {"distributed_foreground_insert": 1}  # tokens reach the shards only synchronously
_CLUSTER_INTENTS = {"insert_quorum": "auto", "insert_quorum_parallel": 0}
_CLUSTER_INTENT_READS = {"select_sequential_consistency": 1}


class FlushRange(NamedTuple):
    start_offset: int
    end_offset: int
    skipped: int = 0  # offsets an operator skipped: the range is not re-consumed
    admission_epoch: int = 0  # the admission its rows were projected with


class SkipRequest(NamedTuple):
    through_offset: int
    reason: str
    requested_at_s: int


class ClickHouseSink:
    def __init__(self, client: Client, opts: SchemaOptions):
        self.client = client
        self.opts = opts
        cluster = bool(opts.cluster)
        self._inserts = {**_DEDUPLICATED, **(_CLUSTER_INSERTS if cluster else {})}
        self._intents = {**self._inserts, **(_CLUSTER_INTENTS if cluster else {})}
        self._intent_reads = _CLUSTER_INTENT_READS if cluster else {}

    def last_flush(self, topic: str, partition: int) -> FlushRange | None:
        result = self.client.query(
            f"SELECT start_offset, end_offset, skipped, admission_epoch FROM {INGEST_FLUSHES.target(self.opts)} "
            "WHERE topic = {topic:String} AND partition = {partition:UInt32} ORDER BY end_offset DESC LIMIT 1",
            parameters={"topic": topic, "partition": partition}, settings=self._intent_reads)
        return FlushRange(*result.result_rows[0]) if result.result_rows else None

    def record_intent(self, rollup: PartitionRollup, token: str) -> None:
        row = (rollup.topic, rollup.partition, rollup.start_offset, rollup.end_offset, rollup.events,
               rollup.counted, rollup.dead_lettered, rollup.late, rollup.skipped, rollup.epoch)
        self._insert(INGEST_FLUSHES.target(self.opts), [row], FLUSH_COLUMNS, f"{token}/{INGEST_FLUSHES.name}",
                     self._intents)

    def write_rows(self, rollup: PartitionRollup, token: str, keys: Keys) -> None:
        """The rows of a rollup, one insert per table: usage events to the runs table, launches with their
        configuration to the launches table, client reports to the drops table, the quality counts, and the
        keyed hashes of the sessions (per sketch key) and of the candidate values (with their sessions')."""
        for table, columns, rows in ((RUNS_MINUTE, RUNS_COLUMNS, [(w, *dims, n) for (w, dims), n in
                                                                   rollup.run_counts().items()]),
                                     (LAUNCHES_MINUTE, LAUNCHES_COLUMNS, [(*key, n) for key, n in
                                                                          rollup.launches().items()]),
                                     (CLIENT_DROPS_MINUTE, DROPS_COLUMNS, [(*key, n) for key, n in
                                                                            rollup.client_drops().items()]),
                                     (QUALITY_MINUTE, QUALITY_COLUMNS, [(*key, n) for key, n in
                                                                         rollup.quality.items()]),
                                     (SESSION_SIGHTINGS, SESSION_COLUMNS, _session_rows(rollup, keys)),
                                     (VALUE_SIGHTINGS, SIGHTING_COLUMNS, _sighting_rows(rollup, keys))):
            self._insert(table.target(self.opts), rows, columns, f"{token}/{table.name}", self._inserts)

    def admitted(self) -> list[Admitted]:
        return [Admitted(*row) for row in self.client.query(
            f"SELECT epoch, field, value FROM {ADMITTED_VALUES.target(self.opts)}").result_rows]

    def ready_candidates(self, k: int) -> set[tuple[str, int]]:
        """(field, value hash) of the candidates seen from k distinct sessions on one day (today or
        yesterday: older ones expire)."""
        return {(field, value_hash) for field, value_hash in self.client.query(
            f"SELECT field, value_hash FROM {VALUE_CANDIDATES.target(self.opts)} WHERE day >= today() - 1 "
            "GROUP BY field, value_hash, day HAVING uniqCombined64Merge(sessions) >= {k:UInt32}",
            parameters={"k": k}).result_rows}

    def admit(self, epoch: int, values: list[tuple[str, str, int]]) -> None:
        """Write an admission epoch ((field, value, value hash) rows). Deduplicated by the epoch number:
        of two workers writing the same epoch, the first one's rows are the epoch."""
        self._insert(ADMITTED_VALUES.target(self.opts), [(epoch, *row) for row in values], ADMITTED_COLUMNS,
                     f"admission/{epoch}", self._intents)

    def request_skip(self, topic: str, partition: int, through_offset: int, reason: str) -> None:
        self.client.insert(SKIP_REQUESTS.target(self.opts), [(topic, partition, through_offset, reason)],
                           column_names=SKIP_COLUMNS)

    def skip_request(self, topic: str, partition: int, through_offset: int | None = None,
                     at_or_after: int = 0) -> SkipRequest | None:
        """The earliest request to skip `partition` through exactly `through_offset` (a replay rebuilds
        the skip it recorded) or, without it, the lowest requested end at or after `at_or_after`."""
        condition = ("through_offset = {through:UInt64}" if through_offset is not None
                     else "through_offset >= {at_or_after:UInt64}")
        result = self.client.query(
            "SELECT through_offset, argMin(reason, requested_at), toUnixTimestamp(min(requested_at)) "
            f"FROM {SKIP_REQUESTS.target(self.opts)} WHERE topic = {{topic:String}} "
            f"AND partition = {{partition:UInt32}} AND {condition} GROUP BY through_offset ORDER BY through_offset "
            "LIMIT 1",
            parameters={"topic": topic, "partition": partition, "through": through_offset or 0,
                        "at_or_after": at_or_after})
        return SkipRequest(*result.result_rows[0]) if result.result_rows else None

    def _insert(self, table: str, rows: Iterable[tuple], columns: tuple[str, ...], token: str, settings: dict) -> None:
        """Rows go as JSONCompactEachRow, encoded by msgspec in C and parsed by ClickHouse: the worker
        spends no Python time per column value (clickhouse-connect's Native encoder is pure Python).
        No rows, no insert."""
        body = _encode_rows(rows)
        if not body:
            return
        self.client.raw_insert(table, columns, body, settings={**settings, "insert_deduplication_token": token},
                               fmt="JSONCompactEachRow")


def _session_rows(rollup: PartitionRollup, keys: Keys) -> Iterator[tuple]:
    """Per day and sketch key (`dimensions.SKETCH`), the keyed hashes of the distinct sessions of the rollup's
    runs (in order of first sight: a replay writes the same rows). One row at a time, each sketch's sessions
    released once its row is encoded: a catching-up flush holds hundreds of thousands of them."""
    sessions: dict[tuple, list] = defaultdict(list)
    for (window_start, dims), ids in rollup.sessions.items():
        if dims[0] != CLIENT_REPORT:
            sessions[(window_start // DAY_S, *(dims[i] for i in dimensions.SKETCH_INDEXES))] += ids
    for sketch_key in list(sessions):
        distinct = dict.fromkeys(sessions.pop(sketch_key))
        distinct.pop(None, None)  # events without a session
        if distinct:
            day = sketch_key[0]
            yield (*sketch_key, keys.sessions(day * DAY_S, distinct))


def _sighting_rows(rollup: PartitionRollup, keys: Keys) -> list[tuple]:
    """Per day, the keyed hash of each candidate value with the keyed hashes of its sessions."""
    sightings: dict[tuple, list] = defaultdict(list)
    for (window_start, field, value), ids in rollup.candidates.items():
        sightings[(window_start // DAY_S, field, keys.value(field, value))] += ids
    return [(day, field, value_hash, keys.sessions(day * DAY_S, ids))
            for (day, field, value_hash), ids in sightings.items()]
