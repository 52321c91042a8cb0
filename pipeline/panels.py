"""The analysts' panels, each defined once: `kern-telemetry query --report NAME`, the page of `make run`,
and the Grafana dashboard (`devstack/grafana.py` generates it from these) all run the SQL written here.

A panel's SQL uses four placeholders, which each front end translates:

| placeholder | means | Grafana (ClickHouse plugin) | plain SQL (page, CLI) |
|---|---|---|---|
| `{db}` | the tables' database | `${database}`, a dashboard constant | the configured database |
| `{time_range}` | `window_start` in the time range | `$__timeFilter(window_start)` | the last `range_s` seconds |
| `{day_range}` | a daily `window_start` whose day overlaps the range | `$__dateFilter(window_start)` | from the day `range_s` seconds ago |
| `{bucket}` | `window_start` rounded down to the chart's interval | `$__timeInterval(window_start)` | `interval_s` (at least a minute) |

Every panel returns three columns: `time` (a time series) or `label` (bars), then `series` and `value`.
Adding a panel is one `Panel(...)` entry in `PANELS`; `make dashboards` regenerates the Grafana dashboard
and the tests run the new SQL. Time-series panels read the minute tables (kept 30 days).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

TIME_SERIES, BARS = "timeseries", "bars"
COUNT, SHARE = "count", "share"  # units: a share is a fraction of 1
DEFAULT_RANGE_S = 3600
MAX_POINTS = 120  # per series: the plain interval grows with the range beyond this

_PLACEHOLDER = re.compile(r"\{(db|time_range|day_range|bucket)\}")
GRAFANA = {"db": "${database}", "time_range": "$__timeFilter(window_start)",
           "day_range": "$__dateFilter(window_start)", "bucket": "$__timeInterval(window_start)"}


def default_interval(range_s: int) -> int:
    """Whole minutes, so that a series has at most MAX_POINTS points (the windows are a minute wide)."""
    return 60 * max(1, math.ceil(range_s / MAX_POINTS / 60))


def plain_sql(sql: str, database: str, range_s: int = DEFAULT_RANGE_S, interval_s: int | None = None) -> str:
    """`sql` with its placeholders as ClickHouse SQL: the last `range_s` seconds, `interval_s` buckets."""
    interval_s = interval_s or default_interval(range_s)
    values = {"db": database,
              "time_range": f"window_start >= now() - INTERVAL {int(range_s)} SECOND",
              "day_range": f"window_start >= toStartOfDay(now() - INTERVAL {int(range_s)} SECOND)",
              "bucket": f"toStartOfInterval(window_start, INTERVAL {int(interval_s)} SECOND)"}
    return _PLACEHOLDER.sub(lambda match: values[match[1]], sql)


def grafana_sql(sql: str) -> str:
    """`sql` with its placeholders as the Grafana ClickHouse plugin's macros and the `database` constant."""
    return _PLACEHOLDER.sub(lambda match: GRAFANA[match[1]], sql)


@dataclass(frozen=True)
class Panel:
    name: str  # `--report NAME`, the page's and Grafana's panel id
    title: str
    description: str
    chart: str  # TIME_SERIES (time, series, value) or BARS (label, series, value)
    unit: str  # COUNT or SHARE
    sql: str

    def plain(self, database: str, range_s: int = DEFAULT_RANGE_S, interval_s: int | None = None) -> str:
        return plain_sql(self.sql, database, range_s, interval_s)

    def grafana(self) -> str:
        return grafana_sql(self.sql)


