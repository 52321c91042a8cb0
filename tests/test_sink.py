"""What the sink asks of a ClickHouse cluster. No cluster runs here (the single-node path runs on chDB in
every integration test), so these tests record the settings each call carries: on a cluster, inserts are
synchronous (deduplication tokens reach the shards), intents need a quorum of replicas, and the last
flush range is read with sequential consistency, so a lagging replica can never hide an intent."""

from __future__ import annotations

import time
from typing import ClassVar

from conftest import Record

from agents.checkpoint import write
from pipeline.admission import Keys
from pipeline.projector import EventProjector
from pipeline.rollup import PartitionRollup
from pipeline.sink import ClickHouseSink
from tables.ddl import SchemaOptions


class _Result:
    result_rows: ClassVar[list] = []


class RecordingClient:
    """Takes the place of a clickhouse-connect client and records each call's table and settings."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []

    def raw_insert(self, table, columns, body, settings, fmt):
        self.calls.append(("insert", table, settings))

    def query(self, sql, parameters=None, settings=None):
        self.calls.append(("query", sql.split(" FROM ")[1].split()[0], settings or {}))
        return _Result()


def flushed(cluster: str | None) -> RecordingClient:
    client = RecordingClient()
    sink = ClickHouseSink(client, SchemaOptions(cluster=cluster))
    rollup = PartitionRollup("events", 3, 10)
    now_ms = int(time.time() * 1000)
    rollup.add(
        [Record(10, now_ms, b'{"type":"agent","session_id":"s"}'), Record(11, now_ms, b"not json")],
        EventProjector(60, 3600, 300, 65536, keys=Keys(b"secret")),
    )
    sink.last_flush("events", 3)
    write(sink, [rollup], Keys(b"secret"), [12], {})
    return client


def test_on_a_cluster_intents_and_landings_need_a_quorum_and_are_read_with_sequential_consistency():
    read, intent, runs, quality, sessions, landed = flushed("telemetry").calls
    assert read == ("query", "`kern_telemetry`.`ingest_flushes`", {"select_sequential_consistency": 1})
    quorum = {
        "insert_deduplicate": 1,
        "deduplicate_blocks_in_dependent_materialized_views": 1,
        "optimize_on_insert": 0,
        "distributed_foreground_insert": 1,
        "insert_quorum": "auto",
        "insert_quorum_parallel": 0,
    }
    assert intent[1] == "`kern_telemetry`.`ingest_flushes`"
    assert intent[2] == {**quorum, "insert_deduplication_token": "events/3/10-12/ingest_flushes"}
    for call, table in ((runs, "runs_minute"), (quality, "quality_minute"), (sessions, "session_sightings")):
        assert call[1] == f"`kern_telemetry`.`{table}`" and "insert_quorum" not in call[2]
        assert call[2]["distributed_foreground_insert"] == 1
        assert call[2]["insert_deduplication_token"] == f"events/3/10-12/{table}"
    assert landed[1] == "`kern_telemetry`.`flush_landings`"  # both tables' landings in one insert
    assert landed[2]["insert_deduplication_token"].startswith("batch/")
    assert landed[2] == {**quorum, "insert_deduplication_token": landed[2]["insert_deduplication_token"]}


def test_on_one_node_the_same_writes_carry_only_their_deduplication_tokens_and_are_not_merged_on_insert():
    read, *writes = flushed(None).calls
    assert read[2] == {} and len(writes) == 5
    for call in writes:
        assert set(call[2]) == {
            "insert_deduplicate",
            "deduplicate_blocks_in_dependent_materialized_views",
            "optimize_on_insert",
            "insert_deduplication_token",
        }
        assert call[2]["optimize_on_insert"] == 0
