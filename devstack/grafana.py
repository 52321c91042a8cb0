"""The dev cluster's Grafana dashboards, generated: the analysts' panels (`pipeline/panels.py`, in their
Grafana translation, with a variable per filter and one for the breakdown) over ClickHouse, and the
operators' panels over the Prometheus metrics of the workers (`pipeline/metrics.py`) and of the HTTP
collectors (`collector/metrics.py`), scraped by the `kern-worker` and `kern-collector` jobs of
`deploy/prometheus/prometheus.yml`.

`make dashboards` (`python -m devstack.grafana`) writes `deploy/grafana/dashboards/`, which Grafana
provisions from files; a test fails when they differ from what this module generates, so the dashboards
hold no SQL of their own. Operators' queries use Grafana's `$__rate_interval`.

The operators' stat panels are coloured where an alert fires (`deploy/prometheus/alerts.yml`, read here:
each threshold has that one home). An alert whose expression is `<measure> > <threshold>` is a stat of
that measure, coloured from the threshold on (red for a page, orange for a ticket); the other stats count
what their alert watches."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from pipeline.panels import BREAKDOWNS, FILTERS, PANELS, SHARE, STAT, TIME_SERIES, Grafana, Panel
from pipeline.panels import render as render_sql

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "kern-clickhouse"}  # provisioned datasources
PROMETHEUS = {"type": "prometheus", "uid": "kern-prometheus"}
CLICKHOUSE_PLUGIN_VERSION = "4.20.0"  # docker-compose.yml installs this version
DATABASE = "kern_telemetry"  # the `database` constant of the analysts' dashboard: KERN_CLICKHOUSE_DATABASE
WORKER_JOB = "kern-worker"  # the scrape job of the workers
COLLECTOR_JOB = "kern-collector"  # the scrape job of the HTTP collectors
SEVERITY_COLOURS = {"page": "red", "ticket": "orange"}  # the `severity` labels of the alerts


class Query(NamedTuple):
    expr: str
    legend: str


class OperatorPanel(NamedTuple):
    title: str
    description: str
    unit: str  # a Grafana unit
    queries: tuple[Query, ...]
    type: str = "timeseries"  # or "stat", "heatmap"
    thresholds: tuple[tuple[float | None, str], ...] = ()  # (from this value, colour); the first from None


def alert_rules() -> dict[str, dict]:
    """The alerting rules of alerts.yml by name."""
    return {
        rule["alert"]: rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]
    }


ALERTS = alert_rules()


def comparison(alert: str) -> tuple[str, float]:
    """The measure and the threshold of an alert whose expression is `<measure> > <threshold>`."""
    match = re.fullmatch(r"(.+) > ([0-9.]+)", " ".join(ALERTS[alert]["expr"].split()))
    if match is None:
        raise ValueError(f"{alert}: its expression is not `<measure> > <threshold>`")
    return match[1], float(match[2])


def _stat(
    alert: str, title: str, description: str, unit: str, query: Query, threshold: float, below: bool = False
) -> OperatorPanel:
    """A stat coloured as `alert` sees it: from `threshold` on (or `below` it) in its severity's colour."""
    severity = ALERTS[alert]["labels"]["severity"]
    colour = SEVERITY_COLOURS[severity]
    steps = ((None, colour), (threshold, "green")) if below else ((None, "green"), (threshold, colour))
    return OperatorPanel(
        title, f"{description} Alert {alert} ({severity}): docs/runbooks/{alert}.md.", unit, (query,), "stat", steps
    )


def _alert_stat(alert: str, title: str, unit: str, legend: str = "") -> OperatorPanel:
    """The measure of an alert `<measure> > <threshold>`, coloured above its threshold (Grafana colours a
    value from a step's value on: the step is the next float above the threshold)."""
    measure, threshold = comparison(alert)
    return _stat(
        alert,
        title,
        f"Above {threshold:,.10g}: {ALERTS[alert]['annotations']['summary']}.",
        unit,
        Query(measure, legend),
        math.nextafter(threshold, math.inf),
    )


def _rate(metric: str, by: str = "") -> str:
    return f"sum{f' by ({by})' if by else ''} (rate({metric}[$__rate_interval]))"