PANELS: tuple[Panel, ...] = (
    Panel("runs-per-kind", "Runs per kind", "Agent, team and workflow runs and AgentOS launches.", TIME_SERIES, COUNT,
          """SELECT {bucket} AS time, kind AS series, sum(runs) AS value
FROM {db}.runs_minute WHERE {time_range}
GROUP BY time, series ORDER BY time, series"""),
    Panel("provider-share", "Model provider share", "Share of agent and team runs per model provider.",
          TIME_SERIES, SHARE,
          """SELECT {bucket} AS time, model_provider AS series,
       round(sum(runs) / sum(sum(runs)) OVER (PARTITION BY time), 4) AS value
FROM {db}.runs_minute WHERE {time_range} AND kind IN ('agent', 'team')
GROUP BY time, series ORDER BY time, series"""),
    Panel("model-share", "Model share", "Share of agent and team runs per model: the 8 most used in the range, the "
          "rest as other.", TIME_SERIES, SHARE,
          """WITH top AS (SELECT concat(model_provider, ' ', model_id) AS model FROM {db}.runs_minute
             WHERE {time_range} AND kind IN ('agent', 'team') GROUP BY model ORDER BY sum(runs) DESC LIMIT 8)
SELECT {bucket} AS time, if(concat(model_provider, ' ', model_id) AS model IN (SELECT model FROM top), model, 'other')
       AS series, round(sum(runs) / sum(sum(runs)) OVER (PARTITION BY time), 4) AS value
FROM {db}.runs_minute WHERE {time_range} AND kind IN ('agent', 'team')
GROUP BY time, series ORDER BY time, series"""),
    Panel("flag-adoption", "Feature flag adoption", "Share of agent and team runs with each feature flag on.",
          TIME_SERIES, SHARE,
          """SELECT time, flag AS series, round(flagged / total, 4) AS value
FROM (SELECT {bucket} AS time, flag, sum(runs) AS flagged FROM {db}.flag_runs_minute
      WHERE {time_range} AND kind IN ('agent', 'team') GROUP BY time, flag) AS flags
JOIN (SELECT {bucket} AS time, sum(runs) AS total FROM {db}.runs_minute
      WHERE {time_range} AND kind IN ('agent', 'team') GROUP BY time) AS totals USING time
ORDER BY time, series"""),
    Panel("flag-adoption-by-model", "Feature flag adoption per model",
          "Share of agent and team runs with each flag on, for the 8 most used models.", BARS, SHARE,
          """SELECT label, flag AS series, round(flagged / total, 4) AS value
FROM (SELECT concat(model_provider, ' ', model_id) AS label, flag, sum(runs) AS flagged FROM {db}.flag_runs_minute
      WHERE {time_range} AND kind IN ('agent', 'team') GROUP BY label, flag) AS flags
JOIN (SELECT concat(model_provider, ' ', model_id) AS label, sum(runs) AS total FROM {db}.runs_minute
      WHERE {time_range} AND kind IN ('agent', 'team') GROUP BY label ORDER BY total DESC LIMIT 8) AS top USING label
ORDER BY total DESC, label, series"""),
    Panel("feature-combos", "Feature combinations", "The 15 most used sets of flags on agent and team runs.",
          BARS, COUNT,
          """SELECT if(empty(features), '(no flag)', arrayStringConcat(arrayMap(f -> replaceOne(f, 'has_', ''), features),
       ' + ')) AS label, 'runs' AS series, sum(runs) AS value
FROM {db}.feature_combos_minute WHERE {time_range} AND kind IN ('agent', 'team')
GROUP BY label ORDER BY value DESC, label LIMIT 15"""),
    Panel("sdk-adoption", "SDK version adoption", "Share of all runs and launches per SDK minor version.",
          TIME_SERIES, SHARE,
          """SELECT {bucket} AS time, arrayStringConcat(arraySlice(splitByChar('.', sdk_version), 1, 2), '.') AS series,
       round(sum(runs) / sum(sum(runs)) OVER (PARTITION BY time), 4) AS value
FROM {db}.runs_minute WHERE {time_range}
GROUP BY time, series ORDER BY time, series"""),
    Panel("team-sizes", "Team sizes", "Team runs per number of members.", BARS, COUNT,
          """SELECT member_bucket AS label, 'runs' AS series, sum(runs) AS value
FROM {db}.runs_minute WHERE {time_range} AND kind = 'team'
GROUP BY label ORDER BY toUInt32OrNull(extract(label, '^[0-9]+')), label"""),
    Panel("team-coordination", "How teams coordinate", "Team runs per coordination mode (route: one member "
          "answers directly; coordinate: the leader delegates and composes; collaborate: every member gets the "
          "task; none: an older SDK) and per levels of teams nested below.", BARS, COUNT,
          """SELECT coordination AS label, concat('nesting ', nesting) AS series, sum(runs) AS value
FROM {db}.team_runs_minute WHERE {time_range}
GROUP BY label, series ORDER BY label, series"""),
    Panel("workflow-steps", "Workflow lengths", "Workflow runs per number of top-level steps, and per levels of "
          "nested steps (none: an older SDK).", BARS, COUNT,
          """SELECT steps AS label, concat('nesting ', nesting) AS series, sum(runs) AS value
FROM {db}.workflow_runs_minute WHERE {time_range}
GROUP BY label, series ORDER BY toUInt32OrNull(extract(label, '^[0-9]+')), label, series"""),
    Panel("workflow-step-kinds", "What workflows run", "Workflow runs using each kind of step, at any depth: "
          "agents, teams, functions, and the control flow around nested steps.", BARS, COUNT,
          """SELECT step_kind AS label, 'runs' AS series, sum(runs) AS value
FROM {db}.workflow_step_kinds_minute WHERE {time_range} AND step_kind != 'none'
GROUP BY label ORDER BY value DESC, label"""),
    Panel("workflow-control-flow", "Workflows beyond a sequence", "Share of workflow runs (of SDKs that report "
          "their steps) using parallel branches, conditions, loops or routers.", BARS, SHARE,
          """SELECT kind AS label, 'share of workflow runs' AS series,
       round(sumIf(runs, has(step_kinds, kind)) / sum(runs), 4) AS value
FROM {db}.workflow_runs_minute ARRAY JOIN ['parallel', 'condition', 'loop', 'router'] AS kind
WHERE {time_range} AND NOT has(step_kinds, 'none')
GROUP BY label ORDER BY value DESC, label"""),
    Panel("workflow-db", "Workflow runs by database", "Workflow runs per storage backend (db_type).", BARS, COUNT,
          """SELECT db_type AS label, 'runs' AS series, sum(runs) AS value
FROM {db}.runs_minute WHERE {time_range} AND kind = 'workflow'
GROUP BY label ORDER BY value DESC, label"""),
    Panel("agentos-configurations", "AgentOS configurations", "AgentOS launches per number of agents, teams and "
          "workflows (none: not reported, as by older SDKs).", BARS, COUNT,
          """SELECT count.2 AS label, count.1 AS series, sum(launches) AS value
FROM {db}.launches_minute ARRAY JOIN [('agents', agents), ('teams', teams), ('workflows', workflows)] AS count
WHERE {time_range}
GROUP BY label, series ORDER BY toUInt32OrNull(extract(label, '^[0-9]+')), label, series"""),
    Panel("agentos-names", "AgentOS interfaces and databases", "AgentOS launches serving each interface and using "
          "each db type.", BARS, COUNT,
          """SELECT name AS label, dimension AS series, sum(launches) AS value
FROM {db}.launch_names_minute WHERE {time_range} AND name != 'none'
GROUP BY label, series ORDER BY series DESC, value DESC, label"""),
    Panel("distinct-sessions", "Distinct sessions", "Sessions per day and kind (a sketch of keyed hashes: about "
          "1% error, no session identifier stored).", BARS, COUNT,
          """SELECT toString(window_start) AS label, kind AS series, uniqCombined64Merge(sessions) AS value
FROM (SELECT day AS window_start, kind, flag, sessions FROM {db}.sessions_daily)
WHERE {day_range} AND flag = ''
GROUP BY label, series ORDER BY label, series"""),
    Panel("active-installations", "Daily active installations", "Installations that sent a usage event, per day "
          "(a sketch of keyed hashes of the SDK clients' daily pseudonyms: about 1% error; older SDKs send "
          "none).", BARS, COUNT,
          """SELECT toString(window_start) AS label, 'installations' AS series, uniqCombined64Merge(installations) AS value
FROM (SELECT day AS window_start, flag, installations FROM {db}.sessions_daily)
WHERE {day_range} AND flag = ''
GROUP BY label, series ORDER BY label"""),
    Panel("quality", "Dead letters and notes by reason", "Events not counted (dead-lettered, late) and notes on "
          "counted ones (redacted or invalid values, replaced timestamps), per reason.", TIME_SERIES, COUNT,
          """SELECT {bucket} AS time, reason AS series, sum(events) AS value
FROM {db}.quality_minute WHERE {time_range}
GROUP BY time, series ORDER BY time, series"""),
    Panel("client-drops", "Events SDK clients dropped", "What SDK clients report they could not deliver, per day "
          "and reason.", BARS, COUNT,
          """SELECT toString(toDate(window_start)) AS label, reason AS series, sum(events) AS value
FROM {db}.client_drops_daily WHERE {day_range}
GROUP BY label, series ORDER BY label, series"""),
)
BY_NAME = {panel.name: panel for panel in PANELS}
