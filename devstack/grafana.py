"""The dev cluster's Grafana dashboards, generated: the analysts' panels (`pipeline/panels.py`, in their
Grafana translation) over ClickHouse, and the operators' panels over the Prometheus metrics of the workers
(`pipeline/metrics.py`) and of the HTTP collectors (`collector/metrics.py`), scraped by the `kern-worker` and
`kern-collector` jobs of `deploy/prometheus/prometheus.yml`.

`make dashboards` (`python -m devstack.grafana`) writes `deploy/grafana/dashboards/`, which Grafana
provisions from files; a test fails when they differ from what this module generates, so the dashboards
hold no SQL of their own. Operators' queries use Grafana's `$__rate_interval`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from pipeline.panels import PANELS, SHARE, TIME_SERIES, Panel

DASHBOARDS = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards"
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "kern-clickhouse"}  # provisioned datasources
PROMETHEUS = {"type": "prometheus", "uid": "kern-prometheus"}
CLICKHOUSE_PLUGIN_VERSION = "4.20.0"  # docker-compose.yml installs this version
DATABASE = "kern_telemetry"  # the `database` constant of the analysts' dashboard: KERN_CLICKHOUSE_DATABASE
WORKER_JOB = "kern-worker"  # the scrape job of the workers
COLLECTOR_JOB = "kern-collector"  # the scrape job of the HTTP collectors


class Query(NamedTuple):
    expr: str
    legend: str


class OperatorPanel(NamedTuple):
    title: str
    description: str
    unit: str  # a Grafana unit
    queries: tuple[Query, ...]
    type: str = "timeseries"  # or "stat", "heatmap"


def _rate(metric: str, by: str = "") -> str:
    return f"sum{f' by ({by})' if by else ''} (rate({metric}[$__rate_interval]))"


def _up(job: str) -> Query:
    """The targets of a scrape job that answer."""
    return Query(f'count(up{{job="{job}"}} == 1) or vector(0)', "up")


def _quantiles(histogram: str, *quantiles: float) -> tuple[Query, ...]:
    return tuple(Query(f"histogram_quantile({q}, {_rate(f'{histogram}_bucket', 'le')})", f"p{round(q * 100)}")
                 for q in quantiles)


def _per_instance(metric: str) -> Query:
    return Query(f"sum by (instance) ({metric})", "{{instance}}")


WORKER_PANELS: tuple[OperatorPanel, ...] = (
    OperatorPanel("Workers up", "Workers Prometheus scrapes.", "short", (_up(WORKER_JOB),), "stat"),
    OperatorPanel("Workers degraded", "Workers with a degraded component (their /health answers 503).", "short",
                  (Query("count(kern_up == 0) or vector(0)", "degraded"),), "stat"),
    OperatorPanel("Consumer lag", "Records after the last landed flush, all partitions.", "short",
                  (Query("sum(kern_consumer_lag) or vector(0)", "lag"),), "stat"),
    OperatorPanel("Poisoned partitions", "Partitions paused before a batch they cannot decode (kern-telemetry skip).",
                  "short", (Query("count(kern_partition_poisoned == 1) or vector(0)", "poisoned"),), "stat"),
    OperatorPanel("Events per second", "Records consumed (replays included), and records whose rollup landed.", "ops",
                  (Query(_rate("kern_events_consumed_total"), "consumed"),
                   Query(_rate("kern_events_flushed_total"), "flushed"))),
    OperatorPanel("Consumer lag per partition", "Log end offset minus the end of the partition's last landed flush.",
                  "short", (Query("max by (partition) (kern_consumer_lag)", "partition {{partition}}"),)),
    OperatorPanel("Flush latency", "Time to write one flush (intent and rows) to ClickHouse.", "s",
                  _quantiles("kern_flush_duration_seconds", 0.5, 0.9, 0.99)),
    OperatorPanel("Flush latency histogram", "Flushes per latency bucket.", "short",
                  (Query(_rate("kern_flush_duration_seconds_bucket", "le"), "{{le}}"),), "heatmap"),
    OperatorPanel("Flushes", "Flushes that landed, and attempts that failed (each is retried with backoff).", "ops",
                  (Query(_rate("kern_flushes_total"), "landed"), Query(_rate("kern_flush_failures_total"), "failed"))),
    OperatorPanel("Dead letters by reason", "Events sent to the dead-letter topic per second.", "ops",
                  (Query(_rate("kern_dead_letters_total", "reason"), "{{reason}}"),)),
    OperatorPanel("Pending rows", "Rows folded but not flushed, per worker: consumption pauses above "
                  "KERN_MAX_PENDING_ROWS (backpressure).", "short",
                  (_per_instance("kern_pending_rows"),)),
    OperatorPanel("Degraded components", "1 while a component is degraded: kafka, clickhouse, backpressure, a paused "
                  "partition.", "short",
                  (Query("max by (instance, component) (kern_degraded)", "{{instance}} {{component}}"),)),
    OperatorPanel("Paused partitions", "1 while a partition is paused before a batch it cannot decode.", "short",
                  (Query("max by (partition, error) (kern_partition_poisoned)", "partition {{partition}}: {{error}}"),)),
    OperatorPanel("Fetch errors, refused gaps, offsets given up", "Per second. Offsets given up: skipped by an "
                  "operator, expired (retention), lost (a truncated or replaced log).", "ops",
                  (Query(_rate("kern_fetch_errors_total"), "fetch errors"),
                   Query(_rate("kern_offset_gaps_refused_total"), "gaps refused"),
                   Query(_rate("kern_offsets_gone_total", "outcome"), "offsets {{outcome}}"))),
    OperatorPanel("Freshness", "Age of each partition's oldest record not flushed yet.", "s",
                  (Query("max by (partition) (kern_partition_freshness_seconds)", "partition {{partition}}"),)),
    OperatorPanel("Worker CPU", "CPU time per second, per worker (1 = one core).", "percentunit",
                  (Query(_rate(f'process_cpu_seconds_total{{job="{WORKER_JOB}"}}', "instance"), "{{instance}}"),)),
    OperatorPanel("Worker memory", "Resident memory, per worker.", "bytes",
                  (_per_instance(f'process_resident_memory_bytes{{job="{WORKER_JOB}"}}'),)),
)

COLLECTOR_PANELS: tuple[OperatorPanel, ...] = (
    OperatorPanel("Collectors up", "HTTP collectors Prometheus scrapes.", "short", (_up(COLLECTOR_JOB),), "stat"),
    OperatorPanel("Collectors without Kafka", "Collectors whose broker does not answer (their POSTs get 503).",
                  "short", (Query("count(kern_collector_kafka_up == 0) or vector(0)", "without kafka"),), "stat"),
    OperatorPanel("Collector requests per second", "POSTs answered, by status code and reason (accepted, or why "
                  "refused).", "reqps",
                  (Query(_rate("kern_collector_requests_total", "code, reason"), "{{code}} {{reason}}"),)),
    OperatorPanel("Collector events per second", "Events the broker acknowledged (answered 202).", "ops",
                  (Query(_rate("kern_collector_events_total"), "accepted"),)),
    OperatorPanel("Collector request latency", "Time from a POST's headers to its answer.", "s",
                  _quantiles("kern_collector_request_duration_seconds", 0.5, 0.99)),
    OperatorPanel("Collector pending bytes", "Bytes handed to the Kafka producer and not acknowledged yet, per "
                  "collector: 503 beyond KERN_COLLECTOR_MAX_PENDING_BYTES.", "bytes",
                  (_per_instance("kern_collector_pending_bytes"),)),
    OperatorPanel("Rate limiter clients", "Clients the rate limiter remembers, per collector (at most "
                  "KERN_COLLECTOR_RATE_LIMIT_CLIENTS).", "short",
                  (_per_instance("kern_collector_rate_limit_clients"),)),
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
    return {"uid": uid, "title": title, "tags": ["kern"], "timezone": "utc", "editable": False, "schemaVersion": 39,
            "version": 1, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
            "templating": {"list": variables}, "panels": _layout(panels)}


def analyst_panel(panel: Panel) -> dict:
    time_series = panel.chart == TIME_SERIES
    format_, query_type = (0, "timeseries") if time_series else (1, "table")  # the plugin's time series, table
    defaults: dict = {"unit": "percentunit" if panel.unit == SHARE else "short"}
    result = {"type": "timeseries" if time_series else "barchart", "title": panel.title,
              "description": panel.description, "datasource": CLICKHOUSE,
              "targets": [{"refId": "A", "datasource": CLICKHOUSE, "editorType": "sql", "format": format_,
                           "queryType": query_type, "pluginVersion": CLICKHOUSE_PLUGIN_VERSION,
                           "rawSql": panel.grafana()}],
              "options": {"legend": {"showLegend": True, "displayMode": "list", "placement": "right"},
                          "tooltip": {"mode": "multi", "sort": "desc"}}}
    if time_series:
        result["interval"] = "1m"  # the windows are a minute wide: no finer buckets
        defaults["displayName"] = "${__field.labels.series}"  # the plugin turns `series` into a label
    else:  # rows (label, series, value) -> a column per series
        result["transformations"] = [{"id": "groupingToMatrix", "options": {
            "rowField": "label", "columnField": "series", "valueField": "value"}}]
        result["options"].update(xTickLabelRotation=-30, showValue="never")
    result["fieldConfig"] = {"defaults": defaults, "overrides": []}
    return result


def operator_panel(panel: OperatorPanel) -> dict:
    targets = [{"refId": chr(ord("A") + i), "datasource": PROMETHEUS, "expr": query.expr,
                "legendFormat": query.legend, **({"format": "heatmap"} if panel.type == "heatmap" else {})}
               for i, query in enumerate(panel.queries)]
    return {"type": panel.type, "title": panel.title, "description": panel.description, "datasource": PROMETHEUS,
            "targets": targets, "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []}}


def dashboards() -> dict[str, dict]:
    """File name -> dashboard JSON."""
    database = {"name": "database", "type": "constant", "query": DATABASE, "hide": 2,
                "description": "The tables' database (KERN_CLICKHOUSE_DATABASE)"}
    return {
        "kern-analysts.json": _dashboard("kern-analysts", "Kern telemetry: analysts",
                                         [analyst_panel(panel) for panel in PANELS], [database]),
        "kern-operators.json": _dashboard("kern-operators", "Kern telemetry: operators",
                                          [operator_panel(panel) for panel in OPERATOR_PANELS], []),
    }


def render(dashboard: dict) -> str:
    return json.dumps(dashboard, indent=2) + "\n"


if __name__ == "__main__":
    DASHBOARDS.mkdir(parents=True, exist_ok=True)
    for name, dashboard in dashboards().items():
        (DASHBOARDS / name).write_text(render(dashboard))
        print(f"wrote {DASHBOARDS / name}")
