"""docker-compose.yml and the Dockerfile, checked against the code (no Docker engine runs in CI)."""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import click
import yaml
from click.testing import CliRunner

from devstack.grafana import (
    ALERT_RULES,
    ALERTS,
    CLICKHOUSE,
    CLICKHOUSE_PLUGIN_VERSION,
    COLLECTOR_JOB,
    DASHBOARDS,
    DATABASE,
    OPERATOR_PANELS,
    PROMETHEUS,
    SEVERITY_COLOURS,
    WORKER_JOB,
    comparison,
    dashboards,
    render,
)
from pipeline.cli import main as cli
from pipeline.config import DEV_HASH_SECRETS, Settings
from pipeline.panels import PANELS

ROOT = Path(__file__).parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ONE_SHOT = {"init", "producer"}  # jobs that exit: their exit status is their health


def env(service: str) -> dict[str, str]:
    return {key: str(value) for key, value in SERVICES[service]["environment"].items()}


def test_the_dev_cluster_has_kafka_clickhouse_init_worker_and_an_optional_producer():
    assert set(SERVICES) == {
        "kafka",
        "clickhouse",
        "init",
        "worker",
        "collector",
        "producer",
        "prometheus",
        "alertmanager",
        "grafana",
    }
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


def test_kafka_and_clickhouse_keep_their_data_in_named_volumes_with_one_lifetime():
    """The ledger in ClickHouse describes the broker's log: a broker that forgot its log while ClickHouse kept
    its ledger would make every worker meet a new log (README: Guarantees)."""
    kafka = env("kafka")
    assert SERVICES["kafka"]["volumes"] == [f"kafka-data:{kafka['KAFKA_LOG_DIRS']}"]
    assert SERVICES["clickhouse"]["volumes"] == ["clickhouse-data:/var/lib/clickhouse"]
    assert {"kafka-data", "clickhouse-data"} <= set(COMPOSE["volumes"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", kafka["CLUSTER_ID"])  # recorded in the volume: fixed, not generated


def test_every_image_is_pinned_to_a_digest_or_an_exact_tag_with_the_reason_stated():
    """No registry could be reached where this was written, so the digests are not there; each image line
    says why (README: docker-compose)."""
    lines = {
        line.split("image:")[1].split("#")[0].strip(): line
        for line in COMPOSE_TEXT.splitlines()
        if line.strip().startswith("image:")
    }
    assert set(lines) == {service["image"] for service in SERVICES.values()}
    for image, line in lines.items():
        if "@sha256:" in image:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), image
        else:
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+(\.\d+)?|kern-telemetry:dev", image), image
            assert "no digest" in line, line


def test_every_long_running_service_has_a_healthcheck_and_one_shot_jobs_are_the_exception():
    for name, service in SERVICES.items():
        if name in ONE_SHOT:
            assert "healthcheck" not in service and service.get("restart", "no") == "no", name
            continue
        check = service["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and {"interval", "timeout", "retries"} <= set(check), name
    for name, path in (("prometheus", "/-/ready"), ("alertmanager", "/-/ready"), ("grafana", "/api/health")):
        test = SERVICES[name]["healthcheck"]["test"]
        port = SERVICES[name]["ports"][0].split(":")[-1]
        assert test == ["CMD", "wget", "-q", "--spider", f"http://127.0.0.1:{port}{path}"], name
    # the worker's and the collector's: the same liveness script (tests/test_operators.py runs it)
    assert (
        SERVICES["worker"]["healthcheck"]["test"][:3]
        == SERVICES["collector"]["healthcheck"]["test"][:3]
        == ["CMD", "python", "-c"]
    )
    assert SERVICES["worker"]["healthcheck"]["test"][3] == SERVICES["collector"]["healthcheck"]["test"][3]


def test_the_compose_hash_secret_is_a_published_default_the_worker_refuses_without_kern_dev():
    worker = env("worker")
    default = re.fullmatch(r"\$\{KERN_HASH_SECRET:-(.+)\}", worker["KERN_HASH_SECRET"])[1]
    assert default in DEV_HASH_SECRETS and worker["KERN_DEV"] == "1"
    assert Settings(hash_secret=default, dev=True, _env_file=None).hash_secret_problem() is None
    assert "development default" in Settings(hash_secret=default, _env_file=None).hash_secret_problem()
    assert "fewer than 16" in Settings(hash_secret="too-short", _env_file=None).hash_secret_problem()
    assert Settings(hash_secret="a-random-secret-of-32-characters", _env_file=None).hash_secret_problem() is None
    for variables, problem in (
        ({"KERN_HASH_SECRET": default}, "development default"),
        ({"KERN_HASH_SECRET": "short"}, "fewer than 16"),
        ({}, "is not set"),
    ):
        refused = CliRunner().invoke(cli, ["worker"], env={"KERN_HASH_SECRET": None, "KERN_DEV": None, **variables})
        assert refused.exit_code == 2 and problem in refused.output, refused.output  # before anything starts


def test_init_waits_for_healthy_services_and_workers_wait_for_init():
    assert SERVICES["init"]["command"] == ["kern-telemetry", "init"]
    assert SERVICES["init"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "clickhouse": {"condition": "service_healthy"},
    }
    assert SERVICES["worker"]["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    assert "healthcheck" in SERVICES["kafka"] and "healthcheck" in SERVICES["clickhouse"]


def test_the_worker_scales_it_has_no_fixed_name_and_publishes_no_port():
    worker = SERVICES["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"] == ["kern-telemetry", "worker"]
    assert "6066" in worker["healthcheck"]["test"][-1]


def test_the_collector_publishes_its_port_on_loopback_and_needs_no_clickhouse_credential():
    from collector.settings import CollectorSettings

    collector, service = env("collector"), SERVICES["collector"]
    fields = set(Settings.model_fields) | {f"collector_{name}" for name in CollectorSettings.model_fields}
    assert all(name.removeprefix("KERN_").lower() in fields for name in collector)
    assert all(collector[name] == env("worker")[name] for name in ("KERN_BOOTSTRAP_SERVERS", "KERN_TOPIC"))
    assert not [name for name in collector if "CLICKHOUSE" in name or "SECRET" in name]
    port = collector["KERN_COLLECTOR_PORT"]
    assert collector["KERN_COLLECTOR_HOST"] == "0.0.0.0" and service["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f"{port}/health" in service["healthcheck"]["test"][-1]
    assert service["depends_on"] == {"init": {"condition": "service_completed_successfully"}}


def test_commands_used_by_compose_and_the_dockerfile_exist():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kern-telemetry"] == "pipeline.cli:main"
    for service in ("init", "worker", "collector", "producer"):
        program, command, *_ = SERVICES[service]["command"]
        assert program == "kern-telemetry" and cli.get_command(click.Context(cli), command) is not None
    assert 'CMD ["kern-telemetry", "worker"]' in DOCKERFILE
    for package in ("pipeline/", "agents/", "tables/", "devstack/", "collector/", "sdk/"):
        assert f"COPY {package} {package}" in DOCKERFILE
    assert "USER kern" in DOCKERFILE


def test_the_image_builds_the_native_modules_where_a_compiler_is_and_ships_no_compiler():
    """pyproject.toml's extension modules need a C compiler; the image that runs gets the wheels only."""
    modules = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["ext-modules"]
    assert [module["name"] for module in modules] == ["pipeline._fold", "pipeline._crc"]
    build, run = DOCKERFILE.split("\n\nFROM ")  # the stages
    assert "install --yes --no-install-recommends gcc libc6-dev" in build and "pip wheel" in build
    assert "gcc" not in run and "COPY --from=wheels /wheels /wheels" in run and "--no-index" in run


# --- Prometheus and Grafana -------------------------------------------------------------------------------
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def mounts(service: str) -> dict[str, Path]:
    """Container path -> the repository path a service mounts there."""
    return {
        target: (ROOT / source).resolve()
        for source, target, *_ in (volume.split(":") for volume in SERVICES[service]["volumes"])
        if source.startswith("./")
    }


def test_prometheus_scrapes_every_worker_and_collector_it_finds_by_dns_on_the_service_names():
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", SERVICES["prometheus"]["image"])  # pinned
    assert mounts("prometheus") == {
        "/etc/prometheus/prometheus.yml": PROMETHEUS_YML,
        "/etc/prometheus/alerts.yml": ALERT_RULES,
    }
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    assert list(jobs) == [WORKER_JOB, COLLECTOR_JOB]
    worker_port = int(env("worker").get("KERN_WEB_PORT", Settings.model_fields["web_port"].default))
    assert str(worker_port) in SERVICES["worker"]["expose"] and env("worker")["KERN_WEB_HOST"] == "0.0.0.0"
    assert env("collector")["KERN_COLLECTOR_HOST"] == "0.0.0.0"
    for name, service, port in (
        (WORKER_JOB, "worker", worker_port),
        (COLLECTOR_JOB, "collector", int(env("collector")["KERN_COLLECTOR_PORT"])),
    ):
        assert jobs[name]["metrics_path"] == "/metrics"
        (discovery,) = jobs[name]["dns_sd_configs"]
        assert discovery["names"] == [service] and discovery["type"] == "A"  # every container of the service
        assert discovery["port"] == port, name


def test_prometheus_evaluates_the_alerts_and_sends_them_to_the_compose_alertmanager():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["rule_files"] == [ALERT_RULES.name]  # next to prometheus.yml, in the repository and the container
    ((target,),) = [
        static["targets"] for manager in config["alerting"]["alertmanagers"] for static in manager["static_configs"]
    ]
    host, port = target.split(":")
    assert host == "alertmanager" and SERVICES["alertmanager"]["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert re.fullmatch(r"prom/alertmanager:v\d+\.\d+\.\d+", SERVICES["alertmanager"]["image"])
    assert mounts("alertmanager") == {
        "/etc/alertmanager/alertmanager.yml": (ROOT / "deploy" / "alertmanager" / "alertmanager.yml").resolve()
    }
    assert SERVICES["prometheus"]["depends_on"] == {"alertmanager": {"condition": "service_healthy"}}


def test_the_operators_stat_panels_are_coloured_where_their_alerts_fire():
    """Each threshold has one home, alerts.yml: a stat of an alert `<measure> > <threshold>` shows that
    measure and turns its severity's colour just above that threshold; every stat names its alert."""

    def measured(alert: str) -> tuple[str, float] | None:
        try:
            return comparison(alert)
        except ValueError:  # a state: up, degraded, poisoned
            return None

    stats = {}
    for panel in OPERATOR_PANELS:
        if panel.type == "stat":
            ((name, severity),) = re.findall(r"Alert (Kern\w+) \((page|ticket)\)", panel.description)
            stats[name] = panel
            assert ALERTS[name]["labels"]["severity"] == severity
            assert {colour for _, colour in panel.thresholds} == {"green", SEVERITY_COLOURS[severity]}
    assert {name for name in ALERTS if measured(name)} <= set(stats)  # every alert with a threshold has its stat
    for name, panel in stats.items():
        if measure := measured(name):
            expr, threshold = measure
            assert [query.expr for query in panel.queries] == [expr]
            colour = SEVERITY_COLOURS[ALERTS[name]["labels"]["severity"]]
            assert panel.thresholds == ((None, "green"), (math.nextafter(threshold, math.inf), colour))


def test_grafana_is_the_official_image_with_the_pinned_clickhouse_plugin_and_files_from_the_repository():
    grafana = SERVICES["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"])
    assert env("grafana")["GF_PLUGINS_PREINSTALL_SYNC"] == f"grafana-clickhouse-datasource@{CLICKHOUSE_PLUGIN_VERSION}"
    assert mounts("grafana") == {"/etc/grafana/provisioning": PROVISIONING, "/etc/grafana/dashboards": DASHBOARDS}
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "kern.yaml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/grafana/dashboards"
    home = Path(env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == Path("/etc/grafana/dashboards") and (DASHBOARDS / home.name).is_file()
    assert grafana["depends_on"] == {
        "clickhouse": {"condition": "service_healthy"},
        "prometheus": {"condition": "service_healthy"},
    }


def test_grafana_datasources_reach_the_compose_clickhouse_and_prometheus():
    datasources = {
        source["uid"]: source
        for source in yaml.safe_load((PROVISIONING / "datasources" / "kern.yaml").read_text())["datasources"]
    }
    assert set(datasources) == {CLICKHOUSE["uid"], PROMETHEUS["uid"]}
    clickhouse, server = datasources[CLICKHOUSE["uid"]], env("clickhouse")
    dsn = urlsplit(env("worker")["KERN_CLICKHOUSE_DSN"])
    assert clickhouse["type"] == CLICKHOUSE["type"]
    assert {
        key: clickhouse["jsonData"][key] for key in ("host", "port", "protocol", "username", "defaultDatabase")
    } == {
        "host": dsn.hostname,
        "port": dsn.port,
        "protocol": dsn.scheme,
        "username": server["CLICKHOUSE_USER"],
        "defaultDatabase": server["CLICKHOUSE_DB"],
    }
    assert clickhouse["secureJsonData"]["password"] == "$KERN_CLICKHOUSE_PASSWORD"  # from Grafana's environment
    assert env("grafana")["KERN_CLICKHOUSE_PASSWORD"] == server["CLICKHOUSE_PASSWORD"]
    prometheus = datasources[PROMETHEUS["uid"]]
    assert prometheus["type"] == PROMETHEUS["type"] and urlsplit(prometheus["url"]).hostname == "prometheus"
    assert (
        prometheus["jsonData"]["timeInterval"]
        == yaml.safe_load(PROMETHEUS_YML.read_text())["global"]["scrape_interval"]
    )


def test_the_provisioned_dashboards_are_generated_and_their_sql_is_the_tested_panels():
    """`make dashboards` wrote them: every ClickHouse query is the Grafana translation of a panel of
    pipeline/panels.py, the SQL tests/test_panels.py runs; no dashboard holds SQL of its own."""
    generated = dashboards()
    assert sorted(path.name for path in DASHBOARDS.glob("*.json")) == sorted(generated)
    for name, dashboard in generated.items():
        assert (DASHBOARDS / name).read_text() == render(dashboard), f"{name} is stale: run make dashboards"
    analysts, operators = (
        json.loads((DASHBOARDS / name).read_text()) for name in ("kern-analysts.json", "kern-operators.json")
    )
    targets = [target for panel in analysts["panels"] for target in panel["targets"]]
    assert [target["rawSql"] for target in targets] == [panel.grafana() for panel in PANELS]
    assert all(target["datasource"] == CLICKHOUSE for target in targets)
    assert all(
        target["datasource"] == PROMETHEUS and target["expr"]
        for panel in operators["panels"]
        for target in panel["targets"]
    )
    database, *filters = analysts["templating"]["list"]
    assert [variable["name"] for variable in filters] == ["kind", "provider", "model", "sdk", "flag", "by"]
    assert database["name"] == "database" and database["type"] == "constant" and database["query"] == DATABASE
    assert DATABASE == env("clickhouse")["CLICKHOUSE_DB"] == env("worker")["KERN_CLICKHOUSE_DATABASE"]
    for dashboard in (analysts, operators):
        ids = [panel["id"] for panel in dashboard["panels"]]
        titles = [panel["title"] for panel in dashboard["panels"]]
        assert len(set(ids)) == len(ids) and len(set(titles)) == len(titles)
        assert all(panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24 for panel in dashboard["panels"])
