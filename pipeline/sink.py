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

from collections.abc import Iterable
from typing import NamedTuple

import msgspec
from clickhouse_connect.driver.client import Client

from pipeline import dimensions
from pipeline.rollup import PartitionRollup
from tables.ddl import SchemaOptions
from tables.schema import CLIENT_DROPS_MINUTE, INGEST_FLUSHES, LEDGER_COUNTS, QUALITY_MINUTE, RUNS_MINUTE, SKIP_REQUESTS

#: The columns each write names (the others take their DEFAULT); rows are built in these orders below.
RUNS_COLUMNS = ("window_start", *dimensions.NAMES, "runs")
QUALITY_COLUMNS = ("window_start", "kind", "reason", "events")
FLUSH_COLUMNS = ("topic", "partition", "start_offset", "end_offset", "events", *LEDGER_COUNTS)
SKIP_COLUMNS = ("topic", "partition", "through_offset", "reason")
DROPS_COLUMNS = ("window_start", "sdk_version", "reason", "events")
WRITES = {RUNS_MINUTE.name: RUNS_COLUMNS, QUALITY_MINUTE.name: QUALITY_COLUMNS, INGEST_FLUSHES.name: FLUSH_COLUMNS,
          SKIP_REQUESTS.name: SKIP_COLUMNS, CLIENT_DROPS_MINUTE.name: DROPS_COLUMNS}

_encode_row = msgspec.json.Encoder().encode
_DEDUPLICATED = {"insert_deduplicate": 1, "deduplicate_blocks_in_dependent_materialized_views": 1}
_CLUSTER_INSERTS = {"distributed_foreground_insert": 1}  # tokens reach the shards only synchronously
_CLUSTER_INTENTS = {"insert_quorum": "auto", "insert_quorum_parallel": 0}
_CLUSTER_INTENT_READS = {"select_sequential_consistency": 1}


class FlushRange(NamedTuple):
    start_offset: int
    end_offset: int
    skipped: int = 0  # offsets an operator skipped: the range is not re-consumed


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
            f"SELECT start_offset, end_offset, skipped FROM {INGEST_FLUSHES.target(self.opts)} "
            "WHERE topic = {topic:String} AND partition = {partition:UInt32} ORDER BY end_offset DESC LIMIT 1",
            parameters={"topic": topic, "partition": partition}, settings=self._intent_reads)
        return FlushRange(*result.result_rows[0]) if result.result_rows else None

    def record_intent(self, rollup: PartitionRollup, token: str) -> None:
        row = (rollup.topic, rollup.partition, rollup.start_offset, rollup.end_offset, rollup.events,
               rollup.counted, rollup.dead_lettered, rollup.late, rollup.skipped)
        self._insert(INGEST_FLUSHES.target(self.opts), [row], FLUSH_COLUMNS, f"{token}/{INGEST_FLUSHES.name}",
                     self._intents)

    def write_rows(self, rollup: PartitionRollup, token: str) -> None:
        """The rows of a rollup, one insert per table: usage events to the runs table, client reports to
        the drops table, and the quality counts."""
        for table, columns, rows in ((RUNS_MINUTE, RUNS_COLUMNS, [(w, *dims, n) for (w, dims), n in
                                                                   rollup.run_counts().items()]),
                                     (CLIENT_DROPS_MINUTE, DROPS_COLUMNS, [(*key, n) for key, n in
                                                                            rollup.client_drops().items()]),
                                     (QUALITY_MINUTE, QUALITY_COLUMNS, [(*key, n) for key, n in
                                                                         rollup.quality.items()])):
            if rows:
                self._insert(table.target(self.opts), rows, columns, f"{token}/{table.name}", self._inserts)

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
        spends no Python time per column value (clickhouse-connect's Native encoder is pure Python)."""
        body = b"\n".join(map(_encode_row, rows))
        self.client.raw_insert(table, columns, body, settings={**settings, "insert_deduplication_token": token},
                               fmt="JSONCompactEachRow")
