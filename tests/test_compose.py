"""docker-compose.yml and the Dockerfile, checked against the code (no Docker engine runs in CI)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click
import yaml

from pipeline.cli import main as cli
from pipeline.config import Settings

ROOT = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def env(service: str) -> dict[str, str]:
    return {key: str(value) for key, value in SERVICES[service]["environment"].items()}


def test_the_dev_cluster_has_kafka_clickhouse_init_worker_and_an_optional_producer():
    assert set(SERVICES) == {"kafka", "clickhouse", "init", "worker", "producer"}
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert SERVICES["producer"]["profiles"] == ["load"]


def test_kafka_runs_kraft_on_one_node_with_the_listener_the_workers_use():
    kafka = env("kafka")
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "INTERNAL://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env("worker")["KERN_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # init creates them with the configured partitions


def test_every_kern_variable_is_a_setting_and_credentials_agree_with_the_server():
    fields = set(Settings.model_fields)
    for service in ("init", "worker", "producer"):
        names = [name for name in env(service) if name.startswith("KERN_")]
        assert names and all(name.removeprefix("KERN_").lower() in fields for name in names), service
    worker, server = env("worker"), env("clickhouse")
    assert worker["KERN_CLICKHOUSE_DSN"] == "http://clickhouse:8123"
    assert worker["KERN_CLICKHOUSE_USER"] == server["CLICKHOUSE_USER"]
    assert worker["KERN_CLICKHOUSE_PASSWORD"] == server["CLICKHOUSE_PASSWORD"]
    assert worker["KERN_CLICKHOUSE_DATABASE"] == server["CLICKHOUSE_DB"]


def test_init_waits_for_healthy_services_and_workers_wait_for_init():
    assert SERVICES["init"]["command"] == ["kern-telemetry", "init"]
    assert SERVICES["init"]["depends_on"] == {"kafka": {"condition": "service_healthy"},
                                              "clickhouse": {"condition": "service_healthy"}}
    assert SERVICES["worker"]["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    assert "healthcheck" in SERVICES["kafka"] and "healthcheck" in SERVICES["clickhouse"]


def test_the_worker_scales_it_has_no_fixed_name_and_publishes_no_port():
    worker = SERVICES["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"] == ["kern-telemetry", "worker"]
    assert "6066" in worker["healthcheck"]["test"][-1]


def test_commands_used_by_compose_and_the_dockerfile_exist():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kern-telemetry"] == "pipeline.cli:main"
    for service in ("init", "worker", "producer"):
        program, command, *_ = SERVICES[service]["command"]
        assert program == "kern-telemetry" and cli.get_command(click.Context(cli), command) is not None
    assert 'CMD ["kern-telemetry", "worker"]' in DOCKERFILE
    for package in ("pipeline/", "agents/", "tables/", "devstack/", "sdk/"):
        assert f"COPY {package} {package}" in DOCKERFILE
    assert "USER kern" in DOCKERFILE
