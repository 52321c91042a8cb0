"""Credentials never reach logs, errors or CLI output; the worker's web endpoints listen on loopback; the
worker speaks TLS to Kafka and ClickHouse."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Stack, TcpProxy, reference_rollup

from devstack.broker import EmbeddedBroker
from devstack.chdb_server import ChdbServerProcess
from devstack.loadgen import EventGenerator
from devstack.processes import free_port

pytestmark = pytest.mark.integration

SECRETS = {
    "KERN_CLICKHOUSE_PASSWORD": "PW-SENTINEL-7f3a",
    "KERN_KAFKA_SASL_PASSWORD": "SASL-SENTINEL-91c2",
}


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port`, from /proc/net/tcp (hex, little-endian)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            addresses.add(".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return addresses


def test_worker_logs_no_credentials_even_when_clickhouse_fails_at_debug_level(stack_factory):
    dsn_secret = "DSN-SENTINEL-c0de"
    stack = stack_factory(partitions=1)
    worker = stack.worker(
        KERN_CLICKHOUSE_DSN=f"http://kern:{dsn_secret}@127.0.0.1:{free_port()}", KERN_LOG_LEVEL="debug", **SECRETS
    )
    deadline = time.monotonic() + 30
    while not ((worker.health() or {}).get("degraded") or {}).get("clickhouse"):
        assert time.monotonic() < deadline, "the worker never reported ClickHouse as degraded"
        time.sleep(0.2)
    report = worker.health()
    worker.stop()
    shown = worker.log_path.read_text() + str(report)
    assert "degraded: clickhouse" in shown
    for secret in (dsn_secret, *SECRETS.values()):
        assert secret not in shown


def test_cli_output_and_errors_hide_credentials(tmp_path):
    dsn_secret = "DSN-SENTINEL-beef"
    env = {"KERN_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}", **SECRETS, "PATH": "/usr/bin:/bin"}
    migrate = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert "applied 1 (" in migrate.stdout
    failing = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "query", "SELECT 1"],
        env={**env, "KERN_CLICKHOUSE_DSN": f"http://kern:{dsn_secret}@127.0.0.1:{free_port()}"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert failing.returncode != 0
    for secret in (dsn_secret, *SECRETS.values()):
        assert secret not in migrate.stdout + migrate.stderr + failing.stdout + failing.stderr


def test_web_endpoints_listen_on_loopback_by_default(stack_factory):
    stack = stack_factory(partitions=1)
    worker = stack.worker()
    deadline = time.monotonic() + 30
    while worker.health() is None:
        assert time.monotonic() < deadline, "no /health answer"
        time.sleep(0.2)
    addresses = listening_addresses(worker.web_port)
    worker.stop()
    assert addresses == {"127.0.0.1"}


def test_worker_speaks_tls_to_kafka_and_clickhouse(tmp_path, certificate):
    """Kafka over SSL (a TLS-terminating proxy in front of Tansu, whose own TLS listener this build lacks) and
    ClickHouse over HTTPS, both verified against the configured CA file."""
    broker_port = free_port()
    proxy = TcpProxy(broker_port, tls_certfile=certificate)
    with (
        EmbeddedBroker(port=broker_port, advertised_port=proxy.port, log_path=tmp_path / "tansu.log") as broker,
        ChdbServerProcess(str(tmp_path / "chdb"), certfile=certificate) as clickhouse,
    ):
        proxy.start()
        stack = Stack(
            broker,
            tmp_path / "stack",
            partitions=1,
            KERN_KAFKA_SECURITY_PROTOCOL="SSL",
            KERN_KAFKA_SSL_CAFILE=certificate,
            KERN_CLICKHOUSE_DSN=clickhouse.url,
            KERN_CLICKHOUSE_CA_CERT=certificate,
        )
        assert clickhouse.url.startswith("https://")
        record_ms = int(time.time() * 1000) - 10_000
        values = list(EventGenerator(seed=14).events(5000))
        try:
            worker = stack.worker()
            report = worker.wait_flushed(stack.produce(values, [record_ms] * len(values)))
            assert report["status"] == "ok" and report["dead_letters"] > 0  # the DLQ producer went over SSL too
            assert worker.stop() == 0
        finally:
            stack.stop_all()
        with stack.clickhouse() as client:
            total = sum(reference_rollup(stack.settings, values, record_ms).run_counts().values())
            assert client.query("SELECT sum(runs) FROM kern_telemetry.runs_daily").result_rows == [(total,)]
        plaintext = subprocess.run(  # the proxy only speaks TLS: a plaintext client gets nowhere
            [
                sys.executable,
                "-c",
                "import sys; from kafka import KafkaAdminClient; "
                "KafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=3000, bootstrap_timeout_ms=3000)",
                broker.bootstrap_servers,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert plaintext.returncode != 0