def _up(job: str) -> Query:
    """The targets of a scrape job that answer."""
    return Query(f'count(up{{job="{job}"}} == 1) or vector(0)', "up")


def _quantiles(histogram: str, *quantiles: float) -> tuple[Query, ...]:
    return tuple(
        Query(f"histogram_quantile({q}, {_rate(f'{histogram}_bucket', 'le')})", f"p{round(q * 100)}") for q in quantiles
    )


def _per_instance(metric: str) -> Query:
    return Query(f"sum by (instance) ({metric})", "{{instance}}")


RARE_VALUES = 'kern_quality_notes_total{reason="rare_value"}'

WORKER_PANELS: tuple[OperatorPanel, ...] = (
    _stat("KernNoWorkerUp", "Workers up", "Workers Prometheus scrapes.", "short", _up(WORKER_JOB), 1, below=True),
    _stat(
        "KernWorkerDegraded",
        "Workers degraded",
        "Workers with a degraded component (their /health answers 503).",
        "short",
        Query("count(kern_up == 0) or vector(0)", "degraded"),
        1,
    ),
    _alert_stat("KernConsumerNotFresh", "Oldest unflushed record", "s", "partition {{partition}}"),
    _stat(
        "KernPartitionPoisoned",
        "Poisoned partitions",
        "Partitions paused before a batch they cannot decode (kern-telemetry skip).",
        "short",
        Query("count(kern_partition_poisoned == 1) or vector(0)", "poisoned"),
        1,
    ),
    _alert_stat("KernFlushStalled", "Last flush age, rows waiting", "s", "{{instance}}"),
    _alert_stat("KernFlushesFailing", "Failed flushes, 15 min", "short", "{{instance}}"),
    _alert_stat("KernOffsetsLost", "Offsets expired or lost, 15 min", "short", "{{outcome}}"),
    _alert_stat("KernGrainsDisagree", "Grain periods that disagree", "short", "{{table}}"),
    _alert_stat("KernLedgerDisagrees", "Ledgers that disagree", "short", "partitions"),
    _alert_stat("KernDeadLetterShare", "Dead-letter share", "percentunit", "dead letters"),
    _alert_stat("KernValuesSuppressed", "Values suppressed", "ops", "{{field}}"),
    _alert_stat("KernClientDropShare", "Client drop share", "percentunit", "dropped"),
    OperatorPanel(
        "Events per second",
        "Records consumed (replays included), and records whose rollup landed.",
        "ops",
        (Query(_rate("kern_events_consumed_total"), "consumed"), Query(_rate("kern_events_flushed_total"), "flushed")),
    ),
    OperatorPanel(
        "Consumer lag per partition",
        "Log end offset minus the end of the partition's last landed flush.",
        "short",
        (Query("max by (partition) (kern_consumer_lag)", "partition {{partition}}"),),
    ),
    OperatorPanel(
        "Flush latency",
        "Time to write one batch of flushes (intents, rows, landings, sketches) to ClickHouse.",
        "s",
        _quantiles("kern_flush_duration_seconds", 0.5, 0.9, 0.99),
    ),
    OperatorPanel(
        "Flush latency histogram",
        "Flushes per latency bucket.",
        "short",
        (Query(_rate("kern_flush_duration_seconds_bucket", "le"), "{{le}}"),),
        "heatmap",
    ),
    OperatorPanel(
        "Flushes",
        "Flushes that landed, and attempts that failed (each is retried with backoff).",
        "ops",
        (Query(_rate("kern_flushes_total"), "landed"), Query(_rate("kern_flush_failures_total"), "failed")),
    ),
    OperatorPanel(
        "Dead letters by reason",
        "Events sent to the dead-letter topic per second.",
        "ops",
        (Query(_rate("kern_dead_letters_total", "reason"), "{{reason}}"),),
    ),
    OperatorPanel(
        "Dead-letter and rare-value shares",
        "Dead letters per record consumed, and values stored as (rare) per record consumed (one per field).",
        "percentunit",
        (
            Query(f"{_rate('kern_dead_letters_total')} / {_rate('kern_events_consumed_total')}", "dead letters"),
            Query(f"{_rate(RARE_VALUES)} / {_rate('kern_events_consumed_total')}", "rare values"),
        ),
    ),
    OperatorPanel(
        "Quality notes by reason",
        "Per second: late events (not counted), replaced timestamps, values stored as (redacted), (invalid) or (rare).",
        "ops",
        (Query(_rate("kern_quality_notes_total", "reason"), "{{reason}}"),),
    ),
    OperatorPanel(
        "Client drops by reason",
        "Events SDK clients report they dropped, per second.",
        "ops",
        (Query(_rate("kern_client_drops_total", "reason"), "{{reason}}"),),
    ),
    OperatorPanel(
        "Pending rows",
        "Rows folded but not flushed, per worker: consumption pauses above KERN_MAX_PENDING_ROWS (backpressure).",
        "short",
        (_per_instance("kern_pending_rows"),),
    ),
    OperatorPanel(
        "Degraded components",
        "1 while a component is degraded: kafka, clickhouse, backpressure, a paused partition.",
        "short",
        (Query("max by (instance, component) (kern_degraded)", "{{instance}} {{component}}"),),
    ),
    OperatorPanel(
        "Paused partitions",
        "1 while a partition is paused before a batch it cannot decode.",
        "short",
        (Query("max by (partition, error) (kern_partition_poisoned)", "partition {{partition}}: {{error}}"),),
    ),
    OperatorPanel(
        "Fetch errors, refused gaps, offsets given up",
        "Per second. Offsets given up: skipped by an "
        "operator, expired (retention), lost (a truncated or replaced log).",
        "ops",
        (
            Query(_rate("kern_fetch_errors_total"), "fetch errors"),
            Query(_rate("kern_offset_gaps_refused_total"), "gaps refused"),
            Query(_rate("kern_offsets_gone_total", "outcome"), "offsets {{outcome}}"),
        ),
    ),
    OperatorPanel(
        "Freshness",
        "Age of each partition's oldest record not flushed yet.",
        "s",
        (Query("max by (partition) (kern_partition_freshness_seconds)", "partition {{partition}}"),),
    ),
    OperatorPanel(
        "Worker CPU",
        "CPU time per second, per worker (1 = one core).",
        "percentunit",
        (Query(_rate(f'process_cpu_seconds_total{{job="{WORKER_JOB}"}}', "instance"), "{{instance}}"),),
    ),
    OperatorPanel(
        "Worker memory",
        "Resident memory, per worker.",
        "bytes",
        (_per_instance(f'process_resident_memory_bytes{{job="{WORKER_JOB}"}}'),),
    ),
)

