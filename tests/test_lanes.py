"""A flush's inserts on several ClickHouse clients at once (`agents.clickhouse.Lanes`): the rollups of a batch
(distinct partitions) write at the same time, and the protocol's order, tokens and landings stay those of
one client writing alone; and the threads' memory: the worker keeps two malloc arenas."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import clickhouse_connect
import pytest
from conftest import Record
from test_chdb_server import server  # noqa: F401 - the ClickHouse HTTP front over chDB, a fixture
from test_sink import RecordingClient

from agents import checkpoint
from agents.checkpoint import write
from agents.clickhouse import Lanes
from devstack.loadgen import EventGenerator
from pipeline import grains
from pipeline.admission import Keys
from pipeline.ledger import ACCOUNTED
from pipeline.projector import EventProjector
from pipeline.rollup import PartitionRollup
from pipeline.sink import ClickHouseSink
from tables.ddl import SchemaOptions
from tables.migrate import migrate

KEYS = Keys(b"secret")
PROJECTOR = EventProjector(60, 3600, 300, 65536, keys=KEYS)


def batch(partitions: int = 4, events: int = 200) -> list[PartitionRollup]:
    """A rollup of `events` load-generator events (every kind, some invalid) per partition."""
    now_ms = int(time.time() * 1000)
    generator = EventGenerator(seed=3, invalid_share=0.05)
    rollups = []
    for partition in range(partitions):
        rollup = PartitionRollup("events", partition, 0)
        rollup.add([Record(i, now_ms, value) for i, value in enumerate(generator.events(events))], PROJECTOR)
        rollups.append(rollup)
    return rollups


class SlowClient(RecordingClient):
    """Records every insert in a log shared by the lanes, takes 20 ms over it, and fails the inserts whose
    token contains `failing`."""

    def __init__(self, log: list, busy: dict, failing: str | None = None):
        super().__init__()
        self.log, self.busy, self.failing = log, busy, failing
        self.lock = threading.Lock()

    def raw_insert(self, table, columns, body, settings, fmt):
        with self.lock:  # one call at a time per client, as a real one needs (a second would wait here)
            self.busy["now"] += 1
            self.busy["most"] = max(self.busy["most"], self.busy["now"])
            try:
                time.sleep(0.02)
                token = settings["insert_deduplication_token"]
                if self.failing and self.failing in token:
                    raise ConnectionError(f"{token}: too many parts")
                self.log.append((table.split(".")[-1].strip("`"), token))
                self.busy.setdefault("threads", set()).add(threading.get_ident())
            finally:
                self.busy["now"] -= 1


def lanes_over(clients: list[SlowClient]) -> tuple[ClickHouseSink, Lanes]:
    sinks = [ClickHouseSink(client, SchemaOptions()) for client in clients]
    return sinks[0], Lanes(sinks)


def test_two_lanes_write_a_batch_at_once_with_the_tokens_and_the_order_of_steps_of_one_client():
    alone: list = []
    write(ClickHouseSink(SlowClient(alone, {"now": 0, "most": 0}), SchemaOptions()), batch(), KEYS, [200] * 4, {})
    shared, busy = [], {"now": 0, "most": 0}
    sink, lanes = lanes_over([SlowClient(shared, busy), SlowClient(shared, busy)])
    totals: dict = {}
    write(sink, batch(), KEYS, [200] * 4, totals, lanes)
    lanes.shutdown()
    assert sorted(shared) == sorted(alone)  # the same inserts, the same tokens (landings and sketches too)
    assert busy["most"] == 2  # two at once, never more
    landings = [index for index, (table, _) in enumerate(shared) if table == "flush_landings"]
    assert landings == [len(shared) - 1]  # one insert, after every other
    for partition in range(4):  # each rollup's intent before its rows
        own = [table for table, token in shared if token.startswith(f"events/{partition}/0-200/")]
        assert own[0] == "ingest_flushes" and len(own) > 1
    assert totals == {(partition, 0): 200 for partition in range(4)}
    for rollup in batch():  # each rollup's rows under its own range's token
        assert {token for _, token in shared if token.startswith(f"events/{rollup.partition}/0-200/")} == {
            f"events/{rollup.partition}/0-200/{table.name}" for table, _, _ in sink.summing_rows(rollup)
        } | {f"events/{rollup.partition}/0-200/ingest_flushes"}


def test_a_failing_lane_leaves_what_the_others_wrote_landed_and_the_retry_writes_each_table_once():
    shared, busy = [], {"now": 0, "most": 0}
    clients = [SlowClient(shared, busy, failing="events/1/0-200/launches") for _ in range(2)]
    sink, lanes = lanes_over(clients)
    rollups = batch()
    with pytest.raises(ConnectionError, match="events/1/0-200/launches"):
        write(sink, rollups, KEYS, [200] * 4, {}, lanes)
    landings = [token for table, token in shared if table == "flush_landings"]
    assert len(landings) == 1  # what landed before the failure, in every lane, is recorded at once
    rows = {token for table, token in shared if table not in ("ingest_flushes", "flush_landings")}
    assert rows == {
        f"events/{rollup.partition}/0-200/{table}" for rollup in rollups for table in rollup.landed - {"ingest_flushes"}
    }
    # (timing decides which other rollups and sketches started before the failure: whichever did finished)
    for client in clients:
        client.failing = None
    write(sink, rollups, KEYS, [200] * 4, {}, lanes)
    lanes.shutdown()
    summing = [token for table, token in shared if table not in ("ingest_flushes", "flush_landings")]
    expected = {f"events/{r.partition}/0-200/{t.name}" for r in rollups for t, _, _ in sink.summing_rows(r)}
    assert sorted(token for token in summing if not token.startswith("batch/")) == sorted(expected)  # once each
    assert {table for table, _ in shared if table.endswith("_sightings")} == {"session_sightings", "value_sightings"}
    assert shared[-1][0] == "flush_landings"


def test_a_batch_of_one_large_rollup_is_written_on_one_client_its_sketches_after_its_landings(monkeypatch):
    monkeypatch.setattr(checkpoint, "BATCH_MAX_EVENTS", 100)  # a catching-up partition's rollup is larger
    shared, busy = [], {"now": 0, "most": 0}
    sink, lanes = lanes_over([SlowClient(shared, busy), SlowClient(shared, busy)])
    write(sink, batch(partitions=1), KEYS, [200], {}, lanes)
    lanes.shutdown()
    assert busy["most"] == 1 and busy["threads"] == {threading.get_ident()}  # the caller's thread alone
    tables = [table for table, _ in shared]
    landed = tables.index("flush_landings")
    after = tables[landed + 1 :]
    assert "session_sightings" in after and all(table.endswith("_sightings") for table in after) and landed > 2
    assert not any(table.endswith("_sightings") for table in tables[:landed])


def test_two_lanes_over_http_count_every_event_once_in_every_grain_and_a_retried_batch_changes_nothing(server):  # noqa: F811 - the fixture imported above
    clients = [clickhouse_connect.get_client(dsn=server.url) for _ in range(2)]
    migrate(clients[0], SchemaOptions())
    sink, lanes = lanes_over(clients)
    for _ in range(2):  # the same ranges folded and written again, as a replay after a crash does
        write(sink, batch(events=2_000), KEYS, [2_000] * 4, {}, lanes)
    lanes.shutdown()
    expected: dict[str, list] = {}  # table -> [its measure, the rows' sum]
    for rollup in batch(events=2_000):
        for table, columns, rows in sink.summing_rows(rollup):
            expected.setdefault(table.name, [columns[-1], 0])[1] += sum(row[-1] for row in rows)
    assert len(expected) == 6 and expected["runs_minute"][1] > 4_000
    query = clients[0].query
    for table, (measure, count) in expected.items():
        assert query(f"SELECT sum({measure}) FROM kern_telemetry.{table}").result_rows == [(count,)]
    grains.build(clients[0], SchemaOptions(), 3600, time.time())  # what the worker's builder does next
    assert grains.check_all(clients[0], SchemaOptions(), 3600, time.time(), open_periods=True) == []
    assert query(f"SELECT sum({ACCOUNTED}) FROM kern_telemetry.ingest_ledger").result_rows == [(8_000,)]
    for partition in range(4):
        last = sink.last_flush("events", partition)
        assert (last.end_offset, last.pending) == (2_000, ())


#: Seven threads that allocate at once, alive together, in a process that has imported what the worker
#: command has when it calls `run`; then glibc's report of its arenas.
_ARENAS = """
import ctypes, sys, threading
import pipeline.app, pipeline.cli
if sys.argv[1] == "limited":
    pipeline.app.limit_malloc_arenas()
together = threading.Barrier(7)
def allocate():
    kept = [bytes(1000) for _ in range(100)]
    together.wait()
threads = [threading.Thread(target=allocate) for _ in range(6)]
for thread in threads:
    thread.start()
allocate()
ctypes.CDLL(None).malloc_stats()
"""


def test_the_worker_keeps_two_malloc_arenas_however_many_threads_allocate():
    def arenas(mode: str) -> int:
        env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
        done = subprocess.run(
            [sys.executable, "-c", _ARENAS, mode], env=env, capture_output=True, text=True, check=True
        )
        return sum(line.startswith("Arena ") for line in done.stderr.splitlines())

    assert arenas("limited") == 2
    assert arenas("default") == 7  # an arena per thread: the lanes' memory the limit removes
