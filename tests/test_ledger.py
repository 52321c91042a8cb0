"""Every offset accounted for, against the real broker and worker: a log that is not the one the ledger
describes (a recreated topic, a replaced broker, records removed before they were consumed), a stalled
partition, and a replay after ClickHouse's deduplication window has forgotten the first attempt."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from conftest import (
    Stack,
    expected_quality,
    reference_rollup,
    stored_drops,
    stored_patterns,
    stored_quality,
    stored_runs,
)
from kafka.admin import KafkaAdminClient
from kafka_faults import KafkaFaultProxy

from devstack.broker import EmbeddedBroker
from devstack.loadgen import EventGenerator
from devstack.processes import free_port
from pipeline import ledger as ledger_checks
from pipeline.dimensions import PATTERNS
from pipeline.kafka import client_options, create_topics
from pipeline.rollup import PartitionRollup
from tables.ddl import SchemaOptions

pytestmark = pytest.mark.integration
PER_PARTITION = 3000


def load(seed: int, partitions: int = 2) -> list[list[bytes]]:
    """Load-generator events (every kind, some invalid), `PER_PARTITION` for each partition."""
    values = list(EventGenerator(seed=seed, invalid_share=0.02, profiles=500).events(PER_PARTITION * partitions))
    return [values[p * PER_PARTITION : (p + 1) * PER_PARTITION] for p in range(partitions)]


def produce(stack: Stack, per_partition: list[list[bytes]], record_ms: int) -> dict[int, int]:
    """Each partition's events pinned to it (the same load twice lands at the same offsets)."""
    ends = {}
    for partition, values in enumerate(per_partition):
        ends.update(stack.produce(values, [record_ms] * len(values), partition=partition))
    return {p: ends[p] for p in range(len(per_partition))}


def reference(stack: Stack, per_partition: list[list[bytes]], record_ms: int, times: int = 1) -> PartitionRollup:
    return reference_rollup(stack.settings, [v for values in per_partition for v in values] * times, record_ms)


FILLER_WINDOWS = 4_000_000_000  # and later (2096): rows written only to fill deduplication windows


def assert_counted(stack: Stack, expected: PartitionRollup) -> None:
    """Every table holds exactly the reference's counts, window by window (filler rows aside)."""

    def real(counts: Counter) -> Counter:
        return Counter({key: n for key, n in counts.items() if key[0] < FILLER_WINDOWS})

    with stack.clickhouse() as client:
        assert real(stored_runs(client, "runs_minute")) == Counter(expected.run_counts())
        for kind in PATTERNS:
            assert real(stored_patterns(client, kind)) == expected.patterns(kind)
        assert real(stored_drops(client)) == expected.client_drops()
        assert stored_quality(client) == expected_quality(expected)


def ledger(stack: Stack) -> dict[tuple[int, int], dict[str, int]]:
    """(partition, log generation) -> the ledger's outcomes summed, and their total."""
    outcomes = ("counted", "dead_lettered", "late", "skipped", "expired", "lost")
    with stack.clickhouse() as client:
        rows = client.query(
            f"SELECT partition, log_generation, {', '.join(f'sum({o})' for o in outcomes)} "
            "FROM kern_telemetry.ingest_ledger GROUP BY partition, log_generation"
        ).result_rows
    return {(p, g): {**dict(zip(outcomes, sums, strict=True)), "offsets": sum(sums)} for p, g, *sums in rows}


def assert_ledger_adds_up(stack: Stack) -> None:
    """Each partition's ledger equals its latest intent's running total (`pipeline/ledger.py`)."""
    with stack.clickhouse() as client:
        assert ledger_checks.check(client, SchemaOptions.from_settings(stack.settings)) == []


def recreate_topic(stack: Stack) -> None:
    admin = KafkaAdminClient(**client_options(stack.settings))
    try:
        admin.delete_topics([stack.settings.topic])
        deadline = time.monotonic() + 20
        while stack.settings.topic in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        admin.close()
    create_topics(stack.settings)
    stack.produced.clear()


