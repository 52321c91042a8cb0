"""The operators' side: a real worker's and a real HTTP collector's `/metrics` pass Debian's `promtool check
metrics`, the compose Prometheus configuration passes `promtool check config`, and a real Prometheus
(Debian's, on loopback) scraping that worker and that collector answers every query of the operators'
dashboard (`devstack/grafana.py`) and evaluates every alert (`deploy/prometheus/alerts.yml`) without error,
the client drop share's alone pending on the healthy pair; the compose healthcheck of both tells a live
process, degraded or not, from one that does not answer."""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_collector_support import post, request, run_events, running_collector

from devstack.grafana import (
    ALERT_RULES,
    ALERTS,
    COLLECTOR_JOB,
    COLLECTOR_PANELS,
    OPERATOR_PANELS,
    WORKER_JOB,
    WORKER_PANELS,
)
from devstack.loadgen import EventGenerator
from devstack.processes import free_port, stop, wait_for_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parent.parent
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
RATE_INTERVAL = "30s"  # what Grafana's $__rate_interval stands for here (scrapes every second)
# Series a healthy worker never has: degraded components, poisoned partitions and suppressed values appear
# when they happen.
ONLY_WHEN_UNHEALTHY = ("Degraded components", "Paused partitions", "Values suppressed")
METRIC = r"\b(?:kern|process)_[a-z_]+"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_the_compose_prometheus_configuration_is_valid():
    checked = promtool("check", "config", str(PROMETHEUS_YML))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=5) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False


def exposed_metrics(exposition: str) -> set[str]:
    """The metric names of an exposition `promtool check metrics` has nothing to say about."""
    checked = promtool("check", "metrics", stdin=exposition)
    assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked.stdout + checked.stderr
    return set(re.findall(r"^(?:# (?:HELP|TYPE) )?([a-z_]+)", exposition, re.MULTILINE))


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def test_the_worker_and_collector_expositions_pass_promtool_and_prometheus_answers_every_operator_panel(
    stack_factory, tmp_path
):
    stack = stack_factory(partitions=2)
    worker = stack.worker()
    generator = EventGenerator(seed=21, invalid_share=0.05)
    produced: list[bytes] = []

    def produce_and_flush(count: int) -> None:
        events = list(generator.events(count))
        produced.extend(events)
        worker.wait_flushed(stack.produce(events))

    produce_and_flush(3_000)
    with running_collector(stack.env, tmp_path) as collector:

        def post_accepted_and_refused(tag: str) -> None:
            assert post(collector.url, run_events(tag, 100)).status == 202
            assert request(collector.url, b'{"type": "agent"}', {"Content-Type": "application/json"}).status == 400

        post_accepted_and_refused("before")  # the labelled series exist before Prometheus' first scrape
        exposition: set[str] = set()
        for panels, service in ((WORKER_PANELS, worker), (COLLECTOR_PANELS, collector)):
            exposed = exposed_metrics(service.metrics())
            for panel in panels:  # every metric a panel reads is one its service exposes
                for query_ in panel.queries:
                    assert set(re.findall(METRIC, query_.expr)) <= exposed, query_.expr
            exposition |= exposed
        for name, rule in ALERTS.items():  # and every metric an alert reads
            assert set(re.findall(METRIC, rule["expr"])) <= exposition, name

        config = yaml.safe_load(PROMETHEUS_YML.read_text())
        targets = {WORKER_JOB: worker, COLLECTOR_JOB: collector}
        for job in config["scrape_configs"]:  # the same jobs, pointed at these processes, not the compose names
            job.pop("dns_sd_configs")
            job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[job['job_name']].web_port}"]}]
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(ALERT_RULES)]  # the same rules; no Alertmanager here
        del config["alerting"]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        with open(tmp_path / "prometheus.log", "wb") as log:
            prometheus = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port("127.0.0.1", port, timeout=30)
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while not ready(base):  # the port opens before the storage is: 503 until then
                assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
                time.sleep(0.2)
            while len(query(base, "up == 1")) < len(targets):
                assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
                time.sleep(0.5)
            post_accepted_and_refused("while")  # while Prometheus scrapes
            produce_and_flush(3_000)
            time.sleep(3)
            answers = {
                (panel.title, q.legend): query(base, q.expr.replace("$__rate_interval", RATE_INTERVAL))
                for panel in OPERATOR_PANELS
                for q in panel.queries
            }
            with urllib.request.urlopen(f"{base}/api/v1/rules?type=alert", timeout=10) as response:
                rules = [rule for group in json.load(response)["data"]["groups"] for rule in group["rules"]]
            active = query(base, "ALERTS")
        finally:
            stop(prometheus)
    assert sorted(rule["name"] for rule in rules) == sorted(ALERTS)
    assert all(rule["health"] == "ok" and not rule.get("lastError") for rule in rules), rules
    # The load generator's clients report drops (a report every 500 events, up to 200 drops each: about 20%),
    # so the drop share's alert is pending (for 30 minutes); no other alert is active on the healthy pair.
    assert {(alert["metric"]["alertname"], alert["metric"]["alertstate"]) for alert in active} == {
        ("KernClientDropShare", "pending")
    }
    reported: Counter = Counter()
    for event in produced:
        with contextlib.suppress(ValueError):  # the invalid events are not all JSON
            if (decoded := json.loads(event)) and isinstance(decoded, dict) and decoded["type"] == "client_report":
                reported.update(decoded["data"]["dropped"])
    counted = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(worker.metrics())
        if family.name == "kern_client_drops"
        for sample in family.samples
        if sample.value
    }
    assert reported and counted == reported  # every drop the reports carried, by reason, once
    for (title, legend), result in answers.items():
        if title in ONLY_WHEN_UNHEALTHY:
            assert result == [], (title, result)
            continue
        assert result, f"{title} ({legend}): no series"
        values = [float(series["value"][1]) for series in result]
        assert all(math.isfinite(value) for value in values), (title, legend, values)
    value = {key: float(result[0]["value"][1]) for key, result in answers.items() if len(result) == 1}
    assert value[("Workers up", "up")] == 1 and value[("Workers degraded", "degraded")] == 0
    assert value[("Dead-letter share", "dead letters")] > 0 and value[("Client drop share", "dropped")] > 0.01
    assert value[("Dead-letter and rare-value shares", "rare values")] > 0  # the generator's private model ids
    for title in ("Freshness", "Oldest unflushed record"):
        assert {series["metric"]["partition"] for series in answers[(title, "partition {{partition}}")]} == {"0", "1"}
    assert value[("Poisoned partitions", "poisoned")] == 0
    assert value[("Events per second", "consumed")] > 0 and value[("Events per second", "flushed")] > 0
    assert value[("Flushes", "landed")] > 0 and 0 < value[("Flush latency", "p99")] < 30
    assert {
        series["metric"]["partition"] for series in answers[("Consumer lag per partition", "partition {{partition}}")]
    } == {"0", "1"}
    assert {series["metric"]["reason"] for series in answers[("Dead letters by reason", "{{reason}}")]} >= {"not_json"}
    assert {series["metric"]["instance"] for series in answers[("Worker memory", "{{instance}}")]} == {
        f"127.0.0.1:{worker.web_port}"
    }  # the collector's process_* series are not a worker's

    assert value[("Collectors up", "up")] == 1 and value[("Collectors without Kafka", "without kafka")] == 0
    assert value[("Collector events per second", "accepted")] > 0
    assert 0 < value[("Collector request latency", "p50")] <= value[("Collector request latency", "p99")] < 5
    requests = {
        (series["metric"]["code"], series["metric"]["reason"]): float(series["value"][1])
        for series in answers[("Collector requests per second", "{{code}} {{reason}}")]
    }
    assert set(requests) == {("202", "accepted"), ("400", "bad_framing")} and all(requests.values()), requests
    for title in (
        "Collector pending bytes",
        "Rate limiter clients",
        "Collector connections",
        "Bodies being read",
        "Collector memory",
    ):
        assert [series["metric"]["instance"] for series in answers[(title, "{{instance}}")]] == [
            f"127.0.0.1:{collector.web_port}"
        ], title
    assert value[("Collector pending bytes", "{{instance}} bound")] == 32 << 20
    assert 353 <= value[("Collector connections", "{{instance}} cap")] <= 4096
    assert value[("Collector 5xx share", "5xx")] == 0 and value[("Collector 429 share", "429")] == 0
    assert 0 < value[("Collector connections, share of the cap", "{{instance}}")] < 0.8


