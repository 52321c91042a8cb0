"""ClickHouse access: the client from the DSN, and the idempotent flush of a partition's rollup.

Exactly-once protocol, per source partition:

1. `record_intent`: insert the flush's offset range [start, end) into `ingest_flushes`, before its data.
2. `write_rollup`: insert the runs and quality rows, each insert carrying a deduplication token derived
   from the range (`<topic>/<partition>/<start>-<end>/<table>`). ClickHouse drops a block whose token it
   has seen, in the table and (with `deduplicate_blocks_in_dependent_materialized_views`) in every
   materialized view below it, so writing the same range twice counts it once.
3. On partition assignment the worker reads `last_flush` and re-consumes that range into an identical
   rollup before anything newer: whatever of the last flush had not landed lands now, whatever had is
   dropped as a duplicate. Everything after `end` was never part of a recorded flush. A range an operator
   skipped (`skipped` > 0) is never re-consumed: its rows are rebuilt from its skip request.

Kafka offsets are committed after step 2 only for lag monitoring; `ingest_flushes` is the source of truth.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import clickhouse_connect
import msgspec
from clickhouse_connect.driver.client import Client

from pipeline.config import Settings
from pipeline.rollup import PartitionRollup
from tables.schema import (FLUSH_COLUMNS, INGEST_FLUSHES, QUALITY_COLUMNS, QUALITY_MINUTE, RUNS_COLUMNS, RUNS_MINUTE,
                           SKIP_COLUMNS, SKIP_REQUESTS)

_encode_row = msgspec.json.Encoder().encode
_DEDUP_SETTINGS = {
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
}


def connect(settings: Settings) -> Client:
    """A clickhouse-connect client for the configured DSN: a server over HTTP(S) or embedded chDB."""
    dsn = settings.clickhouse_dsn
    if settings.embedded_clickhouse:
        Path(dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=dsn)
    # clickhouse-connect reads TLS from the port (443/8443), not from an https:// scheme: pass it on.
    options: dict = {"dsn": dsn, "interface": urlsplit(dsn).scheme, "connect_timeout": 10, "send_receive_timeout": 60}
    if settings.clickhouse_user:
        options["username"] = settings.clickhouse_user
    if settings.clickhouse_password:
        options["password"] = settings.clickhouse_password.get_secret_value()
    if settings.clickhouse_ca_cert:
        options["ca_cert"] = str(settings.clickhouse_ca_cert)
    return clickhouse_connect.get_client(**options)


class FlushRange(NamedTuple):
    start_offset: int
    end_offset: int
    skipped: int = 0  # offsets an operator skipped: the range is not re-consumed


class SkipRequest(NamedTuple):
    through_offset: int
    reason: str
    requested_at_s: int


class ClickHouseSink:
    """Writes rollups and reads flush ranges. Not thread-safe: the worker calls it from one thread."""

    def __init__(self, client: Client, database: str, distributed: bool = False):
        self.client = client
        self.database = database
        self._settings = dict(_DEDUP_SETTINGS)
        if distributed:  # tokens reach the shards only with synchronous distributed inserts
            self._settings["distributed_foreground_insert"] = 1

    def _table(self, name: str) -> str:
        return f"{self.database}.{name}"

    def last_flush(self, topic: str, partition: int) -> FlushRange | None:
        result = self.client.query(
            f"SELECT start_offset, end_offset, skipped FROM {self._table(INGEST_FLUSHES.name)} "
            "WHERE topic = {topic:String} AND partition = {partition:UInt32} "
            "ORDER BY end_offset DESC LIMIT 1",
            parameters={"topic": topic, "partition": partition},
        )
        return FlushRange(*result.result_rows[0]) if result.result_rows else None

    def record_intent(self, rollup: PartitionRollup) -> None:
        row = (rollup.topic, rollup.partition, rollup.start_offset, rollup.end_offset, rollup.events,
               rollup.counted, rollup.dead_lettered, rollup.late, rollup.skipped)
        self._insert(INGEST_FLUSHES.name, [row], FLUSH_COLUMNS, rollup.token)

    def request_skip(self, topic: str, partition: int, through_offset: int, reason: str) -> None:
        self.client.insert(self._table(SKIP_REQUESTS.name), [(topic, partition, through_offset, reason)],
                           column_names=SKIP_COLUMNS)

    def skip_request(self, topic: str, partition: int, through_offset: int | None = None,
                     at_or_after: int = 0) -> SkipRequest | None:
        """The earliest request to skip `partition` through exactly `through_offset` (a replay rebuilds
        the skip it recorded) or, without it, the lowest requested end at or after `at_or_after`."""
        condition = "through_offset = {through:UInt64}" if through_offset is not None else \
            "through_offset >= {at_or_after:UInt64}"
        result = self.client.query(
            f"SELECT through_offset, argMin(reason, requested_at), toUnixTimestamp(min(requested_at)) "
            f"FROM {self._table(SKIP_REQUESTS.name)} "
            "WHERE topic = {topic:String} AND partition = {partition:UInt32} AND " + condition +
            " GROUP BY through_offset ORDER BY through_offset LIMIT 1",
            parameters={"topic": topic, "partition": partition, "through": through_offset or 0,
                        "at_or_after": at_or_after})
        return SkipRequest(*result.result_rows[0]) if result.result_rows else None

    def write_rollup(self, rollup: PartitionRollup) -> None:
        if rollup.runs:
            self._insert(RUNS_MINUTE.name, ((w, *dims, n) for (w, dims), n in rollup.runs.items()),
                         RUNS_COLUMNS, rollup.token)
        if rollup.quality:
            self._insert(QUALITY_MINUTE.name, ((*key, n) for key, n in rollup.quality.items()),
                         QUALITY_COLUMNS, rollup.token)

    def _insert(self, table: str, rows: Iterable[tuple], columns: tuple[str, ...], token: str) -> None:
        """Rows go as JSONCompactEachRow, encoded by msgspec in C and parsed by ClickHouse: the worker
        spends no Python time per column value (clickhouse-connect's Native encoder is pure Python)."""
        settings = {**self._settings, "insert_deduplication_token": f"{token}/{table}"}
        body = b"\n".join(map(_encode_row, rows))
        self.client.raw_insert(self._table(table), columns, body, settings=settings, fmt="JSONCompactEachRow")
