"""The shared ClickHouse for development and tests: chDB behind ClickHouse's HTTP interface, used by the
ordinary clickhouse-connect HTTP client (the production code path)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from conftest import Record

from agents.checkpoint import write
from devstack.broker import EmbeddedBroker
from devstack.chdb_server import ChdbServerProcess
from pipeline import grains
from pipeline.admission import Keys
from pipeline.projector import EventProjector
from pipeline.rollup import PartitionRollup
from pipeline.sink import ClickHouseSink
from tables.ddl import SchemaOptions
from tables.migrate import migrate
from tables.migrations import MIGRATIONS


def rollup(start: int, events: int) -> PartitionRollup:
    folded = PartitionRollup("events", 0, start)
    value = b'{"type":"agent","session_id":"s","data":{"model_id":"gpt-5.2","has_tools":true}}'
    now_ms = int(time.time() * 1000)
    folded.add(
        [Record(start + i, now_ms, value) for i in range(events)],
        EventProjector(60, 3600, 300, 65536, keys=Keys(b"secret")),
    )
    return folded


@pytest.fixture
def server(tmp_path):
    with ChdbServerProcess(str(tmp_path / "chdb")) as running:
        yield running


def test_migrations_flushes_and_deduplication_over_http(server):
    client = clickhouse_connect.get_client(dsn=server.url)
    assert [m.version for m in migrate(client, SchemaOptions())] == [m.version for m in MIGRATIONS]
    assert migrate(client, SchemaOptions()) == []
    sink = ClickHouseSink(client, SchemaOptions())
    for flush in (rollup(0, 3), rollup(0, 3), rollup(3, 2)):  # a flush written again lands once, by its tokens
        write(sink, [flush], Keys(b"secret"), [flush.end_offset], {})
    last = sink.last_flush("events", 0)
    assert (last.start_offset, last.end_offset, last.tables, last.pending) == (3, 5, ("runs_minute",), ())
    assert last.fingerprint.offset == 4 and sink.last_flush("events", 1) is None
    grains.build(client, SchemaOptions(), 3600, time.time())
    for table in ("runs_minute", "runs_hourly", "runs_daily"):
        assert client.query(f"SELECT sum(runs) FROM kern_telemetry.{table}").result_rows == [(5,)]
    row = client.query("SELECT window_start, features FROM kern_telemetry.runs_minute LIMIT 1").result_rows[0]
    assert row[1] == ["has_tools"] and row[0].year >= 2026


def test_two_processes_share_one_engine(server):
    script = (
        "import clickhouse_connect, sys; c = clickhouse_connect.get_client(dsn=sys.argv[1]); "
        "c.command('CREATE TABLE IF NOT EXISTS shared (p UInt8, n UInt32) ENGINE = MergeTree ORDER BY p'); "
        "c.insert('shared', [[int(sys.argv[2]), i] for i in range(1000)], column_names=['p', 'n'])"
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, server.url, str(p)]) for p in (1, 2)]
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    client = clickhouse_connect.get_client(dsn=server.url)
    assert client.query("SELECT p, count() FROM shared GROUP BY p ORDER BY p").result_rows == [(1, 1000), (2, 1000)]


def test_engine_errors_reach_the_client(server):
    client = clickhouse_connect.get_client(dsn=server.url)
    with pytest.raises(DatabaseError, match="nowhere"):
        client.query("SELECT x FROM nowhere")


def test_the_embedded_services_restart_on_their_port_right_after_a_crash(tmp_path):
    """A crash leaves the server side of open connections in TIME_WAIT; the port check, like every server,
    ignores those (SO_REUSEADDR), so a supervisor can restart the service at once."""
    server = ChdbServerProcess(str(tmp_path / "chdb")).start()
    client = clickhouse_connect.get_client(dsn=server.url)
    assert client.command("SELECT 1") == 1
    server.kill()
    client.close()
    again = ChdbServerProcess(str(tmp_path / "chdb"), port=server.port).start()
    try:
        assert clickhouse_connect.get_client(dsn=again.url).command("SELECT 2") == 2
    finally:
        again.stop()
    broker = EmbeddedBroker().start()
    with socket.create_connection(("127.0.0.1", broker.port)):
        broker.process.kill()
        broker.process.wait(timeout=10)
    EmbeddedBroker(port=broker.port).start().stop()
