"""Outages on the real services: ClickHouse failing to write (its table directories made immutable, so
every insert fails inside ClickHouse) then recovering; a slow ClickHouse; the broker connection lost and
restored (a TCP proxy in front of Tansu cut for longer than the session); graceful shutdown."""

from __future__ import annotations

import subprocess
import time
from collections import Counter

import pytest
from conftest import Stack, TcpProxy, expected_quality, reference_rollup, stored_quality

from devstack.broker import EmbeddedBroker
from devstack.loadgen import EventGenerator
from devstack.processes import free_port

pytestmark = pytest.mark.integration


def expected_runs(stack, values, record_ms) -> tuple[int, Counter]:
    expected = reference_rollup(stack.settings, values, record_ms)
    return sum(expected.run_counts().values()), expected_quality(expected)


def set_immutable(path, on: bool) -> None:
    """chattr +i on every directory under the chDB store: ClickHouse can read but not create parts."""
    subprocess.run(["chattr", "-R", "+i" if on else "-i", str(path)], check=True)


def test_clickhouse_write_outage_degrades_pauses_and_catches_up_exactly(stack_factory, chaos_long):
    """make test holds the outage a few seconds past the pause; make chaos holds it 60 s."""
    stack = stack_factory(partitions=2, KERN_MAX_PENDING_ROWS="1000")
    record_ms = int(time.time() * 1000) - 10_000
    before = list(EventGenerator(seed=5, profiles=3000).events(4000))
    during = list(EventGenerator(seed=6, profiles=3000).events(20_000))
    worker = stack.worker()
    worker.wait_flushed(stack.produce(before, [record_ms] * len(before)))

    store = stack.workdir / "chdb" / "store"
    set_immutable(store, True)
    try:
        ends = stack.produce(during, [record_ms] * len(during))
        degraded = worker.wait_health(lambda r: "clickhouse" in r["degraded"] and "backpressure" in r["degraded"])
        assert degraded["status"] == "degraded"
        assert "flush failed" in degraded["degraded"]["clickhouse"]
        paused_at = degraded["events_consumed"]
        time.sleep(60 if chaos_long else 3)  # paused: consumption stays put while the bound is reached
        still = worker.health()
        assert still["events_consumed"] == paused_at
        assert still["events_consumed"] < len(before) + len(during)
        assert still["pending_rows"] >= 1000
    finally:
        set_immutable(store, False)

    report = worker.wait_flushed(ends, timeout=120)
    recovered = worker.wait_health(lambda r: r["status"] == "ok")
    assert recovered["degraded"] == {} and report["flush_failures"] > 0
    assert worker.stop() == 0

    total, quality = expected_runs(stack, before + during, record_ms)
    with stack.clickhouse() as client:
        for table in ("runs_minute", "runs_hourly", "runs_daily"):
            assert client.query(f"SELECT sum(runs) FROM kern_telemetry.{table}").result_rows == [(total,)]
        assert stored_quality(client) == quality
    log = worker.log_path.read_text()
    assert "degraded: clickhouse" in log and "recovered: clickhouse" in log


def test_sigterm_while_starting_exits_as_any_stop(stack_factory):
    """A worker stopped while it opens its parts (here each of its migrations' inserts is held 0.3 s) exits 0,
    without a traceback: a deploy or a rollout that stops a starting worker is no crash."""
    stack = stack_factory(partitions=1, shared_clickhouse=True, insert_delay_s=0.3)
    worker = stack.worker()
    deadline = time.monotonic() + 30
    while "[^--RollupAgent]: Starting..." not in worker.log_path.read_text():
        assert time.monotonic() < deadline, worker.log_path.read_text()
        time.sleep(0.01)
    assert worker.stop() == 0
    log = worker.log_path.read_text()
    assert "stopped while starting" in log and "Traceback" not in log


def test_sigterm_flushes_pending_aggregates_before_exit(stack_factory):
    stack = stack_factory(partitions=2, KERN_FLUSH_INTERVAL_SECONDS="30")  # only the shutdown flushes
    record_ms = int(time.time() * 1000) - 10_000
    values = list(EventGenerator(seed=8).events(5000))
    worker = stack.worker()
    worker.wait_health(lambda r: r["status"] == "ok")
    ends = stack.produce(values, [record_ms] * len(values))
    worker.wait_health(lambda r: r["events_consumed"] == len(values))
    assert worker.health()["events_flushed"] == 0
    started = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - started < 25
    total, _ = expected_runs(stack, values, record_ms)
    with stack.clickhouse() as client:
        assert client.query("SELECT sum(runs) FROM kern_telemetry.runs_minute").result_rows == [(total,)]
        flushed = client.query(
            "SELECT partition, max(end_offset) FROM kern_telemetry.ingest_flushes GROUP BY partition ORDER BY partition"
        ).result_rows
        assert dict(flushed) == ends


def test_a_slow_clickhouse_lowers_throughput_not_correctness(stack_factory):
    """Every INSERT held for 1.5 s by the (real) ClickHouse server: flushes grow, nothing is lost or doubled."""
    stack = stack_factory(partitions=2, shared_clickhouse=True, insert_delay_s=1.5)
    record_ms = int(time.time() * 1000) - 10_000
    values = list(EventGenerator(seed=9).events(30_000))
    worker = stack.worker()
    ends = stack.produce(values[:10_000], [record_ms] * 10_000)
    ends = stack.produce(values[10_000:], [record_ms] * 20_000)
    report = worker.wait_flushed(ends, timeout=180)
    assert report["flush_failures"] == 0 and report["status"] == "ok"
    assert report["events_flushed"] == len(values)
    assert worker.stop() == 0
    total, quality = expected_runs(stack, values, record_ms)
    with stack.clickhouse() as client:
        assert client.query("SELECT sum(runs) FROM kern_telemetry.runs_daily").result_rows == [(total,)]
        assert stored_quality(client) == quality


def test_lost_broker_connection_reconnects_and_resumes_from_the_right_offsets(tmp_path):
    broker_port = free_port()
    proxy = TcpProxy(broker_port)
    with EmbeddedBroker(port=broker_port, advertised_port=proxy.port, log_path=tmp_path / "tansu.log") as broker:
        proxy.start()
        stack = Stack(broker, tmp_path / "stack", partitions=2)
        record_ms = int(time.time() * 1000) - 10_000
        before = list(EventGenerator(seed=12).events(10_000))
        after = list(EventGenerator(seed=13).events(10_000))
        try:
            worker = stack.worker()
            worker.wait_flushed(stack.produce(before, [record_ms] * len(before)))
            proxy.cut()
            degraded = worker.wait_health(lambda r: "kafka" in r["degraded"], timeout=30)
            assert degraded["status"] == "degraded"
            time.sleep(stack.settings.kafka_session_timeout_seconds + 5)  # past the session: the group forgets it too
            proxy.start()
            report = worker.wait_flushed(stack.produce(after, [record_ms] * len(after)), timeout=120)
            assert report["assigned_partitions"] == [0, 1]
            assert worker.wait_health(lambda r: r["status"] == "ok")["degraded"] == {}
            assert worker.stop() == 0
        finally:
            stack.stop_all()
        total, quality = expected_runs(stack, before + after, record_ms)
        with stack.clickhouse() as client:
            assert client.query("SELECT sum(runs) FROM kern_telemetry.runs_daily").result_rows == [(total,)]
            assert stored_quality(client) == quality
