"""The analysts' panels (`pipeline/panels.py`) on real data: 30 minutes of load-generator events counted by a
real worker into chDB. Every panel's SQL runs in both translations (plain with bound parameters, and
Grafana's as its ClickHouse plugin and the dashboard's variables expand it) under several filters and
breakdowns, and returns the same rows of the documented shape; the usual questions (top models, a
combination of flags, distinct sessions, dead letters, client drops) equal answers computed from what was
produced; the CLI prints the same rows, and refuses what it cannot do."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from conftest import reference_rollup

from devstack.grafana import analyst_variables
from pipeline.cli import main as cli
from pipeline.dimensions import NAMES
from pipeline.panels import (
    BY_NAME,
    DAY,
    FILTERS,
    PANELS,
    SHARE,
    STAT,
    TIME_SERIES,
    Grafana,
    Selection,
    Window,
    options_statement,
)
from pipeline.panels import render as render_sql
from pipeline.projector import NO_SESSION
from pipeline.rejections import GONE, QUALITY_ONLY
from tables.ddl import SchemaOptions

pytestmark = pytest.mark.integration

KIND, PROVIDER, MODEL, FEATURES = NAMES.index("kind"), NAMES.index("model_provider"), NAMES.index("model_id"), -1


# --- Grafana, as the ClickHouse plugin and Grafana's template service run a panel --------------------------


def conditional_all(sql: str, variables: dict) -> str:
    """The plugin's `applyConditionalAll` (grafana/clickhouse-datasource, src/data/CHDatasource.ts): from
    the last macro back, split its two arguments at the top-level comma; All (None) or nothing chosen
    replaces it by 1=1, else by its first argument."""
    macro = "$__conditionalAll("
    while (index := sql.rfind(macro)) != -1:
        depth, args, last = 0, [], index + len(macro)
        for position in range(index + len(macro) - 1, len(sql)):
            char = sql[position]
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == "," and depth == 1:
                args.append(sql[last:position])
                last = position + 1
            if depth == 0:
                args.append(sql[last:position])
                break
        assert len(args) == 2, sql[index : index + 200]
        name = re.search(r"(?<=\$\{)\w+(?=\})|(?<=\$)\w+", args[1].strip())[0]
        phrase = "1=1" if variables.get(name) in (None, []) else args[0]
        sql = sql.replace(f"{macro}{args[0]},{args[1]})", phrase, 1)
    return sql


def as_grafana_runs_it(sql: str, database: str, window: Window, variables: dict, options: dict) -> str:
    """A panel's Grafana SQL with the dashboard's variables and the plugin's macros expanded as they are:
    `$__conditionalAll` first, then Grafana's interpolation (`singlequote`: each value quoted, `'` escaped;
    All: every option), then the backend's macros (pkg/macros/macros.go)."""
    sql = conditional_all(sql, variables)

    def variable(match: re.Match) -> str:
        name = match[1]
        if name == "database":
            return database
        values = variables.get(name)
        values = options[name] if values is None else values
        return ",".join("'" + value.replace("'", "\\'") + "'" for value in values)

    sql = re.sub(r"\$\{(\w+)(?::singlequote)?\}", variable, sql)
    assert "${" not in sql and not re.search(r"\$[a-z]", sql), sql  # every variable interpolated
    macros = {
        "fromTime": f"toDateTime({window.start})",
        "toTime": f"toDateTime({window.end})",
        "interval_s": str(window.interval),
    }
    sql = re.sub(
        r"\$__timeInterval\((\w+)\)",
        lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {window.interval} second)",
        sql,
    )
    sql = re.sub(r"\$__(fromTime|toTime|interval_s)\b", lambda m: macros[m[1]], sql)
    assert "$__" not in sql, sql
    return sql


SELECTIONS = (
    Selection(),
    Selection({"kind": ("agent",)}, "model"),
    Selection({"provider": ("openai", "anthropic"), "flag": ("tools", "has_memory")}, "sdk"),
    Selection({"sdk": ("2.4",), "model": ("gpt-4o",), "flag": ("knowledge",)}, "provider"),
)


def grafana_variables(selection: Selection) -> dict:
    return {
        **{f.name: list(selection.filters[f.name]) if f.name in selection.filters else None for f in FILTERS},
        "by": [selection.by or "default"],
    }


def rows(client, statement) -> list:
    return client.query(statement.sql, parameters=statement.parameters).result_rows


def test_every_panel_returns_rows_of_its_shape_and_both_translations_agree_under_filters(history):
    stack = history.stack
    with stack.clickhouse() as client:
        options = {
            f.name: [row[0] for row in client.query(options_statement(f, stack.database)).result_rows] for f in FILTERS
        }
        assert {"agent", "team", "workflow", "os"} == set(options["kind"]) and "openai gpt-4o" in options["model"]
        assert {"tools", "memory"} <= set(options["flag"]) and "2.4" in options["sdk"]
        end = int(time.time())
        for interval, selection in zip(
            (60, 60, 3600, DAY), SELECTIONS, strict=True
        ):  # each bucket reads its grain's table
            window = Window.between(end - 3600, end, interval)
            for panel in PANELS:
                plain = rows(client, panel.statement(stack.database, window, selection))
                grafana = panel.grafana()
                assert not re.search(r"\{\w+(:[\w:-]+)?\}", grafana.replace("${", "")), panel.name  # all translated
                expanded = client.query(
                    as_grafana_runs_it(grafana, stack.database, window, grafana_variables(selection), options)
                ).result_rows
                assert expanded == plain, (panel.name, selection)
                if selection == SELECTIONS[0] and interval == 60:
                    assert plain, f"{panel.name} came back empty"
                    assert plain[0] and len(plain[0]) == 3
                for x, series, value in plain:
                    assert isinstance(x, datetime) if panel.chart == TIME_SERIES else isinstance(x, str)
                    assert isinstance(series, str)
                    if panel.chart == STAT and x == "previous":  # nothing was counted before the history
                        assert value in (0, None), panel.name
                        continue
                    assert value > 0 if selection == SELECTIONS[0] else value >= 0, (panel.name, selection)
                    assert value <= 1 if panel.unit == SHARE else value == int(value), panel.name


def test_filters_change_the_sql_and_its_answer_and_values_are_bound_never_spliced(history):
    stack = history.stack
    panel, window = BY_NAME["runs-per-kind"], Window.last(3600)
    hostile = "openai' OR 1=1 --\\"
    statement = panel.statement(stack.database, window, Selection({"provider": ("openai", hostile)}, "model"))
    assert hostile not in statement.sql and "{f_provider:Array(String)}" in statement.sql
    assert statement.parameters == {"f_provider": ["openai", hostile]}
    with stack.clickhouse() as client:
        every = rows(client, panel.statement(stack.database, window))
        openai = rows(client, statement)
        only_hostile = rows(client, panel.statement(stack.database, window, Selection({"provider": (hostile,)})))
    assert only_hostile == []  # a value is a value: it matches nothing
    assert {series for _, series, _ in every} == {"agent", "team", "workflow", "os"}
    assert {series for _, series, _ in openai} <= {
        f"openai {m}" for m in ("gpt-5.2", "gpt-5-mini", "gpt-4.1", "gpt-4o", "gpt-4o-mini", "o3", "o4-mini", "(rare)")
    } | {"(other)"}
    assert 0 < sum(v for *_, v in openai) < sum(v for *_, v in every)
    two_flags = Selection({"flag": ("tools", "memory"), "sdk": ("2.4",)})
    assert BY_NAME["sessions-total"].notes(two_flags, window, SchemaOptions()) == [
        "not filtered by sdk version (sessions_daily has none)",
        "sessions_daily keeps a sketch per flag: distinct sessions are filtered by one flag at most",
    ]


def reference_runs(history) -> Counter:
    """{dims: runs} of what was produced, folded offline by the worker's own projector."""
    runs = Counter()
    for (_, dims), count in reference_rollup(history.stack.settings, history.values, 0).run_counts().items():
        runs[dims] += count
    return runs


def answer(client, history, name: str, selection: Selection = Selection(), range_s: int = 3600) -> dict:
    statement = BY_NAME[name].statement(history.stack.database, Window.last(range_s), selection)
    return {(label, series): value for label, series, value in rows(client, statement)}


def test_top_models_count_runs_per_provider_and_model_as_produced(history):
    runs = reference_runs(history)
    expected = Counter()
    for dims, count in runs.items():
        if dims[KIND] in ("agent", "team"):
            expected[f"{dims[PROVIDER]} {dims[MODEL]}"] += count
    top = sorted(expected.items(), key=lambda item: (-item[1], item[0]))[:10]
    openai = sorted(((m, n) for m, n in expected.items() if m.startswith("openai ")), key=lambda i: (-i[1], i[0]))
    with history.stack.clickhouse() as client:
        shown = answer(client, history, "top-models")
        filtered = answer(client, history, "top-models", Selection({"provider": ("openai",)}))
    assert list(shown.items()) == [((model, "runs"), count) for model, count in top]
    assert "none none" not in {model for model, _ in shown}  # workflows and launches have no model
    assert list(filtered.items()) == [((model, "runs"), count) for model, count in openai[:10]]


def test_a_combination_of_flags_is_adopted_by_the_share_of_runs_that_have_them_all(history):
    runs = reference_runs(history)

    def share(kinds: set, flags: set) -> float:
        having = sum(n for dims, n in runs.items() if dims[KIND] in kinds and flags <= set(dims[FEATURES]))
        return having / sum(n for dims, n in runs.items() if dims[KIND] in kinds)

    pairs = Counter()
    for dims, count in runs.items():
        if dims[KIND] in ("agent", "team"):
            flags = [f for f in dims[FEATURES] if f.startswith("has_")]
            for pair in itertools.combinations(flags, 2):
                pairs[" + ".join(f.removeprefix("has_") for f in pair)] += count
    with history.stack.clickhouse() as client:
        default = answer(client, history, "flag-combinations")
        agents = answer(
            client, history, "flag-combinations", Selection({"kind": ("agent",), "flag": ("tools", "memory")})
        )
    total = sum(n for dims, n in runs.items() if dims[KIND] in ("agent", "team"))
    top = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:10]
    assert list(default) == [(pair, "share of runs") for pair, _ in top]
    assert list(default.values()) == pytest.approx([n / total for _, n in top], rel=1e-12)
    (first, first_share), *more = agents.items()
    assert first == ("memory + tools", "share of runs")  # the chosen flags, then each one more
    assert first_share == pytest.approx(share({"agent"}, {"has_tools", "has_memory"}), rel=1e-12)
    assert 0.05 < first_share < 0.5 and more
    for (label, _), value in more:
        flags = {f"has_{name}" for name in label.split(" + ")}
        assert {"has_tools", "has_memory"} < flags and value == pytest.approx(share({"agent"}, flags), rel=1e-12)


def test_headline_numbers_are_what_was_produced_against_the_period_before(history):
    reference = reference_rollup(history.stack.settings, history.values, 0)
    runs = reference_runs(history)
    drops = sum(reference.client_drops().values())
    sessions = {kind: set() for kind in ("agent", "team", "workflow", "os")}
    for (_, dims), seen in reference.sessions.items():
        if dims[0] in sessions:
            sessions[dims[0]].update(s for s in seen if s != NO_SESSION)
    with history.stack.clickhouse() as client:
        total = answer(client, history, "runs-total")
        agent_runs = answer(client, history, "runs-total", Selection({"kind": ("agent",)}))
        dead = answer(client, history, "dead-letter-share")
        dropped = answer(client, history, "client-drop-share")
        distinct = answer(client, history, "sessions-total")
        agent_sessions = answer(client, history, "sessions-total", Selection({"kind": ("agent",)}))
    assert total == {("current", "runs"): sum(runs.values()), ("previous", "runs"): 0}
    assert agent_runs[("current", "runs")] == sum(n for dims, n in runs.items() if dims[KIND] == "agent")
    assert dead[("current", "dead letters")] == pytest.approx(
        reference.dead_lettered / (reference.dead_lettered + sum(runs.values())), rel=1e-12
    )
    assert 0.01 < dead[("current", "dead letters")] < 0.03 and dead[("previous", "dead letters")] is None
    assert drops > 0 and dropped[("current", "dropped")] == pytest.approx(
        drops / (drops + sum(runs.values())), rel=1e-12
    )
    every = len(set().union(*sessions.values()))
    assert distinct[("current", "sessions")] == pytest.approx(every, rel=0.02)  # a sketch: about 1%
    assert agent_sessions[("current", "sessions")] == pytest.approx(len(sessions["agent"]), rel=0.02)
    assert len(sessions["agent"]) > 15_000


def test_client_drops_are_shares_of_the_events_sent_per_reason(history):
    reference = reference_rollup(history.stack.settings, history.values, 0)
    dropped = Counter()
    for (_, _, reason), count in reference.client_drops().items():
        dropped[reason] += count
    window = Window.last(3600, 3600)
    with history.stack.clickhouse() as client:
        shares = rows(client, BY_NAME["client-drops"].statement(history.stack.database, window))
        counted = Counter()
        for time_, _, runs in rows(client, BY_NAME["runs-per-kind"].statement(history.stack.database, window)):
            counted[time_] += runs
    assert {series for _, series, _ in shares} == set(dropped)
    dropped_share = Counter()  # per bucket: dropped / (dropped + counted), all reasons
    for time_, _, share in shares:
        dropped_share[time_] += share
    shown = Counter()  # a reason's share times the events sent in its bucket: the events it dropped
    for time_, reason, share in shares:
        shown[reason] += share * counted[time_] / (1 - dropped_share[time_])
    assert shown == pytest.approx(dropped, rel=1e-9) and sum(dropped.values()) > 1000


def test_runs_add_up_to_what_was_produced_from_the_minute_hourly_and_daily_tables(history):
    expected = Counter()
    for dims, runs in reference_runs(history).items():
        expected[dims[KIND]] += runs
    panel = BY_NAME["runs-per-kind"]
    with history.stack.clickhouse() as client:
        for interval in (60, 3600, DAY):  # each bucket reads the table of its grain
            assert (
                panel.sources[0].table(interval).name
                == {60: "runs_minute", 3600: "runs_hourly", DAY: "runs_daily"}[interval]
            )
            shown = Counter()
            for _, kind, runs in rows(client, panel.statement(history.stack.database, Window.last(2 * DAY, interval))):
                shown[kind] += runs
            assert shown == expected and sum(shown.values()) > 25_000, interval


def test_the_grafana_variables_list_what_the_filters_take(history):
    variables = {variable["name"]: variable for variable in analyst_variables()}
    assert list(variables) == ["database", *(f.name for f in FILTERS), "by"]
    with history.stack.clickhouse() as client:
        for f in FILTERS:
            variable = variables[f.name]
            assert variable["multi"] and variable["includeAll"] and variable["current"]["value"] == ["$__all"]
            listed = client.query(variable["query"].replace("${database}", history.stack.database)).result_rows
            offered = client.query(options_statement(f, history.stack.database)).result_rows
            assert [row[0] for row in listed] == [row[0] for row in offered]
            assert listed, f.name
    assert [option["value"] for option in variables["by"]["options"]] == ["default", "kind", "provider", "model", "sdk"]
    for panel in PANELS:  # a panel's Grafana SQL uses the variables of the filters it takes, and only those
        used = set(re.findall(r"\$\{(\w+):singlequote\}", panel.grafana()))
        assert used == set(panel.filters) | ({"by"} if len(panel.breakdowns) > 1 else set()), panel.name
    assert render_sql("{db}", Grafana()) == "${database}"


def query(history, *args: str) -> str:
    """`kern-telemetry query ...` against the history's ClickHouse; its standard output."""
    result = CliRunner().invoke(cli, ["query", *args], env=history.stack.env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def iso(value) -> str:
    return value.isoformat() + "+00:00" if isinstance(value, datetime) else value


def test_query_prints_a_panel_as_json_csv_or_a_table_with_the_rows_of_its_sql(history):
    stack = history.stack
    selection = Selection({"provider": ("openai",)}, "model")
    end = int(time.time())  # one range for the SQL and the three prints: `--since` would move between them
    span = [
        *("--from", datetime.fromtimestamp(end - 1800, UTC).isoformat()),
        *("--to", datetime.fromtimestamp(end, UTC).isoformat()),
    ]
    with stack.clickhouse() as client:
        for panel, where in (
            (BY_NAME["runs-per-kind"], selection),
            (BY_NAME["team-sizes"], Selection()),
            (BY_NAME["model-share"], Selection()),
        ):
            window = Window.between(end - 1800, end, 300 if panel.chart == TIME_SERIES else None)
            expected = [
                [iso(x), series, value]
                for x, series, value in rows(client, panel.statement(stack.database, window, where))
            ]
            options = ["--where", "provider=openai", "--by", "model"] if where.filters else []
            options += ["--interval", "5m"] if panel.chart == TIME_SERIES else []
            x = "time" if panel.chart == TIME_SERIES else "label"
            as_json = json.loads(query(history, "--report", panel.name, *span, *options, "--format", "json"))
            assert [[row[x], row["series"], row["value"]] for row in as_json] == expected
            as_csv = list(csv.reader(io.StringIO(query(history, "-r", panel.name, *span, *options, "--format", "csv"))))
            assert as_csv == [[x, "series", "value"], *([str(value) for value in row] for row in expected)]
            table = query(history, "-r", panel.name, *span, *options)
            assert panel.title in table
            if panel.unit == SHARE:  # shares as computed, not rounded
                assert any(len(repr(row[2]).split(".")[-1]) > 6 for row in expected)
            else:
                assert all(str(row[2]) in table for row in expected)


def test_query_answers_the_usual_questions_without_sql(history):
    top = json.loads(query(history, "-r", "top-models", "--since", "1h", "--format", "json"))
    assert len(top) == 10 and top[0]["value"] >= top[4]["value"] > 0
    combination = json.loads(
        query(
            history,
            "-r",
            "flag-combinations",
            "--where",
            "kind=agent",
            "--where",
            "flag=tools,memory",
            "--format",
            "json",
        )
    )
    assert combination[0]["label"] == "memory + tools" and 0 < combination[0]["value"] < 1
    sessions = json.loads(query(history, "-r", "sessions-total", "--since", "today", "--format", "json"))
    with history.stack.clickhouse() as client:  # today: the UTC day, however much of the history crossed midnight
        (today,) = client.query(
            f"SELECT uniqCombined64Merge(sessions) FROM {history.stack.database}.sessions_daily "
            "WHERE day = toDate(now(), 'UTC')"
        ).result_rows[0]
    assert sessions[0]["label"] == "current" and sessions[0]["value"] == today > 0
    drops = json.loads(query(history, "-r", "client-drops", "--format", "json"))
    assert {row["series"] for row in drops} >= {"queue_full", "send_failed"}
    interfaces = json.loads(query(history, "-r", "agentos-names", "--format", "json"))
    assert {"slack", "whatsapp", "a2a", "agui"} <= {row["label"] for row in interfaces}


def test_query_draws_time_series_and_bar_panels_in_the_terminal_with_iso_times(history):
    for name in ("quality", "workflow-db", "flag-adoption-by-model"):
        panel = BY_NAME[name]
        chart = query(history, "--report", name, "--chart")
        with history.stack.clickhouse() as client:
            series = {series for _, series, _ in client.query(panel.plain(history.stack.database)).result_rows}
        assert panel.title in chart and len(chart.splitlines()) >= 15
        assert ("runs" in series and "PostgresDb" in chart) or all(name_ in chart for name_ in series), chart
        assert re.search("[\u2800-\u28ff\u2580-\u259f█]", chart), chart  # braille lines or blocks: drawn
        if panel.chart == TIME_SERIES:
            assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", chart) and not re.search(r"\b\d\d/\d\d \d\d:", chart)


def test_query_runs_sql_with_the_placeholders_and_refuses_what_it_cannot_do(history):
    sql = "SELECT kind, sum(runs) AS runs FROM {db}.runs_minute WHERE {time_range} GROUP BY kind ORDER BY kind"
    counted = {row["kind"]: row["runs"] for row in json.loads(query(history, sql, "--format", "json"))}
    assert set(counted) == {"agent", "team", "workflow", "os"} and sum(counted.values()) > 25_000
    filtered = json.loads(
        query(
            history,
            "SELECT kind, sum(runs) AS runs FROM {runs} GROUP BY kind",
            "--where",
            "kind=team",
            "--format",
            "json",
        )
    )
    assert filtered == [{"kind": "team", "runs": counted["team"]}]
    empty = query(history, "-r", "top-models", "--where", "provider=nobody", "--format", "csv")
    assert empty == "label,series,value\n"  # no rows, still the header
    listed = query(history, "--list")
    assert all(panel.name in listed for panel in PANELS)
    runner = CliRunner()
    for args in (
        ["--report", "nope"],
        [sql, "--chart"],
        ["-r", "quality", "--since", "an hour"],
        ["-r", "quality", "--since", "5"],  # a duration needs its unit
        ["-r", "quality", "--interval", "30s"],  # finer than the stored minute
        ["-r", "quality", "--interval", "90m"],  # not whole hours beyond an hour
        ["-r", "top-models", "--interval", "5m"],  # bars have no bucket: ignored would be a lie
        ["-r", "sessions-total", "--where", "sdk=2.4"],  # sessions_daily has no SDK version
        ["-r", "top-models", "--by", "sdk"],
        ["-r", "quality", "--where", "colour=red"],
        ["-r", "quality", "--where", "kind"],
        [sql, "--where", "kind=agent"],
        ["-r", "quality", "--since", "1h", "--from", "2025-01-01"],
    ):
        result = runner.invoke(cli, ["query", *args], env=history.stack.env)
        assert result.exit_code == 2, (args, result.output)  # a usage error, said before anything runs
    beyond = runner.invoke(cli, ["query", "-r", "quality", "--since", "45d", "--format", "csv"], env=history.stack.env)
    assert beyond.exit_code == 0 and "quality_minute keeps 30 days: the range starts 45 days ago" in beyond.stderr
    hourly = runner.invoke(
        cli, ["query", "-r", "runs-per-kind", "--since", "45d", "--format", "csv"], env=history.stack.env
    )
    assert hourly.exit_code == 0 and hourly.stderr == ""  # 45 days: 12-hour buckets from runs_hourly (400 days)
    minute = runner.invoke(
        cli, ["query", "-r", "runs-per-kind", "--since", "45d", "--interval", "30m"], env=history.stack.env
    )
    assert "runs_minute keeps 30 days" in minute.stderr and "longer buckets read a longer-kept table" in minute.stderr


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
        assert answer(client, history, "team-coordination") == teams
        assert {c for c, _ in teams} >= {"route", "coordinate", "collaborate"}
        assert answer(client, history, "workflow-steps") == lengths
        assert answer(client, history, "workflow-step-kinds") == {
            (kind, "runs"): runs for kind, runs in step_kinds.items() if runs
        }
        shares = answer(client, history, "workflow-control-flow")
        assert shares == pytest.approx(
            {
                (kind, "share of workflow runs"): beyond[kind] / beyond["total"]
                for kind in ("parallel", "condition", "loop", "router")
                if beyond[kind]
            },
            rel=1e-12,
        )
        assert all(0 < share < 1 for share in shares.values()) and len(shares) == 4
        assert answer(client, history, "team-coordination", Selection({"kind": ("agent",)})) == {}  # teams only


def test_dead_letters_are_the_reasons_that_dead_letter():
    from pipeline.panels import DEAD_LETTERS
    from pipeline.rejections import Reason

    named = set(re.findall(r"'(\w+)'", DEAD_LETTERS))
    assert named == {r.value for r in Reason if r not in QUALITY_ONLY and r not in GONE} and "late" not in named