def log_incidents(worker, partitions) -> dict:
    return worker.wait_health(
        lambda r: all(f"log {p}" in r["degraded"] for p in partitions), 60, "a log incident on every partition"
    )


def test_a_broker_replaced_under_a_kept_ledger_is_counted_as_a_new_log_from_its_start(tmp_path):
    """`make run` twice before this fix: the ledger says 3,000 per partition were counted, the broker starts
    empty, and the worker waited at offset 3,000 while /health said ok. The same payloads with the same
    timestamps at the same offsets again: under the first log's deduplication tokens ClickHouse would drop
    them as duplicates."""
    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log").start()
    stack = Stack(broker, tmp_path / "stack", 2, KERN_FLUSH_INTERVAL_SECONDS="3")
    record_ms = int(time.time() * 1000) - 60_000
    events = load(seed=41)
    try:
        first = produce(stack, events, record_ms)
        worker = stack.worker("first")
        worker.wait_flushed(first)
        assert worker.stop() == 0
        broker.stop()
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu2.log").start()  # empty, same address
        create_topics(stack.settings)
        stack.produced.clear()
        second = produce(stack, events, record_ms)
        assert second == first

        worker = stack.worker("second")
        report = log_incidents(worker, (0, 1))
        assert "new log" in report["degraded"]["log 0"] and "generation 1" in report["degraded"]["log 0"]
        report = worker.wait_flushed(second)
        assert report["status"] == "degraded" and [i["change"] for i in report["log_incidents"]] == ["new log"] * 2
        assert 'kern_log_changes_total{change="new log"} 2.0' in worker.metrics()
        assert worker.stop() == 0
        assert "ERROR" in worker.log_path.read_text() and "new log" in worker.log_path.read_text()

        assert_counted(stack, reference(stack, events, record_ms, times=2))
        assert {key: row["offsets"] for key, row in ledger(stack).items()} == {
            (0, 0): PER_PARTITION,
            (1, 0): PER_PARTITION,
            (0, 1): PER_PARTITION,
            (1, 1): PER_PARTITION,
        }
        assert_ledger_adds_up(stack)
    finally:
        stack.stop_all()
        broker.stop()


def test_a_topic_recreated_under_a_running_worker_is_counted_exactly(stack_factory):
    stack = stack_factory(partitions=2, shared_clickhouse=True)
    record_ms = int(time.time() * 1000) - 60_000
    events = load(seed=43)
    worker = stack.worker()
    worker.wait_flushed(produce(stack, events, record_ms))
    recreate_topic(stack)
    produce(stack, events, record_ms)
    log_incidents(worker, (0, 1))
    deadline = time.monotonic() + 90
    while (
        ledger(stack).get((1, 1), {}).get("offsets") != PER_PARTITION
        or ledger(stack).get((0, 1), {}).get("offsets") != PER_PARTITION
    ):
        assert time.monotonic() < deadline, ledger(stack)
        time.sleep(0.5)
    assert worker.stop() == 0
    assert_counted(stack, reference(stack, events, record_ms, times=2))
    assert all(row["offsets"] == PER_PARTITION for row in ledger(stack).values())
    assert_ledger_adds_up(stack)


