"""The ledger checked against the running totals its intents carry (`pipeline/ledger.py`).

What is simulated is what a single-node ClickHouse killed in the middle of an insert leaves (the
experiment is in `pipeline/grains.py`'s docstring): a view's block that never reached the ledger, and an
intent whose retry was dropped as the duplicate of a block that is not there.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from conftest import Record

from agents.checkpoint import token, write
from pipeline import ledger
from pipeline.admission import Keys
from pipeline.health import Health
from pipeline.projector import EventProjector
from pipeline.rejections import Reason
from pipeline.rollup import LogIdentity, PartitionRollup
from pipeline.sink import ClickHouseSink
from tables.ddl import SchemaOptions
from tables.migrate import migrate

pytestmark = pytest.mark.integration

TOPIC = "events"
KEYS = Keys(b"secret")
PROJECT = EventProjector(60, 3600, 300, 65536, keys=KEYS)


def folded(partition: int, start: int, events: int, log: LogIdentity = LogIdentity()) -> PartitionRollup:
    """A range of `events` usage events and one undecodable record after them."""
    rollup = PartitionRollup(TOPIC, partition, start, log=log)
    now_ms = int(time.time() * 1000)
    value = b'{"type":"agent","session_id":"s","data":{"model_id":"gpt-5.2"}}'
    rollup.add(
        [*(Record(start + i, now_ms, value) for i in range(events)), Record(start + events, now_ms, b"{")], PROJECT
    )
    return rollup


def skipped(partition: int, start: int, end: int) -> PartitionRollup:
    return PartitionRollup.gone(Reason.SKIPPED, TOPIC, partition, start, end, time.time(), 60, "operator")


@pytest.fixture
def sink(stack_factory):
    stack = stack_factory(shared_clickhouse=True)
    with stack.clickhouse() as client:
        migrate(client, SchemaOptions())
        yield ClickHouseSink(client, SchemaOptions())


def test_each_intent_carries_its_logs_running_total_and_every_ledger_adds_up_to_it(sink):
    totals: dict = {}
    for rollup in (folded(0, 0, 3), skipped(0, 4, 10), folded(0, 10, 5), folded(1, 0, 7)):
        write(sink, [rollup], KEYS, [rollup.end_offset], totals)
    assert sink.last_flush(TOPIC, 0).ledger_total == 4 + 6 + 6
    assert sink.last_flush(TOPIC, 1).ledger_total == 8
    assert sink.ledger_sum(TOPIC, 0, 0) == 16
    assert ledger.check(sink.client, sink.opts) == []

    new_log = LogIdentity(1, "recreated")  # a new log's total starts again
    write(sink, [folded(0, 0, 2, new_log)], KEYS, [3], totals)
    assert sink.last_flush(TOPIC, 0).ledger_total == 3 and totals == {(0, 0): 16, (1, 0): 8, (0, 1): 3}
    assert ledger.check(sink.client, sink.opts) == []


def test_a_ledger_block_that_never_reached_the_ledger_shows_as_the_offsets_it_held(sink):
    totals: dict = {}
    write(sink, [folded(0, 0, 3), folded(1, 0, 2)], KEYS, [4, 3], totals)
    lost = folded(0, 4, 9)
    sink.client.command("DETACH TABLE kern_telemetry.ingest_ledger_by_log_mv")
    try:
        write(sink, [lost], KEYS, [lost.end_offset], totals)
    finally:
        sink.client.command("ATTACH TABLE kern_telemetry.ingest_ledger_by_log_mv")
    write(sink, [folded(0, 14, 1)], KEYS, [16], totals)  # later flushes go on and the gap stays

    [found] = ledger.check(sink.client, sink.opts)
    assert (found.partition, found.generation, found.missing) == (0, 0, lost.accounted) == (0, 0, 10)
    assert (found.recorded, found.ledger) == (4 + 10 + 2, 4 + 2)
    assert found.describe() == "events partition 0 (log generation 0) misses 10"


def test_an_intent_dropped_with_its_ledger_block_as_the_duplicates_of_blocks_that_are_not_there_shows(sink):
    """ClickHouse recorded the deduplication tokens of an intent and of its ledger block, and died before
    their parts were in place: the retry is dropped from both, its rows land, later intents go on counting
    it. Simulated by a block under the same tokens (in 1970, apart from every real row), then deleted."""
    totals: dict = {}
    write(sink, [folded(0, 0, 3)], KEYS, [4], totals)
    lost = folded(0, 4, 5)
    sink.client.insert(
        "kern_telemetry.ingest_flushes",
        [[TOPIC, 0, 0, 0, 1, datetime.fromtimestamp(0, UTC)]],
        column_names=["topic", "partition", "start_offset", "end_offset", "events", "flushed_at"],
        settings={
            "insert_deduplicate": 1,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
            "insert_deduplication_token": f"{token(lost)}/ingest_flushes",
        },
    )
    for table, column in (("ingest_flushes", "toDate(flushed_at)"), ("ingest_ledger", "day")):
        sink.client.command(
            f"ALTER TABLE kern_telemetry.{table} DELETE WHERE {column} = '1970-01-01'", settings={"mutations_sync": 2}
        )
    write(sink, [lost], KEYS, [10], totals)
    write(sink, [folded(0, 10, 2)], KEYS, [13], totals)
    runs = sink.client.query("SELECT sum(runs) FROM kern_telemetry.runs_minute").result_rows
    assert runs == [(3 + 5 + 2,)]  # its rows landed

    [found] = ledger.check(sink.client, sink.opts)
    assert (found.partition, found.missing, found.recorded) == (0, lost.accounted, 4 + 6 + 3)


def test_an_excess_in_the_ledger_shows_as_offsets_held_twice(sink):
    totals: dict = {}
    write(sink, [folded(2, 0, 3)], KEYS, [4], totals)
    sink.client.command(  # a block counted twice in the ledger
        "INSERT INTO kern_telemetry.ingest_ledger (topic, partition, day, log_generation, events) "
        "VALUES ('events', 2, today(), 0, 4)"
    )
    [found] = ledger.check(sink.client, sink.opts)
    assert found.missing == -4 and found.describe().endswith("holds 4 twice")


def test_health_degrades_on_a_disagreement_seen_twice_with_the_same_offsets_and_on_a_check_that_fails():
    health = Health()
    first = ledger.Disagreement(TOPIC, 0, 0, 100, 90)
    health.ledger_checked([first])
    assert health.ok  # an intent may have landed between the check's reads
    health.ledger_checked([first._replace(recorded=130, ledger=120)])  # the partition flushed on, 10 still missing
    assert "misses 10" in health.degraded["ledger"] and "kern-telemetry ledger" in health.degraded["ledger"]
    assert health.metrics.values()("kern_ledger_disagreements") == 1
    health.ledger_checked([first._replace(recorded=140, ledger=120)])  # another block lost: confirmed next time
    assert "ledger" not in health.degraded and health.metrics.values()("kern_ledger_disagreements") == 0

    health.check_failed("ledger", RuntimeError("Table kern_telemetry.ingest_ledger does not exist"))
    assert "does not exist" in health.degraded["ledger unchecked"]
    assert health.metrics.values()("kern_degraded", {"component": "ledger unchecked"}) == 1
    health.ledger_checked([])
    assert health.ok


def test_a_worker_reports_a_short_ledger_and_a_check_it_cannot_run(stack_factory):
    stack = stack_factory(partitions=1, shared_clickhouse=True, KERN_AUDIT_SECONDS="0.5")
    worker = stack.worker()
    ends = stack.produce([b'{"type":"agent","session_id":"s"}'] * 20 + [b"not json"])
    worker.wait_flushed(ends)
    assert stack.command("ledger").returncode == 0
    assert "kern_ledger_disagreements 0.0" in worker.metrics()

    with stack.clickhouse() as client:
        client.command(
            "ALTER TABLE kern_telemetry.ingest_ledger UPDATE events = events - 1 WHERE partition = 0",
            settings={"mutations_sync": 2},
        )
    report = worker.wait_health(lambda r: "ledger" in r["degraded"], 60, "ledger degraded")
    assert f"{stack.settings.topic} partition 0 (log generation 0) misses 1" in report["degraded"]["ledger"]
    assert "kern_ledger_disagreements 1.0" in worker.metrics()
    checked = stack.command("ledger")
    assert checked.returncode == 1 and "disagree" in checked.stderr
    assert stack.settings.topic in checked.stdout and "21" in checked.stdout and "20" in checked.stdout

    failing = {"ledger unchecked", "grains unchecked", "grains unbuilt"}
    with stack.clickhouse() as client:  # the worker is idle: only the checks and the builder read these now
        client.command("DETACH TABLE kern_telemetry.ingest_ledger")
        client.command("DETACH TABLE kern_telemetry.runs_daily")
        try:
            report = worker.wait_health(lambda r: failing <= set(r["degraded"]), 60, "checks and builds failing")
            assert "the check failed" in report["degraded"]["ledger unchecked"]
            assert "runs_daily" in report["degraded"]["grains unbuilt"]
            assert 'kern_degraded{component="grains unchecked"} 1.0' in worker.metrics()
        finally:
            client.command("ATTACH TABLE kern_telemetry.ingest_ledger")
            client.command("ATTACH TABLE kern_telemetry.runs_daily")
    report = worker.wait_health(lambda r: not failing & set(r["degraded"]), 60, "checks and builds running again")
    assert "ledger" in report["degraded"]  # the ledger is still short

    acknowledged = stack.command("ledger", "--acknowledge", "ClickHouse OOM-killed at 03:12, ticket OPS-1")
    assert acknowledged.returncode == 0, acknowledged.stdout + acknowledged.stderr
    assert "acknowledged 1 partition(s)' differences" in acknowledged.stdout
    worker.wait_health(lambda r: "ledger" not in r["degraded"], 60, "ledger acknowledged")
    assert stack.command("ledger").returncode == 0
    with stack.clickhouse() as client:
        rows = client.query("SELECT partition, offsets, reason FROM kern_telemetry.ledger_acknowledgements").result_rows
    assert rows == [(0, 1, "ClickHouse OOM-killed at 03:12, ticket OPS-1")]


def test_a_worker_upgraded_from_intents_without_totals_starts_the_total_from_the_ledger(stack_factory):
    stack = stack_factory(partitions=1, shared_clickhouse=True)
    event = b'{"type":"agent","session_id":"s"}'
    worker = stack.worker()
    worker.wait_flushed(stack.produce([event] * 30))
    assert worker.stop() == 0
    with stack.clickhouse() as client:  # as a worker before version 9 recorded them
        client.command(
            "ALTER TABLE kern_telemetry.ingest_flushes UPDATE ledger_total = -1 WHERE 1", settings={"mutations_sync": 2}
        )
        assert ledger.check(client, SchemaOptions()) == []  # nothing to check against yet

    worker = stack.worker("upgraded")
    ends = stack.produce([event] * 12 + [b"not json"])
    worker.wait_flushed(ends)
    assert worker.stop() == 0
    with stack.clickhouse() as client:
        sink = ClickHouseSink(client, SchemaOptions())
        assert sink.last_flush(stack.settings.topic, 0).ledger_total == ends[0] == 43
        assert ledger.check(client, SchemaOptions()) == []
