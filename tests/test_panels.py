"""The analysts' panels (`pipeline/panels.py`) on real data: 30 minutes of load-generator events counted by a
real worker into chDB. Every panel's SQL runs in both translations (plain, and Grafana's as its ClickHouse
plugin expands it), returns rows of the documented shape, and the CLI prints the same rows."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections import Counter
from datetime import datetime

import pytest
from click.testing import CliRunner

from conftest import reference_rollup
from pipeline.cli import main as cli
from pipeline.panels import BY_NAME, PANELS, SHARE, TIME_SERIES, default_interval

pytestmark = pytest.mark.integration

_MACRO = re.compile(r"\$__(timeFilter|dateFilter|timeInterval)\((\w+)\)")


def as_grafana_runs_it(sql: str, database: str, start: int, end: int, interval_s: int) -> str:
    """A panel's Grafana SQL with the dashboard's `database` constant and the plugin's macros expanded as the
    plugin does (grafana/clickhouse-datasource, pkg/macros/macros.go)."""
    def day(epoch: int) -> str:
        return f"toDate('{time.strftime('%Y-%m-%d', time.gmtime(epoch))}')"

    def expand(match: re.Match) -> str:
        macro, column = match[1], match[2]
        if macro == "timeFilter":
            return f"{column} >= toDateTime({start}) AND {column} <= toDateTime({end})"
        if macro == "dateFilter":
            return f"{column} >= {day(start)} AND {column} <= {day(end)}"
        return f"toStartOfInterval(toDateTime({column}), INTERVAL {interval_s} second)"

    return _MACRO.sub(expand, sql.replace("${database}", database))


def test_every_panel_returns_rows_of_its_shape_and_both_translations_agree(history):
    stack = history.stack
    with stack.clickhouse() as client:
        for panel in PANELS:
            grafana = panel.grafana()
            assert "{" not in grafana.replace("${database}", ""), panel.name  # every placeholder translated
            plain = client.query(panel.plain(stack.database, range_s=3600))
            end = int(time.time())
            expanded = client.query(as_grafana_runs_it(grafana, stack.database, end - 3600, end, default_interval(3600)))
            assert plain.result_rows, f"{panel.name} came back empty"
            assert expanded.result_rows == plain.result_rows, panel.name
            assert plain.column_names == ("time" if panel.chart == TIME_SERIES else "label", "series", "value")
            for x, series, value in plain.result_rows:
                assert isinstance(x, datetime) if panel.chart == TIME_SERIES else isinstance(x, str)
                assert isinstance(series, str) and value > 0
                assert value <= 1 if panel.unit == SHARE else value == int(value)


def test_runs_per_kind_adds_up_to_what_was_produced(history):
    stack = history.stack
    expected = Counter()
    for (_, dims), runs in reference_rollup(stack.settings, history.values, 0).run_counts().items():
        expected[dims[0]] += runs
    with stack.clickhouse() as client:
        rows = client.query(BY_NAME["runs-per-kind"].plain(stack.database)).result_rows
    shown = Counter()
    for _, kind, runs in rows:
        shown[kind] += runs
    assert shown == expected and sum(shown.values()) > 25_000


def query(history, *args: str) -> str:
    """`kern-telemetry query ...` against the history's ClickHouse; its standard output."""
    result = CliRunner().invoke(cli, ["query", *args], env=history.stack.env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def iso(value) -> str:
    return value.isoformat() + "+00:00" if isinstance(value, datetime) else value


def test_query_prints_a_panel_as_json_csv_or_a_table_with_the_rows_of_its_sql(history):
    stack = history.stack
    with stack.clickhouse() as client:
        for panel in (BY_NAME["runs-per-kind"], BY_NAME["team-sizes"]):
            rows = [[iso(x), series, value] for x, series, value in
                    client.query(panel.plain(stack.database, 1800, 300)).result_rows]
            x = "time" if panel.chart == TIME_SERIES else "label"
            as_json = json.loads(query(history, "--report", panel.name, "--since", "30m", "--interval", "5m",
                                       "--format", "json"))
            assert [[row[x], row["series"], row["value"]] for row in as_json] == rows
            as_csv = list(csv.reader(io.StringIO(query(history, "-r", panel.name, "--since", "1800", "--interval",
                                                       "300", "--format", "csv"))))
            assert as_csv == [[x, "series", "value"], *([str(value) for value in row] for row in rows)]
            table = query(history, "-r", panel.name, "--since", "30m", "--interval", "5m")
            assert panel.title in table and all(str(row[2]) in table for row in rows)


def test_query_draws_time_series_and_bar_panels_in_the_terminal(history):
    for name in ("quality", "workflow-db", "flag-adoption-by-model"):
        panel = BY_NAME[name]
        chart = query(history, "--report", name, "--chart")
        with history.stack.clickhouse() as client:
            series = {series for _, series, _ in client.query(panel.plain(history.stack.database)).result_rows}
        assert panel.title in chart and len(chart.splitlines()) >= 15
        assert ("runs" in series and "PostgresDb" in chart) or all(name_ in chart for name_ in series), chart
        assert re.search("[\u2800-\u28ff\u2580-\u259f█]", chart), chart  # braille lines or blocks: drawn


def test_query_runs_sql_with_the_placeholders_and_refuses_what_it_cannot_do(history):
    sql = "SELECT kind, sum(runs) AS runs FROM {db}.runs_minute WHERE {time_range} GROUP BY kind ORDER BY kind"
    counted = {row["kind"]: row["runs"] for row in json.loads(query(history, sql, "--format", "json"))}
    assert set(counted) == {"agent", "team", "workflow", "os"} and sum(counted.values()) > 25_000
    listed = query(history, "--list")
    assert all(panel.name in listed for panel in PANELS)
    runner = CliRunner()
    for args in (["--report", "nope"], [sql, "--chart"], ["-r", "quality", "--since", "an hour"]):
        result = runner.invoke(cli, ["query", *args], env=history.stack.env)
        assert result.exit_code == 2, (args, result.output)  # a usage error, said before anything runs


def test_the_team_and_workflow_pattern_panels_answer_what_was_produced(history):
    """How teams coordinate and what workflows look like, against the load generator's teams and workflows
    (stand-ins turned into payloads by the SDK client's builders) folded offline."""
    reference = reference_rollup(history.stack.settings, history.values, 0)
    teams, workflows = Counter(), Counter()
    for (_, _, coordination, _, nesting), runs in reference.patterns("team").items():
        teams[(coordination, f"nesting {nesting}")] += runs
    for (_, _, steps, kinds, nesting), runs in reference.patterns("workflow").items():
        workflows[(steps, nesting, kinds)] += runs
    lengths, step_kinds, beyond = Counter(), Counter(), Counter()
    for (steps, nesting, kinds), runs in workflows.items():
        lengths[(steps, f"nesting {nesting}")] += runs
        for kind in kinds:
            step_kinds[kind] += runs if kind != "none" else 0
        for kind in ("parallel", "condition", "loop", "router"):
            if "none" not in kinds:
                beyond[kind] += runs if kind in kinds else 0
                beyond["total"] += runs / 4
    with history.stack.clickhouse() as client:
        def answer(name: str) -> dict:
            return {(label, series): value for label, series, value in
                    client.query(BY_NAME[name].plain(history.stack.database)).result_rows}

        assert answer("team-coordination") == teams and {c for c, _ in teams} >= {"route", "coordinate", "collaborate"}
        assert answer("workflow-steps") == lengths
        assert answer("workflow-step-kinds") == {(kind, "runs"): runs for kind, runs in step_kinds.items() if runs}
        shares = answer("workflow-control-flow")
        assert shares == {(kind, "share of workflow runs"): round(beyond[kind] / beyond["total"], 4)
                          for kind in ("parallel", "condition", "loop", "router") if beyond[kind]}
        assert all(0 < share < 1 for share in shares.values()) and len(shares) == 4