def liveness(service: str, url: str) -> int:
    """The exit status of a compose service's healthcheck (`python -c SCRIPT URL`) run against `url`."""
    program, option, script, compose_url = COMPOSE["services"][service]["healthcheck"]["test"][1:]
    assert (program, option) == ("python", "-c") and compose_url.startswith("http://127.0.0.1:")
    return subprocess.run([sys.executable, option, script, url], capture_output=True, timeout=30).returncode


def test_the_compose_healthchecks_pass_while_health_answers_degraded_or_not_and_fail_when_it_does_not(
    stack_factory, tmp_path
):
    """The worker's and the collector's healthcheck test liveness: /health answering 200 or 503 (degraded:
    a restart would not fix it) passes, no answer fails."""
    stack = stack_factory(partitions=1)
    worker = stack.worker()
    worker.wait_flushed(stack.produce(list(EventGenerator(seed=5).events(100))))
    assert liveness("worker", f"{worker.url}/health") == 0
    with running_collector(stack.env, tmp_path / "up") as collector:
        assert liveness("collector", f"{collector.url}/health") == 0
    with running_collector(
        stack.env, tmp_path / "no-broker", ready=False, KERN_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}"
    ) as collector:  # nothing listens there
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"{collector.url}/health", timeout=5)
        assert answer.value.code == 503
        assert liveness("collector", f"{collector.url}/health") == 0
        assert liveness("collector", f"{collector.url}/no-such-path") == 1  # answers, but not /health's answers
    assert liveness("collector", f"http://127.0.0.1:{free_port()}/health") == 1  # nothing answers
