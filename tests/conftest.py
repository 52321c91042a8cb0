"""Fixtures on real services: the Tansu broker (one per session, on a free loopback port) and, per test,
a `Stack` with its own topics, consumer group and chDB path, whose workers are real subprocesses."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import clickhouse_connect
import pytest
from kafka import KafkaConsumer
from kafka_faults import produce_corrupt_batch

from devstack.broker import EmbeddedBroker
from devstack.chdb_server import ChdbServerProcess
from devstack.loadgen import EventGenerator
from devstack.processes import WorkerProcess, free_port
from pipeline import grains
from pipeline.admission import Keys
from pipeline.clickhouse import connect
from pipeline.config import Settings
from pipeline.dimensions import NAMES as DIMENSIONS
from pipeline.kafka import client_options, create_topics, produce
from pipeline.projector import EventProjector
from pipeline.rollup import PartitionRollup
from pipeline.sink import PATTERN_WRITES
from tables.ddl import SchemaOptions


class Record(NamedTuple):
    """The fields of a consumer record the worker reads."""

    offset: int
    timestamp: int
    value: bytes | None


def reference_rollup(settings: Settings, values: list[bytes], record_ms: int) -> PartitionRollup:
    """`values` folded offline as one partition by the worker's own projector: the totals a pipeline
    that counts every event once must show, whatever crashed on the way."""
    rollup = PartitionRollup("reference", 0, 0)
    rollup.add(
        [Record(i, record_ms, value) for i, value in enumerate(values)],
        EventProjector.from_settings(settings, Keys(b"reference")),
    )
    return rollup


def stored_runs(client, table: str) -> Counter:
    """{(window_start, dims): runs} summed over the partial rows of a runs table."""
    rows = client.query(
        f"SELECT toUnixTimestamp(window_start), {', '.join(DIMENSIONS)}, sum(runs) "
        f"FROM kern_telemetry.{table} GROUP BY ALL"
    ).result_rows
    return Counter({(row[0], (*row[1:-2], tuple(row[-2]))): row[-1] for row in rows})


def roll(runs: Counter, width: int) -> Counter:
    """Minute counts rolled up into windows of `width` seconds (hour: 3600, day: 86400)."""
    rolled = Counter()
    for (window, *rest), n in runs.items():
        rolled[(window - window % width, *rest)] += n
    return rolled


def stored_patterns(client, kind: str, grain: str = "minute") -> Counter:
    """{(window_start, sdk_version, *pattern): events} summed over the rows of the table of `kind`'s patterns
    (launches, team runs, workflow runs: `pipeline.sink.PATTERN_WRITES`) at `grain` (minute, hourly, daily)."""
    table, columns = next((table, columns) for k, table, columns in PATTERN_WRITES if k == kind)
    rows = client.query(
        f"SELECT toUnixTimestamp(window_start), {', '.join(columns[1:-1])}, sum({columns[-1]}) "
        f"FROM kern_telemetry.{table.name.removesuffix('minute')}{grain} GROUP BY ALL"
    ).result_rows
    return Counter({tuple(tuple(v) if type(v) is list else v for v in row[:-1]): row[-1] for row in rows})


def stored_drops(client) -> Counter:
    """{(window_start, sdk_version, reason): events} the clients reported dropped."""
    rows = client.query(
        "SELECT toUnixTimestamp(window_start), sdk_version, reason, sum(events) "
        "FROM kern_telemetry.client_drops_minute GROUP BY ALL"
    ).result_rows
    return Counter({tuple(row[:3]): row[3] for row in rows})


def stored_quality(client) -> Counter:
    rows = client.query("SELECT kind, reason, sum(events) FROM kern_telemetry.quality_minute GROUP BY ALL")
    return Counter({(kind, reason): n for kind, reason, n in rows.result_rows})


def expected_quality(rollup: PartitionRollup) -> Counter:
    """{(kind, reason): events} over every window of the rollup's quality counts."""
    quality = Counter()
    for (_, kind, reason), n in rollup.quality.items():
        quality[(kind, str(reason))] += n
    return quality


class TcpProxy:
    """A TCP proxy to a local port. `cut()` drops every connection and refuses new ones (a lost broker);
    `hold()` keeps every connection open and forwards nothing more (a broker that never answers); with
    `tls_certfile` it terminates TLS, so clients speak SSL to a broker that does not."""

    def __init__(self, target_port: int, tls_certfile: str | None = None):
        self.target_port = target_port
        self.tls = None
        if tls_certfile:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(tls_certfile)
        self.port = free_port()
        self.connections: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.lock = threading.Lock()
        self.forwarding = threading.Event()
        self.forwarding.set()

    def start(self) -> TcpProxy:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                if self.tls is not None:
                    client = self.tls.wrap_socket(client, server_side=True)
            except OSError:  # closed by cut(), or a failed TLS handshake
                if listener.fileno() == -1:
                    return
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.forwarding.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def hold(self) -> None:
        self.forwarding.clear()

    def cut(self) -> None:
        with contextlib.suppress(OSError):  # wakes the blocked accept(); close() alone would not free the port
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self.connections.clear()


