"""Settings: every variable documented, secrets never printed, DSNs normalised."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from pipeline.config import Settings, redact_url
from pipeline.kafka import worker_consumer

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme_configuration_reference():
    missing = [f"KERN_{name.upper()}" for name in Settings.model_fields if f"KERN_{name.upper()}" not in README]
    assert missing == []


def test_secrets_are_masked_in_repr_and_dsn(monkeypatch):
    monkeypatch.setenv("KERN_CLICKHOUSE_PASSWORD", "hunter2-ch")
    monkeypatch.setenv("KERN_KAFKA_SASL_PASSWORD", "hunter2-kafka")
    monkeypatch.setenv("KERN_CLICKHOUSE_DSN", "https://kern:hunter2-dsn@ch.example:8443/?secure=1")
    settings = Settings()
    shown = repr(settings) + str(settings) + settings.safe_dsn
    assert "hunter2" not in shown
    assert settings.clickhouse_password.get_secret_value() == "hunter2-ch"
    assert settings.safe_dsn == "https://kern:***@ch.example:8443/?secure=1"


def test_secrets_can_come_from_files(monkeypatch, tmp_path):
    (tmp_path / "KERN_CLICKHOUSE_PASSWORD").write_text("from-a-file")
    monkeypatch.setenv("KERN_SECRETS_DIR", str(tmp_path))
    assert Settings.load().clickhouse_password.get_secret_value() == "from-a-file"


def test_relative_chdb_path_becomes_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert Settings(clickhouse_dsn="chdb://data/ch").clickhouse_dsn == f"chdb://{tmp_path}/data/ch"
    assert Settings(clickhouse_dsn="chdb:///abs/ch").clickhouse_dsn == "chdb:///abs/ch"
    assert Settings(clickhouse_dsn="chdb:///abs/ch").embedded_clickhouse
    assert not Settings(clickhouse_dsn="http://localhost:8123").embedded_clickhouse


def test_redact_url_leaves_urls_without_password_alone():
    assert redact_url("http://localhost:8123") == "http://localhost:8123"
    assert redact_url("http://user@localhost:8123") == "http://user@localhost:8123"
    assert redact_url("http://:pw@localhost") == "http://***@localhost"


def test_defaults_match_the_documented_ones(monkeypatch):
    for name in list(os.environ):
        if name.startswith("KERN_"):
            monkeypatch.delenv(name)
    settings = Settings(_env_file=None)
    assert (
        settings.bootstrap_servers,
        settings.topic,
        settings.dlq_topic,
        settings.window_seconds,
        settings.web_host,
        settings.web_port,
    ) == ("127.0.0.1:9092", "kern.telemetry.events", "kern.telemetry.events.dlq", 60, "127.0.0.1", 6066)


def test_the_workers_session_and_heartbeats_follow_the_setting():
    async def timeouts(seconds: float) -> tuple[int, int]:
        consumer = worker_consumer(Settings(_env_file=None, kafka_session_timeout_seconds=seconds))
        return consumer._session_timeout_ms, consumer._heartbeat_interval_ms

    assert asyncio.run(timeouts(10)) == (10_000, 2_000)
    assert asyncio.run(timeouts(6)) == (6_000, 1_200)


def test_the_worker_logs_at_the_level_asked_and_builds_no_debug_record_above_it(tmp_path):
    """Faust's terminal spinner put the root logger at DEBUG whatever the level asked, so every debug call
    of aiokafka and of the worker built a record (`pipeline.app.worker` leaves the spinner out)."""
    script = (
        "import logging, sys\n"
        "from pipeline.app import create_app, worker\n"
        "from pipeline.config import Settings\n"
        "made = worker(create_app(Settings(_env_file=None, hash_secret='s')), sys.argv[1])\n"
        "made._setup_logging()\n"  # what the worker does as it starts
        "print(logging.root.level, logging.getLogger('aiokafka.consumer.fetcher').isEnabledFor(logging.DEBUG))\n"
    )
    levels = {}
    for asked in ("warn", "info", "debug"):
        ran = subprocess.run(
            [sys.executable, "-c", script, asked], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
        )
        levels[asked] = ran.stdout.split()
    assert levels == {"warn": ["30", "False"], "info": ["20", "False"], "debug": ["10", "True"]}