def test_records_removed_before_they_were_consumed_are_recorded_as_expired(tmp_path):
    """A worker down while retention removes records it had not consumed: the ledger records them as
    expired to the offset, counting resumes at the log start, and /health says so."""
    broker_port = free_port()
    proxy = KafkaFaultProxy(broker_port)
    broker = EmbeddedBroker(port=broker_port, advertised_port=proxy.port, log_path=tmp_path / "tansu.log").start()
    proxy.start()
    stack = Stack(broker, tmp_path / "stack", 2)
    record_ms = int(time.time() * 1000) - 60_000
    events = load(seed=47)
    half = PER_PARTITION // 2
    try:
        counted = produce(stack, [values[:half] for values in events], record_ms)
        worker = stack.worker("before")
        worker.wait_flushed(counted)
        assert worker.stop() == 0
        ends = produce(stack, [values[half:] for values in events], record_ms)  # nobody consumes these ...
        proxy.expire_below(stack.settings.topic, 0, half + 500)  # ... and retention removes some of them
        proxy.expire_below(stack.settings.topic, 1, ends[1])  # all of them

        worker = stack.worker("after")
        report = log_incidents(worker, (0, 1))
        assert f"offsets {half}-{half + 499} recorded as expired" in report["degraded"]["log 0"]
        report = worker.wait_flushed(ends)
        assert report["offsets_gone"] == {"skipped": 0, "expired": 500 + half, "lost": 0}
        assert worker.stop() == 0
        assert any(
            "[ERROR]" in line and f"offsets {half}-{PER_PARTITION - 1} recorded as expired" in line
            for line in worker.log_path.read_text().splitlines()
        )

        kept = [events[0][:half] + events[0][half + 500 :], events[1][:half]]
        expected = reference(stack, kept, record_ms)
        with stack.clickhouse() as client:
            assert stored_runs(client, "runs_minute") == Counter(expected.run_counts())
            assert all(stored_patterns(client, kind) == expected.patterns(kind) for kind in PATTERNS)
            quality = stored_quality(client)
        assert quality.pop(("unknown", "expired")) == 500 + half and quality == expected_quality(expected)
        rows = ledger(stack)
        assert set(rows) == {(0, 0), (1, 0)}
        assert (rows[(0, 0)]["expired"], rows[(1, 0)]["expired"]) == (500, half)
        assert (rows[(0, 0)]["offsets"], rows[(1, 0)]["offsets"]) == (ends[0], ends[1])
        assert_ledger_adds_up(stack)
        letters = stack.read_topic(stack.settings.dlq_topic, expected.dead_lettered + 2)
        assert sorted(letter.key for letter in letters if b'"reason":"expired"' in letter.value) == [
            f"{stack.settings.topic}/0/{half}-{half + 499}".encode(),
            f"{stack.settings.topic}/1/{half}-{PER_PARTITION - 1}".encode(),
        ]
    finally:
        stack.stop_all()
        proxy.stop()
        broker.stop()


def test_a_partition_whose_fetches_return_nothing_while_its_log_grows_is_stalled_in_health(tmp_path):
    broker_port = free_port()
    proxy = KafkaFaultProxy(broker_port)
    broker = EmbeddedBroker(port=broker_port, advertised_port=proxy.port, log_path=tmp_path / "tansu.log").start()
    proxy.start()
    stack = Stack(broker, tmp_path / "stack", 2, KERN_STALL_SECONDS="3")
    record_ms = int(time.time() * 1000)
    try:
        worker = stack.worker()
        worker.wait_flushed(produce(stack, load(seed=53), record_ms))
        assert worker.health()["status"] == "ok"
        proxy.starve(stack.settings.topic, 1)
        produce(stack, load(seed=59), record_ms)
        produced = time.monotonic()
        report = worker.wait_health(lambda r: "partition 1 stalled" in r["degraded"], 30, "partition 1 stalled")
        assert time.monotonic() - produced < 3 + 2 * 5  # the stall time and at most two probes (every 5 s)
        assert (
            f"{PER_PARTITION} records in the log after offset {PER_PARTITION}"
            in report["degraded"]["partition 1 stalled"]
        )
        assert "partition 0 stalled" not in report["degraded"] and report["consumer_lag"]["1"] == PER_PARTITION
        assert float(_sample(worker.metrics(), 'kern_partition_freshness_seconds{partition="1"}')) >= 3
        proxy.starved.clear()
        worker.wait_health(lambda r: r["status"] == "ok", 30, "recovered")
        assert worker.stop() == 0
    finally:
        stack.stop_all()
        proxy.stop()
        broker.stop()