@pytest.fixture(scope="session", autouse=True)
def _client_files_in_a_temporary_home(tmp_path_factory) -> Iterator[None]:
    """The SDK client's files (notice marker, installation secret, unreported drops) go to a temporary
    directory, never to the home of whoever runs the tests; a test that wants its own sets its own."""
    home = tmp_path_factory.mktemp("client-home")
    saved = {name: os.environ.get(name) for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME")}
    os.environ.update(XDG_CONFIG_HOME=str(home / "config"), XDG_STATE_HOME=str(home / "state"))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def certificate(tmp_path) -> str:
    """A self-signed certificate for 127.0.0.1, with its key, in one PEM file."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    combined = tmp_path / "server.pem"
    combined.write_text(cert.read_text() + key.read_text())
    return str(combined)


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


class Stack:
    """With `shared_clickhouse`, ClickHouse is a chDB behind ClickHouse's HTTP interface in its own process
    (`devstack/chdb_server.py`), so several workers can write to it, over the production code path."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        workdir: Path,
        partitions: int,
        shared_clickhouse: bool = False,
        insert_delay_s: float = 0.0,
        **overrides: str,
    ):
        self.workdir = workdir
        self.server = None
        if shared_clickhouse:
            workdir.mkdir(parents=True, exist_ok=True)
            self.server = ChdbServerProcess(
                str(workdir / "chdb"), log_path=str(workdir / "chdb-server.log"), insert_delay_s=insert_delay_s
            ).start()
            overrides.setdefault("KERN_CLICKHOUSE_DSN", self.server.url)
        name = f"t{uuid.uuid4().hex[:8]}"
        self.env = {
            "KERN_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "KERN_TOPIC": f"kern.{name}",
            "KERN_TOPIC_PARTITIONS": str(partitions),
            "KERN_CONSUMER_GROUP": f"rollup-{name}",
            "KERN_CLICKHOUSE_DSN": f"chdb://{workdir / 'chdb'}",
            "KERN_FLUSH_INTERVAL_SECONDS": "0.3",
            "KERN_HASH_SECRET": f"test-secret-{name}",
            "KERN_ADMISSION_REFRESH_SECONDS": "1",
            "KERN_GRAIN_BUILD_SECONDS": "0.5",
            # Kafka's shortest by default: a worker joins in 3 s (Tansu holds a new group's first join for half
            # the session) and a killed one's partitions move in 6, not 5 and 10
            "KERN_KAFKA_SESSION_TIMEOUT_SECONDS": "6",
            "KERN_LOG_LEVEL": os.environ.get("KERN_LOG_LEVEL", "info"),
            **overrides,
        }
        self.settings = Settings(**{k.removeprefix("KERN_").lower(): v for k, v in self.env.items()})
        create_topics(self.settings)
        self.workers: list[WorkerProcess] = []
        self.produced: dict[int, int] = {}  # partition -> end offset of what this stack produced

    @property
    def database(self) -> str:
        return self.settings.clickhouse_database

    def worker(self, name: str | None = None, **env: str) -> WorkerProcess:
        process = WorkerProcess({**self.env, **env}, self.workdir, name=name or f"worker{len(self.workers)}")
        self.workers.append(process)
        return process.start()

    def produce(
        self,
        values: list[bytes | None],
        timestamps_ms: list[int] | None = None,
        partition: int | None = None,
        compression: str | None = None,
    ) -> dict[int, int]:
        """Send records with kafka-python (`pipeline.kafka.produce`); returns the end offset of every
        partition this stack produced to so far."""
        return self._delivered(
            produce(self.settings, values, timestamps_ms=timestamps_ms, partition=partition, compression=compression)
        )

    def produce_with_librdkafka(
        self, values: list[bytes], timestamp_ms: int, compression: str = "none", partition: int | None = None
    ) -> dict[int, int]:
        """Send records with librdkafka (confluent-kafka), the client under most non-Java SDKs."""
        import confluent_kafka

        producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                "compression.type": compression,
                "linger.ms": 5,
                "enable.idempotence": True,
                "log_level": 3,
            }
        )
        delivered = []
        for value in values:
            producer.produce(
                self.settings.topic,
                value,
                timestamp=timestamp_ms,
                on_delivery=lambda error, message: delivered.append((error, message)),
                **({} if partition is None else {"partition": partition}),
            )
            producer.poll(0)
        assert producer.flush(30) == 0
        assert all(error is None for error, _ in delivered) and len(delivered) == len(values)
        return self._delivered({message.partition(): message.offset() + 1 for _, message in delivered})

    def produce_corrupt_batch(self, values: list[bytes], timestamp_ms: int, partition: int) -> int:
        """One record batch whose CRC does not match its bytes (`kafka_faults.produce_corrupt_batch`);
        returns its first offset."""
        settings = self.settings
        first = produce_corrupt_batch(settings.bootstrap_servers, settings.topic, partition, values, timestamp_ms)
        self._delivered({partition: first + len(values)})
        return first

    def _delivered(self, ends: dict[int, int]) -> dict[int, int]:
        for partition, end in ends.items():
            self.produced[partition] = max(self.produced.get(partition, 0), end)
        return dict(self.produced)

    def read_topic(self, topic: str, count: int, timeout_s: float = 20.0) -> list:
        """The first `count` records of a topic, in (partition, offset) order; fails on fewer or more."""
        consumer = KafkaConsumer(
            topic,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
            **client_options(self.settings),
        )
        records, deadline = [], time.monotonic() + timeout_s
        try:
            while len(records) < count and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    records.extend(batch)
            for batch in consumer.poll(timeout_ms=1000).values():  # anything beyond `count` is an error
                records.extend(batch)
        finally:
            consumer.close()
        assert len(records) == count, f"{topic}: {len(records)} records, expected {count}: " + str(
            sorted((r.partition, r.offset, r.key) for r in records)
        )
        return sorted(records, key=lambda r: (r.partition, r.offset))

    def wait_built(self, timeout: float = 60.0) -> None:
        """Until the running worker's builder has brought every hourly and daily grain level with the grain
        it is built from (`pipeline/grains.py`); with the shared server only."""
        deadline = time.monotonic() + timeout
        with self.clickhouse() as client:
            while grains.check_all(client, SchemaOptions.from_settings(self.settings), 0, time.time(), True):
                assert time.monotonic() < deadline, "the coarse grains were not built"
                time.sleep(0.2)

    def command(self, *arguments: str) -> subprocess.CompletedProcess:
        """`kern-telemetry <arguments>` on this stack, as an operator runs it (wide output, its exit status)."""
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *arguments],
            env={**os.environ, **self.env, "COLUMNS": "200"},
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )

    @contextlib.contextmanager
    def clickhouse(self) -> Iterator[clickhouse_connect.driver.Client]:
        """A client on the stack's ClickHouse. With embedded chDB only while no worker holds the path
        (one process per path); with the shared server at any time."""
        client = connect(self.settings)
        try:
            yield client
        finally:
            client.close()

    def stop_all(self) -> None:
        for process in self.workers:
            process.kill()
        if self.server is not None:
            self.server.stop()