COLLECTOR_PANELS: tuple[OperatorPanel, ...] = (
    _stat(
        "KernNoCollectorUp",
        "Collectors up",
        "HTTP collectors Prometheus scrapes.",
        "short",
        _up(COLLECTOR_JOB),
        1,
        below=True,
    ),
    _stat(
        "KernKafkaUnreachable",
        "Collectors without Kafka",
        "Collectors whose broker does not answer (their POSTs get 503).",
        "short",
        Query("count(kern_collector_kafka_up == 0) or vector(0)", "without kafka"),
        1,
    ),
    _alert_stat("KernCollectorErrors", "Collector 5xx share", "percentunit", "5xx"),
    _alert_stat("KernCollectorRateLimited", "Collector 429 share", "percentunit", "429"),
    _alert_stat("KernCollectorMemoryHigh", "Collector memory", "bytes", "{{instance}}"),
    _alert_stat(
        "KernCollectorConnectionsNearCap", "Collector connections, share of the cap", "percentunit", "{{instance}}"
    ),
    _alert_stat(
        "KernCollectorPendingBytesNearBound",
        "Collector pending bytes, share of the bound",
        "percentunit",
        "{{instance}}",
    ),
    OperatorPanel(
        "Collector requests per second",
        "POSTs answered, by status code and reason (accepted, or why refused).",
        "reqps",
        (Query(_rate("kern_collector_requests_total", "code, reason"), "{{code}} {{reason}}"),),
    ),
    OperatorPanel(
        "Collector events per second",
        "Events the broker acknowledged (answered 202).",
        "ops",
        (Query(_rate("kern_collector_events_total"), "accepted"),),
    ),
    OperatorPanel(
        "Collector request latency",
        "Time from a POST's headers to its answer.",
        "s",
        _quantiles("kern_collector_request_duration_seconds", 0.5, 0.99),
    ),
    OperatorPanel(
        "Collector pending bytes",
        "Bytes handed to the Kafka producer and not acknowledged yet, with "
        "the bodies being read (their declared bytes), per collector; 503 beyond the bound "
        "(KERN_COLLECTOR_MAX_PENDING_BYTES).",
        "bytes",
        (
            _per_instance("kern_collector_pending_bytes"),
            Query("sum by (instance) (kern_collector_body_bytes)", "{{instance}} bodies"),
            Query("max by (instance) (kern_collector_max_pending_bytes)", "{{instance}} bound"),
        ),
    ),
    OperatorPanel(
        "Collector connections",
        "Open connections per collector, and its cap (at the cap idle ones are "
        "closed; requests in progress beyond it get 503 busy).",
        "short",
        (
            _per_instance("kern_collector_connections"),
            Query("max by (instance) (kern_collector_connection_cap)", "{{instance}} cap"),
        ),
    ),
    OperatorPanel(
        "Bodies being read",
        "Request bodies being read, per collector (each counts in the pending bytes "
        "until it is read; 408 after KERN_COLLECTOR_BODY_TIMEOUT_SECONDS).",
        "short",
        (_per_instance("kern_collector_bodies"),),
    ),
    OperatorPanel(
        "Rate limiter clients",
        "Clients the rate limiter remembers, per collector (at most KERN_COLLECTOR_RATE_LIMIT_CLIENTS).",
        "short",
        (_per_instance("kern_collector_rate_limit_clients"),),
    ),
)