def _sample(exposition: str, series: str) -> str:
    return next(line.split()[-1] for line in exposition.splitlines() if line.startswith(series))


SUMMING = ("runs_minute", "launches_minute", "client_drops_minute")


def shrink_deduplication_windows(client, blocks: int) -> None:
    for (table,) in client.query(
        "SELECT name FROM system.tables WHERE database = 'kern_telemetry' AND engine LIKE '%MergeTree'"
    ).result_rows:
        client.command(
            f"ALTER TABLE kern_telemetry.{table} MODIFY SETTING non_replicated_deduplication_window = {blocks}"
        )


def push_out_of_the_window(client, round_: int) -> None:
    """Three blocks into every summing table (and, through its views, their rollups), in windows the test
    does not compare: the tables forget the blocks of a flush that landed before them."""
    for block in range(3):
        window = FILLER_WINDOWS + 3600 * (10 * round_ + block)
        client.insert(
            "kern_telemetry.runs_minute", [(window, "agent", 1)], column_names=("window_start", "kind", "runs")
        )
        client.insert(
            "kern_telemetry.launches_minute",
            [(window, "1.0.0", 1)],
            column_names=("window_start", "sdk_version", "launches"),
        )
        client.insert(
            "kern_telemetry.client_drops_minute",
            [(window, "1.0.0", "queue_full", 1)],
            column_names=("window_start", "sdk_version", "reason", "events"),
        )


def fail_quality_inserts(client, failing: bool) -> None:
    """ClickHouse's own refusal: with `parts_to_throw_insert = 1` every insert into the table fails (Too many
    parts), the inserts into the tables before it in a flush land."""
    client.command(
        "ALTER TABLE kern_telemetry.quality_minute "
        + ("MODIFY SETTING parts_to_throw_insert = 1" if failing else "RESET SETTING parts_to_throw_insert")
    )


def test_a_flush_rewritten_after_the_deduplication_window_forgot_it_writes_only_what_had_not_landed(stack_factory):
    """A flush that landed in some tables and failed in another, retried after ClickHouse's deduplication
    window (2 blocks here) has forgotten the tables where it landed: in the same worker (retries while other
    blocks arrive), and after a SIGKILL (the next worker's replay). Without the landings, both double count."""
    stack = stack_factory(partitions=2, shared_clickhouse=True)
    record_ms = int(time.time() * 1000) - 60_000
    loads = [load(seed) for seed in (61, 67, 71)]
    worker = stack.worker("first")
    worker.wait_flushed(produce(stack, loads[0], record_ms))
    with stack.clickhouse() as client:
        shrink_deduplication_windows(client, 2)
        fail_quality_inserts(client, True)
    ends = produce(stack, loads[1], record_ms)
    worker.wait_health(lambda r: r["flush_failures"] >= 2, 60, "retries of a failing flush")
    with stack.clickhouse() as client:
        push_out_of_the_window(client, 1)
        fail_quality_inserts(client, False)
    worker.wait_flushed(ends)
    assert_counted(stack, reference(stack, loads[0] + loads[1], record_ms))

    with stack.clickhouse() as client:
        fail_quality_inserts(client, True)
    failures = worker.health()["flush_failures"]
    ends = produce(stack, loads[2], record_ms)
    worker.wait_health(lambda r: r["flush_failures"] > failures, 60, "a failing flush")
    worker.kill()
    with stack.clickhouse() as client:
        landed = client.query("SELECT DISTINCT table_name FROM kern_telemetry.flush_landings FINAL").result_rows
        push_out_of_the_window(client, 2)
        fail_quality_inserts(client, False)
    assert {table for (table,) in landed} >= {"runs_minute", "launches_minute"}
    worker = stack.worker("second")
    report = worker.wait_flushed(ends)
    assert "2 blocks" in report["degraded"]["dedup window"]  # and /health says the window is too small
    assert worker.stop() == 0
    assert_counted(stack, reference(stack, loads[0] + loads[1] + loads[2], record_ms))
