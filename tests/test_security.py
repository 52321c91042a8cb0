"""Credentials never reach logs, errors or CLI output; the worker's web endpoints listen on loopback."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline.devstack import free_port

pytestmark = pytest.mark.integration

SECRETS = {
    "KERN_CLICKHOUSE_PASSWORD": "PW-SENTINEL-7f3a",
    "KERN_KAFKA_SASL_PASSWORD": "SASL-SENTINEL-91c2",
}


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port`, from /proc/net/tcp (hex, little-endian)."""
    addresses = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            addresses.add(".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return addresses


def test_worker_logs_no_credentials_even_when_clickhouse_fails_at_debug_level(stack_factory):
    dsn_secret = "DSN-SENTINEL-c0de"
    stack = stack_factory(partitions=1)
    worker = stack.worker(KERN_CLICKHOUSE_DSN=f"http://kern:{dsn_secret}@127.0.0.1:{free_port()}",
                          KERN_LOG_LEVEL="debug", **SECRETS)
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
    migrate = subprocess.run([sys.executable, "-m", "pipeline.cli", "migrate"], env=env, capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
    assert migrate.returncode == 0, migrate.stderr
    assert "applied 1 (" in migrate.stdout
    failing = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "query", "SELECT 1"],
        env={**env, "KERN_CLICKHOUSE_DSN": f"http://kern:{dsn_secret}@127.0.0.1:{free_port()}"},
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
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