OPERATOR_PANELS: tuple[OperatorPanel, ...] = WORKER_PANELS + COLLECTOR_PANELS


def _layout(panels: list[dict]) -> list[dict]:
    """Ids and a grid: stats four to a row, other panels two to a row, a row of one height."""
    x = y = row_height = 0
    for number, panel in enumerate(panels, start=1):
        width, height = (6, 4) if panel["type"] == "stat" else (12, 8)
        if x + width > 24 or (x and height != row_height):
            x, y = 0, y + row_height
        panel.update(id=number, gridPos={"h": height, "w": width, "x": x, "y": y})
        x, row_height = x + width, height
    return panels


def _dashboard(uid: str, title: str, panels: list[dict], variables: list[dict]) -> dict:
    return {
        "uid": uid,
        "title": title,
        "tags": ["kern"],
        "timezone": "utc",
        "editable": False,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "panels": _layout(panels),
    }


def analyst_variables() -> list[dict]:
    """The analysts' dashboard's variables: the database, a multi-value variable per filter of the panels
    (its options: the filter's SQL, most used first; All drops the filter), and the breakdown."""
    database = {
        "name": "database",
        "type": "constant",
        "query": DATABASE,
        "hide": 2,
        "description": "The tables' database (KERN_CLICKHOUSE_DATABASE)",
    }
    filters = [
        {
            "name": f.name,
            "label": f.label,
            "type": "query",
            "datasource": CLICKHOUSE,
            "query": render_sql(f.options, Grafana()),
            "definition": render_sql(f.options, Grafana()),
            "refresh": 1,
            "multi": True,
            "includeAll": True,
            "sort": 0,
            "options": [],
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "description": "Runs with every chosen flag on"
            if f.name == "flag"
            else f"Runs of any chosen {f.label.lower()}",
        }
        for f in FILTERS
    ]
    breakdowns = {"default": "each panel's own", **BREAKDOWNS}
    by = {
        "name": "by",
        "label": "Breakdown",
        "type": "custom",
        "multi": False,
        "includeAll": False,
        "query": ",".join(f"{label} : {name}" for name, label in breakdowns.items()),
        "current": {"selected": True, "text": breakdowns["default"], "value": "default"},
        "options": [
            {"selected": name == "default", "text": label, "value": name} for name, label in breakdowns.items()
        ],
        "description": "The series of the panels that break down by kind, provider, model or SDK version",
    }
    return [database, *filters, by]


