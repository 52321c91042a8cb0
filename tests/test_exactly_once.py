"""Exactly-once counts under SIGKILL: workers are killed at random moments (many during a flush, which
runs every 0.2 s) while events stream in, and restarted; the totals in every table must equal the valid
events produced, per window and dimension set. ClickHouse runs in its own process, as in production: a
ClickHouse killed in the middle of an insert can lose a block whatever its client does
(`pipeline/grains.py`), so the engine embedded in a worker (a `chdb://` DSN) would make these tests about
ClickHouse's crashes, not the worker's. `make test` runs a short version, `make chaos` the long one (>= 20
kills over >= 500,000 events) and prints what it survived."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest
from conftest import (
    expected_quality,
    reference_rollup,
    roll,
    stored_drops,
    stored_patterns,
    stored_quality,
    stored_runs,
)

from devstack.loadgen import EventGenerator
from devstack.processes import wait_flushed_together
from pipeline import grains, ledger
from pipeline.dimensions import PATTERNS
from tables.ddl import SchemaOptions

pytestmark = pytest.mark.integration


def stream_in_background(stack, values, record_ms, chunks, pause, rng) -> tuple[threading.Thread, dict[int, int]]:
    """Produce `values` in `chunks` with pauses while the test kills workers; `produced` fills with the
    end offset of each partition."""
    produced: dict[int, int] = {}

    def produce_stream():
        step = len(values) // chunks + 1
        for start in range(0, len(values), step):
            chunk = values[start : start + step]
            produced.update(stack.produce(chunk, [record_ms] * len(chunk)))
            time.sleep(rng.uniform(*pause))

    producer = threading.Thread(target=produce_stream)
    producer.start()
    return producer, produced


def assert_exact(stack, values, record_ms) -> tuple[int, int]:
    """Every table holds exactly the valid events: the tables the worker writes, the hourly and daily grains
    ClickHouse's views keep from them, and the check of those grains finds nothing (`pipeline/grains.py`)."""
    expected = reference_rollup(stack.settings, values, record_ms)
    minute = Counter(expected.run_counts())
    with stack.clickhouse() as client:
        assert stored_runs(client, "runs_minute") == minute
        assert stored_drops(client) == expected.client_drops()
        for kind in PATTERNS:  # launches, team and workflow runs with their patterns
            patterns = expected.patterns(kind)
            assert patterns and stored_patterns(client, kind) == patterns
            assert stored_patterns(client, kind, "daily") == roll(patterns, 86400)
        assert stored_runs(client, "runs_hourly") == roll(minute, 3600)
        assert stored_runs(client, "runs_daily") == roll(minute, 86400)
        assert stored_quality(client) == expected_quality(expected)
        opts = SchemaOptions.from_settings(stack.settings)
        assert grains.check_all(client, opts, 0, time.time(), open_periods=True) == []
        assert ledger.check(client, opts) == []
    return sum(minute.values()), sum(expected.quality.values())


def test_random_kills_during_a_stream_lose_nothing_and_count_nothing_twice(stack_factory, chaos_long):
    events, kills_wanted = (500_000, 20) if chaos_long else (60_000, 3)
    stack = stack_factory(
        partitions=4, shared_clickhouse=True, KERN_FLUSH_MAX_EVENTS="2000", KERN_FLUSH_INTERVAL_SECONDS="0.2"
    )
    record_ms = int(time.time() * 1000) - 30_000
    values = list(EventGenerator(seed=21, invalid_share=0.02, profiles=2000).events(events))
    rng = random.Random(21)

    producer, produced = stream_in_background(
        stack,
        values,
        record_ms,
        chunks=40 if chaos_long else 10,
        pause=(0.5, 3.0) if chaos_long else (0.5, 0.5),
        rng=rng,
    )

    def consuming_or_caught_up(report: dict) -> bool:
        """Assigned and counting (a replay counts), or, the stream over, resumed where everything is counted
        (the victim before it flushed the rest before its kill: this one has nothing to count)."""
        flushed = report["flushed_offsets"]
        return report["events_flushed"] >= 1 or (
            not producer.is_alive()
            and len(report["assigned_partitions"]) == len(produced)
            and all(flushed.get(str(partition), 0) >= end for partition, end in produced.items())
        )

    kills = 0
    while kills < kills_wanted or producer.is_alive():
        worker = stack.worker(f"victim{kills}")
        worker.wait_health(consuming_or_caught_up, 120, "consuming, or resumed where everything is counted")
        time.sleep(rng.uniform(0.0, 1.5))
        worker.kill()
        kills += 1
        # Restart after the dead member's session has expired. Tansu keeps a dead group leader
        # that a newcomer joined behind, and the newcomer then waits for its assignment forever
        # (Kafka expires the leader and rebalances); a supervisor's restart delay avoids that here.
        time.sleep(stack.settings.kafka_session_timeout_seconds + 1)
    producer.join()

    survivor = stack.worker("survivor")
    survivor.wait_flushed(produced, timeout=300)
    assert survivor.stop() == 0

    runs, quality = assert_exact(stack, values, record_ms)
    print(
        f"\nchaos: {kills} SIGKILLs over {events:,} events ({sum(produced.values()):,} records in "
        f"{len(produced)} partitions); exact totals in every table: {runs:,} runs, {quality:,} quality events"
    )


def test_two_workers_killed_in_turn_rebalance_and_count_every_event_once(stack_factory, chaos_long):
    """Two workers share the partitions and one shared ClickHouse; each in turn is SIGKILLed, the survivor
    takes over its partitions (rebalance), then the victim comes back (rebalance again)."""
    events, cycles = (300_000, 8) if chaos_long else (60_000, 2)
    stack = stack_factory(
        partitions=4, shared_clickhouse=True, KERN_FLUSH_MAX_EVENTS="2000", KERN_FLUSH_INTERVAL_SECONDS="0.2"
    )
    record_ms = int(time.time() * 1000) - 30_000
    values = list(EventGenerator(seed=31, invalid_share=0.02, profiles=2000).events(events))
    rng = random.Random(31)
    workers = {"a": stack.worker("a0"), "b": stack.worker("b0")}
    producer, produced = stream_in_background(stack, values, record_ms, chunks=4 * cycles, pause=(0.5, 2.0), rng=rng)
    takeovers = 0
    for cycle in range(cycles):
        victim, survivor = ("a", "b") if cycle % 2 == 0 else ("b", "a")
        workers[victim].wait_health(lambda r: len(r["assigned_partitions"]) == 2, 90)  # the partitions are shared
        time.sleep(rng.uniform(0.5, 2.5))
        workers[victim].kill()
        workers[survivor].wait_health(lambda r: r["assigned_partitions"] == [0, 1, 2, 3], 90)  # it takes all
        takeovers += 1
        workers[victim] = stack.worker(f"{victim}{cycle + 1}")  # and shares them again
    producer.join()

    wait_flushed_together(list(workers.values()), produced, timeout=300)  # the two live workers together
    assert [worker.stop() for worker in workers.values()] == [0, 0]

    runs, quality = assert_exact(stack, values, record_ms)
    print(
        f"\nchaos, 2 workers: {cycles} SIGKILLs, {takeovers} takeovers of all partitions by the survivor and "
        f"as many rebalances back, over {events:,} events; exact totals: {runs:,} runs, {quality:,} quality events"
    )