@pytest.fixture
def stack_factory(broker, tmp_path):
    stacks: list[Stack] = []

    def make(
        partitions: int = 2, shared_clickhouse: bool = False, insert_delay_s: float = 0.0, **overrides: str
    ) -> Stack:
        stack = Stack(
            broker, tmp_path / f"stack{len(stacks)}", partitions, shared_clickhouse, insert_delay_s, **overrides
        )
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop_all()


class History(NamedTuple):
    stack: Stack
    worker: WorkerProcess
    values: list[bytes]  # what was produced, for reference totals


@pytest.fixture(scope="module")
def history(broker, tmp_path_factory) -> Iterator[History]:
    """A stack whose shared ClickHouse holds 30 minutes of load-generator events (their record times spread
    over the last 30 minutes up to now), counted by a real worker that keeps running for more."""
    stack = Stack(broker, tmp_path_factory.mktemp("history"), partitions=2, shared_clickhouse=True)
    try:
        worker = stack.worker()
        values = list(EventGenerator(seed=13, timestamp_share=0).events(30_000))
        now_ms, span_ms = int(time.time() * 1000), 30 * 60_000
        worker.wait_flushed(
            stack.produce(
                values, timestamps_ms=[now_ms - span_ms + span_ms * (i + 1) // len(values) for i in range(len(values))]
            )
        )
        stack.wait_built()
        yield History(stack, worker, values)
    finally:
        stack.stop_all()


def pytest_addoption(parser):
    parser.addoption(
        "--chaos-long",
        action="store_true",
        help="exactly-once suite at full length: >= 20 kills over >= 500,000 events (make chaos)",
    )


@pytest.fixture
def chaos_long(request) -> bool:
    return request.config.getoption("--chaos-long")