def _drill_link(filter_name: str, value: str) -> dict:
    """A data link to this dashboard filtered by a clicked value (drill-down), keeping the other variables."""
    kept = "&".join(f"${{{name}:queryparam}}" for name in (*(f.name for f in FILTERS), "by") if name != filter_name)
    keep = f"${{{filter_name}:queryparam}}&" if filter_name == "flag" else ""  # flags: all of them, one more
    return {
        "title": f"Filter by this {filter_name}",
        "url": f"/d/kern-analysts/?${{__url_time_range}}&{kept}&{keep}var-{filter_name}=${{{value}:percentencode}}",
    }


def analyst_panel(panel: Panel) -> dict:
    time_series = panel.chart == TIME_SERIES
    format_, query_type = (0, "timeseries") if time_series else (1, "table")  # the plugin's time series, table
    defaults: dict = {"unit": "percentunit" if panel.unit == SHARE else "short", "links": []}
    takes = ", ".join(panel.filters) or "none"
    description = f"{panel.description} Filters: {takes}." + (
        f" Breakdown: {', '.join(panel.breakdowns)} (default {panel.by})." if panel.breakdowns else ""
    )
    result: dict[str, Any] = {
        "type": "timeseries" if time_series else "stat" if panel.chart == STAT else "barchart",
        "title": panel.title,
        "description": description,
        "datasource": CLICKHOUSE,
        "interval": "1m",  # the windows are a minute wide: no finer buckets
        "targets": [
            {
                "refId": "A",
                "datasource": CLICKHOUSE,
                "editorType": "sql",
                "format": format_,
                "queryType": query_type,
                "pluginVersion": CLICKHOUSE_PLUGIN_VERSION,
                "rawSql": panel.grafana(),
            }
        ],
        "options": {
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }
    drill = panel.drill()
    if time_series:
        defaults["displayName"] = "${__field.labels.series}"  # the plugin turns `series` into a label
        if drill["series"]:
            defaults["links"].append(_drill_link(drill["series"], "__field.labels.series"))
    elif panel.chart == STAT:  # current and previous period, side by side
        defaults["displayName"] = "${__data.fields.label}"
        result["options"] = {
            "reduceOptions": {"values": True, "calcs": [], "fields": "/^value$/"},
            "textMode": "value_and_name",
            "colorMode": "none",
            "graphMode": "none",
        }
    else:  # rows (label, series, value) -> a column per series
        result["transformations"] = [
            {"id": "groupingToMatrix", "options": {"rowField": "label", "columnField": "series", "valueField": "value"}}
        ]
        result["options"].update(xTickLabelRotation=-30, showValue="never")
        if drill["label"] and drill["label"] != "flag":  # a combination of flags is several values
            defaults["links"].append(_drill_link(drill["label"], "__data.fields[0]"))
        elif drill["series"]:
            defaults["links"].append(_drill_link(drill["series"], "__field.name"))
    result["fieldConfig"] = {"defaults": defaults, "overrides": []}
    return result


def operator_panel(panel: OperatorPanel) -> dict:
    targets = [
        {
            "refId": chr(ord("A") + i),
            "datasource": PROMETHEUS,
            "expr": query.expr,
            "legendFormat": query.legend,
            **({"format": "heatmap"} if panel.type == "heatmap" else {}),
        }
        for i, query in enumerate(panel.queries)
    ]
    defaults: dict = {"unit": panel.unit}
    result = {
        "type": panel.type,
        "title": panel.title,
        "description": panel.description,
        "datasource": PROMETHEUS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
    }
    if panel.thresholds:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": colour, "value": value} for value, colour in panel.thresholds],
        }
        result["options"] = {
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "value_and_name",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        }
    return result


def dashboards() -> dict[str, dict]:
    """File name -> dashboard JSON."""
    return {
        "kern-analysts.json": _dashboard(
            "kern-analysts", "Kern telemetry: analysts", [analyst_panel(panel) for panel in PANELS], analyst_variables()
        ),
        "kern-operators.json": _dashboard(
            "kern-operators", "Kern telemetry: operators", [operator_panel(panel) for panel in OPERATOR_PANELS], []
        ),
    }


def render(dashboard: dict) -> str:
    return json.dumps(dashboard, indent=2) + "\n"


if __name__ == "__main__":
    DASHBOARDS.mkdir(parents=True, exist_ok=True)
    for name, dashboard in dashboards().items():
        (DASHBOARDS / name).write_text(render(dashboard))
        print(f"wrote {DASHBOARDS / name}")
