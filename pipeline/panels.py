"""The analysts' panels, each defined once: `kern-telemetry query --report NAME`, the page of `make run`,
and the Grafana dashboard (`devstack/grafana.py` generates it from these) all run the SQL written here, with
the same filters and breakdowns, translated per front end.

**Filters** (`FILTERS`: kind, provider, model, SDK version, flags) and **breakdowns** (`BREAKDOWNS`: kind,
provider, model, SDK minor version) are defined once, with the SQL condition each one means; every
**source** (`SOURCES`: the runs tables, quality, sessions, client drops, launches, team and workflow runs)
says which column each filter and breakdown reads there. A panel takes the filters all of its sources have,
and a breakdown when its series is one (`Panel.by`). A filter's values reach ClickHouse only as bound
parameters (`{f_kind:Array(String)}`, the page and the CLI) or as Grafana's quoted variables; a breakdown is
one of a fixed set of column expressions, never text from a request.

A panel's SQL holds placeholders, which each translation (`Plain`, `Grafana`) renders:

| placeholder | means | plain SQL (page, CLI) | Grafana (ClickHouse plugin) |
|---|---|---|---|
| `{db}` | the tables' database | `KERN_CLICKHOUSE_DATABASE`, quoted | `${database}`, a dashboard constant |
| `{from}`, `{to}` | the range [from, to) | `toDateTime(<epoch>, 'UTC')` | `$__fromTime`, `$__toTime` |
| `{interval_s}` | the bucket, in seconds | whole minutes, hours or days (`INTERVALS`) | `$__interval_s` |
| `{bucket}` | `window_start` rounded down to the bucket | `toStartOfInterval(...)` | `$__timeInterval(window_start)` |
| `{runs}`, `{quality}`... | a source's rows in the range, filtered | bound parameters | `$__conditionalAll` |
| `{runs:previous}` | the same for the previous period of the same length | | |
| `{runs:-flag}` | the same without the flag filter | | |
| `{by}` | the breakdown's expression in the panel's first source | the chosen breakdown | `multiIf` over `${by}` |
| `{flags}` | the chosen flags (`has_...`), sorted; empty without a flag filter | | |

A source reads the table of the bucket's grain: the coarsest of its minute, hourly and daily tables whose
grain divides the bucket (`runs_minute` for 5-minute buckets, `runs_hourly` for 6-hour ones, `runs_daily`
for days), so a range up to a table's retention reads a table that still holds it. The SQL itself chooses
(`UNION ALL` of the tables, each under its condition on `{interval_s}`), so Grafana reads the same tables.

Every panel returns three columns: `time` (a time series), or `label` (bars and stats), then `series`
and `value`; a stat's labels are `current` and `previous` (the period before, of the same length).
Adding a panel is one `Panel(...)` entry in `PANELS`; `make dashboards` regenerates the Grafana dashboard
and the tests run the new SQL in both translations.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Protocol

from pipeline.rejections import GONE, QUALITY_ONLY, Reason
from tables.ddl import SchemaOptions, Table, quote_ident
from tables.migrations.v1_initial import QUALITY_MINUTE, RUNS_MINUTE, RUNS_ROLLUPS
from tables.migrations.v3_client_reports import CLIENT_DROPS_DAILY, CLIENT_DROPS_MINUTE
from tables.migrations.v4_privacy import SESSIONS_DAILY
from tables.migrations.v5_launches import LAUNCHES_TABLES
from tables.migrations.v8_patterns import (
    TEAM_RUNS_MINUTE,
    TEAM_RUNS_ROLLUPS,
    WORKFLOW_RUNS_MINUTE,
    WORKFLOW_RUNS_ROLLUPS,
)

TIME_SERIES, BARS, STAT = "timeseries", "bars", "stat"
COUNT, SHARE = "count", "share"  # units: a share is a fraction of 1
DEFAULT_RANGE_S = 3600
MAX_POINTS = 120  # per series: the bucket grows with the range beyond this
MINUTE, HOUR, DAY = 60, 3600, 86400
#: The buckets a chart uses: whole minutes below an hour, whole hours below a day, then days, so that each
#: reads the table of its grain and its edges fall on the boundaries of the stored windows.
INTERVALS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
OTHER = "(other)"  # the series beyond a breakdown's most used values (stored values never look like this)
TOP_SERIES = 8


def default_interval(range_s: int) -> int:
    """The finest bucket of `INTERVALS` giving at most MAX_POINTS points (days beyond that)."""
    return next((interval for interval in INTERVALS if range_s / interval <= MAX_POINTS), DAY)


def interval_problem(interval_s: int) -> str | None:
    """Why a bucket cannot be used, or None: the stored windows are a minute, an hour or a day wide."""
    if interval_s < MINUTE or interval_s % MINUTE:
        return "a bucket is whole minutes: the finest stored window is a minute"
    if (interval_s > HOUR and interval_s % HOUR) or (interval_s > DAY and interval_s % DAY):
        return "a bucket beyond an hour is whole hours, beyond a day whole days (the hourly and daily tables)"
    return None


def grain(interval_s: int, grains: Iterable[int]) -> int:
    """The coarsest of `grains` that divides the bucket (the finest when none does)."""
    grains = sorted(grains)
    return max((g for g in grains if interval_s % g == 0), default=grains[0])


class Window(NamedTuple):
    """The range [start, end) in epoch seconds, and its bucket; `start` falls on a bucket boundary."""

    start: int
    end: int
    interval: int

    @classmethod
    def last(cls, range_s: int, interval_s: int | None = None, now: float | None = None) -> Window:
        now = int(time.time() if now is None else now)
        return cls.between(now - range_s, now, interval_s)

    @classmethod
    def between(cls, start: int, end: int, interval_s: int | None = None) -> Window:
        if end <= start:
            raise ValueError("the range ends before it starts")
        interval = interval_s or default_interval(end - start)
        return cls(start - start % interval, end, interval)

    @classmethod
    def today(cls, interval_s: int | None = None, now: float | None = None) -> Window:
        """Since midnight UTC."""
        now = int(time.time() if now is None else now)
        return cls.between(now - now % DAY, max(now, now - now % DAY + 1), interval_s)


# --- filters, breakdowns, sources --------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    name: str  # the URL and `--where` key, and the Grafana variable
    label: str
    condition: str  # over `{column}` (the source's) and `{values}` (an Array(String))
    options: str  # the values to offer, most used first, ties by value (the page's controls, Grafana's variable)
    values: str = "{raw}"  # the chosen values as the condition reads them


MODEL = "concat(model_provider, ' ', model_id)"  # a model with its provider: the same id at two providers differs
MINOR = "arrayStringConcat(arraySlice(splitByChar('.', sdk_version), 1, 2), '.')"
FLAG_NAME = "replaceOne({}, 'has_', '')"  # a flag as shown: `tools` for `has_tools`

FILTERS: tuple[Filter, ...] = (
    Filter(
        "kind",
        "Kind",
        "has({values}, {column})",
        "SELECT kind FROM {db}.runs_daily GROUP BY kind ORDER BY sum(runs) DESC, kind",
    ),
    Filter(
        "provider",
        "Provider",
        "has({values}, {column})",
        "SELECT model_provider FROM {db}.runs_daily WHERE model_provider != 'none' GROUP BY model_provider "
        "ORDER BY sum(runs) DESC, model_provider",
    ),
    # `gpt-4o` (at any provider) or `openai gpt-4o` (a breakdown's and a bar's label)
    Filter(
        "model",
        "Model",
        "hasAny({values}, {column})",
        f"SELECT {MODEL} AS model FROM {{db}}.runs_daily WHERE model_id != 'none' GROUP BY model "
        "ORDER BY sum(runs) DESC, model LIMIT 200",
    ),
    # a minor version (`2.4`) or a full one (`2.4.1`)
    Filter(
        "sdk",
        "SDK version",
        "arrayExists(v -> {column} = v OR startsWith({column}, concat(v, '.')), {values})",
        f"SELECT {MINOR} AS minor FROM {{db}}.runs_daily GROUP BY minor ORDER BY minor DESC",
    ),
    # runs with every chosen flag on; `tools` and `has_tools` are the same flag
    Filter(
        "flag",
        "Flags",
        "hasAll({column}, {values})",
        f"SELECT {FLAG_NAME.format('flag')} AS name FROM {{db}}.runs_daily ARRAY JOIN features AS flag "
        "WHERE startsWith(flag, 'has_') GROUP BY name ORDER BY sum(runs) DESC, name",
        # (no parenthesis in a literal: the plugin's $__conditionalAll counts them)
        "arrayMap(f -> if(match(f, '^[a-z0-9_]+$') AND NOT startsWith(f, 'has_'), concat('has_', f), f), {raw})",
    ),
)
FILTER_BY_NAME = {f.name: f for f in FILTERS}
BREAKDOWNS = {"kind": "Kind", "provider": "Provider", "model": "Model", "sdk": "SDK minor version"}
MAX_VALUES, MAX_VALUE_LENGTH = 50, 200


@dataclass(frozen=True)
class Source:
    """Rows a panel reads: the tables of one rollup by grain (finest first), the column each filter reads
    there, and the expression of each breakdown."""

    name: str  # its placeholder
    tables: tuple[Table, ...]
    grains: tuple[int, ...]
    columns: Mapping[str, str]  # filter -> column expression
    breakdowns: Mapping[str, str]  # breakdown -> expression
    time: str = "window_start"  # a DateTime, or `day` (a Date)

    def table(self, interval_s: int) -> Table:
        """The table the SQL reads for this bucket (`union` says the same in SQL)."""
        return self.tables[self.grains.index(grain(interval_s, self.grains))]

    def union(self) -> str:
        """The table of the bucket's grain, chosen in SQL (so that Grafana chooses as the page does)."""
        if len(self.tables) == 1:
            return f"{{db}}.{self.tables[0].name}"
        parts = []
        for i, table in enumerate(self.tables):
            conditions = [f"{{interval_s}} % {self.grains[i]} = 0"] if i else []
            if i + 1 < len(self.tables):
                conditions.append(f"{{interval_s}} % {self.grains[i + 1]} != 0")
            parts.append(f"SELECT * FROM {{db}}.{table.name} WHERE {' AND '.join(conditions)}")
        return "(" + " UNION ALL ".join(parts) + ")"

    def period(self, previous: bool) -> str:
        if self.time == "day":  # whole days: those the range touches, or as many before them
            first, last = "toDate({from}, 'UTC')", "toDate({to} - 1, 'UTC')"
            if previous:
                return f"day >= {first} - ({last} - {first} + 1) AND day < {first}"
            return f"day >= {first} AND day <= {last}"
        if previous:
            return f"{self.time} >= {{from}} - ({{to}} - {{from}}) AND {self.time} < {{from}}"
        return f"{self.time} >= {{from}} AND {self.time} < {{to}}"


_RUNS_COLUMNS = {
    "kind": "kind",
    "provider": "model_provider",
    "model": f"[model_id, {MODEL}]",
    "sdk": "sdk_version",
    "flag": "features",
}
_RUNS_BREAKDOWNS = {"kind": "kind", "provider": "model_provider", "model": MODEL, "sdk": MINOR}
_GRAINS = (MINUTE, HOUR, DAY)


def _pattern_source(name: str, kind: str, tables: tuple[Table, ...]) -> Source:
    """Runs of one kind with its pattern (launches, team runs, workflow runs): the SDK version is there."""
    return Source(name, tables, _GRAINS, {"kind": f"'{kind}'", "sdk": "sdk_version"}, {"sdk": MINOR})


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source("runs", (RUNS_MINUTE, *(table for table, _ in RUNS_ROLLUPS)), _GRAINS, _RUNS_COLUMNS, _RUNS_BREAKDOWNS),
        Source("quality", (QUALITY_MINUTE,), (MINUTE,), {"kind": "kind"}, {"kind": "kind"}),
        # one sketch per flag ('' for every run): a flag filter reads one flag's sketch
        Source(
            "sessions",
            (SESSIONS_DAILY,),
            (DAY,),
            {**{k: v for k, v in _RUNS_COLUMNS.items() if k != "sdk"}, "flag": "[flag]"},
            {k: v for k, v in _RUNS_BREAKDOWNS.items() if k != "sdk"},
            time="day",
        ),
        Source(
            "drops", (CLIENT_DROPS_MINUTE, CLIENT_DROPS_DAILY), (MINUTE, DAY), {"sdk": "sdk_version"}, {"sdk": MINOR}
        ),
        _pattern_source("launches", "os", LAUNCHES_TABLES),
        _pattern_source("team_runs", "team", (TEAM_RUNS_MINUTE, *(table for table, _ in TEAM_RUNS_ROLLUPS))),
        _pattern_source(
            "workflow_runs", "workflow", (WORKFLOW_RUNS_MINUTE, *(table for table, _ in WORKFLOW_RUNS_ROLLUPS))
        ),
    )
}


# --- what an analyst chose, and its SQL ----------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Filters (a filter's values: any of them; flags: all of them) and a breakdown (None: the panel's own)."""

    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    by: str | None = None

    def __post_init__(self) -> None:
        for name, values in self.filters.items():
            if name not in FILTER_BY_NAME:
                raise ValueError(f"unknown filter {name!r}: one of {', '.join(FILTER_BY_NAME)}")
            if not values or len(values) > MAX_VALUES or any(not v or len(v) > MAX_VALUE_LENGTH for v in values):
                raise ValueError(f"{name}: give 1 to {MAX_VALUES} values of 1 to {MAX_VALUE_LENGTH} characters")
        if self.by is not None and self.by not in BREAKDOWNS:
            raise ValueError(f"unknown breakdown {self.by!r}: one of {', '.join(BREAKDOWNS)}")

    @classmethod
    def parse(cls, pairs: Iterable[tuple[str, str]], by: str | None = None) -> Selection:
        """From `name=value[,value...]` pairs (a URL's query, `--where`); a name may come back."""
        filters: dict[str, list[str]] = {}
        for name, text in pairs:
            for value in text.split(","):
                if value.strip() and value.strip() not in filters.setdefault(name, []):
                    filters[name].append(value.strip())
        return cls({name: tuple(values) for name, values in filters.items() if values}, by or None)


class Statement(NamedTuple):
    sql: str
    parameters: dict


class Translation(Protocol):
    """How placeholders become SQL for one front end."""

    def primitive(self, name: str) -> str: ...  # db, from, to, interval_s

    def bucket(self, column: str) -> str: ...

    def applies(self, f: Filter) -> bool: ...  # whether the SQL holds the filter's condition

    def values(self, f: Filter) -> str: ...  # the chosen values, where the filter applies

    def condition(self, f: Filter, condition: str) -> str: ...

    def selected(self, f: Filter) -> str: ...  # the chosen values, empty when none

    def breakdown(self, source: Source, default: str) -> str: ...


class Plain(Translation):
    """ClickHouse SQL for one window and selection: times inline, filter values as bound parameters."""

    def __init__(self, database: str, window: Window, selection: Selection = Selection()):
        self.database, self.window, self.selection = database, window, selection
        self.parameters: dict[str, list[str]] = {}

    def primitive(self, name: str) -> str:
        if name == "db":
            return quote_ident(self.database)
        if name == "interval_s":
            return str(int(self.window.interval))
        return f"toDateTime({int(self.window.start if name == 'from' else self.window.end)}, 'UTC')"

    def bucket(self, column: str) -> str:
        return f"toStartOfInterval({column}, INTERVAL {int(self.window.interval)} SECOND)"

    def values(self, f: Filter) -> str:
        self.parameters[f"f_{f.name}"] = list(self.selection.filters.get(f.name, ()))
        return f.values.replace("{raw}", f"{{f_{f.name}:Array(String)}}")

    def applies(self, f: Filter) -> bool:
        return f.name in self.selection.filters

    def condition(self, f: Filter, condition: str) -> str:
        return condition

    def selected(self, f: Filter) -> str:
        return self.values(f)

    def breakdown(self, source: Source, default: str) -> str:
        by = self.selection.by or default
        if by not in source.breakdowns:
            raise ValueError(f"{source.tables[0].name} has no breakdown by {by}: {', '.join(source.breakdowns)}")
        return source.breakdowns[by]


class Grafana(Translation):
    """The Grafana ClickHouse plugin's macros and the dashboard's variables (`devstack/grafana.py`): a
    filter is a multi-value variable with an All option, `$__conditionalAll` drops its condition on All."""

    PRIMITIVES: ClassVar = {
        "db": "${database}",
        "from": "$__fromTime",
        "to": "$__toTime",
        "interval_s": "$__interval_s",
    }

    def primitive(self, name: str) -> str:
        return self.PRIMITIVES[name]

    def bucket(self, column: str) -> str:
        return f"$__timeInterval({column})"

    def values(self, f: Filter) -> str:
        return f.values.replace("{raw}", f"CAST([${{{f.name}:singlequote}}], 'Array(String)')")

    def applies(self, f: Filter) -> bool:
        return True

    def condition(self, f: Filter, condition: str) -> str:
        return f"$__conditionalAll({condition}, ${f.name})"

    def selected(self, f: Filter) -> str:
        return f"if($__conditionalAll(0, ${f.name}), CAST([], 'Array(String)'), {self.values(f)})"

    def breakdown(self, source: Source, default: str) -> str:
        branches = [
            f"${{by:singlequote}} = '{name}', {expression}"
            for name, expression in source.breakdowns.items()
            if name != default
        ]
        return (
            f"multiIf({', '.join(branches)}, {source.breakdowns[default]})" if branches else source.breakdowns[default]
        )


_PLACEHOLDER = re.compile(r"\{([a-z_]+)(?::([a-z_:-]+))?\}")
_PRIMITIVES = ("db", "from", "to", "interval_s")


def render(sql: str, translation: Translation, filters: Iterable[str] = (), by: str | None = None) -> str:
    """`sql` with its placeholders rendered by `translation`; `filters`: those the statement takes, `by`:
    the default breakdown of `{by}` (read in the first source the SQL names)."""
    filters = tuple(filters)
    sources = [name for name, _ in _PLACEHOLDER.findall(sql) if name in SOURCES]

    def generic(text: str) -> str:
        return render(text, translation, filters, by)

    def expand(match: re.Match) -> str:
        name, modifiers = match[1], (match[2] or "").split(":")
        if name in _PRIMITIVES:
            return translation.primitive(name)
        if name == "bucket":
            return translation.bucket("window_start")
        if name == "time_range":
            return generic(SOURCES["runs"].period(False))
        if name == "day_range":
            return generic("window_start >= toStartOfDay({from}) AND window_start < {to}")
        if name == "flags":
            return f"arraySort(arrayDistinct({translation.selected(FILTER_BY_NAME['flag'])}))"
        if name == "by":
            if by is None or not sources:
                raise ValueError("{by} needs a breakdown and a source")
            return translation.breakdown(SOURCES[sources[0]], by)
        if name in SOURCES:
            source = SOURCES[name]
            conditions = [generic(source.period("previous" in modifiers))]
            for f in FILTERS:
                if (
                    f.name in filters
                    and f.name in source.columns
                    and f"-{f.name}" not in modifiers
                    and translation.applies(f)
                ):
                    condition = f.condition.replace("{column}", source.columns[f.name]).replace(
                        "{values}", translation.values(f)
                    )
                    conditions.append(translation.condition(f, condition))
            where = " AND ".join(conditions)
            return f"(SELECT * FROM {generic(source.union())} WHERE {where})"
        raise ValueError(f"unknown placeholder {match[0]}")

    return _PLACEHOLDER.sub(expand, sql)


def statement(
    sql: str,
    database: str,
    window: Window,
    selection: Selection = Selection(),
    filters: Iterable[str] | None = None,
    by: str | None = None,
) -> Statement:
    """Plain SQL and its bound parameters; `filters`: those it takes (default: every one its sources have)."""
    plain = Plain(database, window, selection)
    rendered = render(sql, plain, sources_filters(sql) if filters is None else filters, by)
    return Statement(rendered, plain.parameters)


def sources_of(sql: str) -> tuple[Source, ...]:
    return tuple(
        SOURCES[name] for name in dict.fromkeys(name for name, _ in _PLACEHOLDER.findall(sql)) if name in SOURCES
    )


def sources_filters(sql: str) -> tuple[str, ...]:
    """The filters every source of `sql` has (numerator and denominator filtered alike)."""
    sources = sources_of(sql)
    return tuple(f.name for f in FILTERS if sources and all(f.name in s.columns for s in sources))


# --- panels ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    name: str  # `--report NAME`, the page's and Grafana's panel id
    title: str
    description: str
    chart: str  # TIME_SERIES (time, series, value), BARS (label, series, value) or STAT (current/previous)
    unit: str  # COUNT or SHARE
    measure: str  # what a value counts, or is a share of: runs, events, sessions...
    sql: str
    by: str | None = None  # its default breakdown, when its series is one (None: its series are its own)
    label_filter: str | None = None  # drill-down: the filter a bar's label sets
    series_filter: str | None = None  # drill-down: the filter a series sets (default: the breakdown)
    no_filters: bool = False  # what it measures cannot be told apart by the filters (dead letters)

    @property
    def filters(self) -> tuple[str, ...]:
        return () if self.no_filters else sources_filters(self.sql)

    @property
    def breakdowns(self) -> tuple[str, ...]:
        return tuple(sources_of(self.sql)[0].breakdowns) if self.by else ()

    @property
    def sources(self) -> tuple[Source, ...]:
        return sources_of(self.sql)

    def drill(self, selection: Selection = Selection()) -> dict[str, str | None]:
        """Which filter a click on a bar's label or on a series sets."""
        by = selection.by if selection.by in self.breakdowns else self.by
        return {"label": self.label_filter, "series": self.series_filter or by}

    def statement(self, database: str, window: Window, selection: Selection = Selection()) -> Statement:
        by = selection.by if selection.by in self.breakdowns else self.by
        return statement(
            self.sql,
            database,
            window,
            Selection({k: v for k, v in selection.filters.items() if k in self.filters}, by),
            self.filters,
            self.by,
        )

    def plain(self, database: str, range_s: int = DEFAULT_RANGE_S, interval_s: int | None = None) -> str:
        """The SQL of the last `range_s` seconds without filters (nothing to bind)."""
        return self.statement(database, Window.last(range_s, interval_s)).sql

    def grafana(self) -> str:
        return render(self.sql, Grafana(), self.filters, self.by)

    def refusals(self, selection: Selection) -> list[str]:
        """What the panel cannot do of `selection` (the CLI refuses it, the page says it on the panel)."""
        problems = []
        for name in selection.filters:
            if name not in self.filters:
                lacking = [s.tables[0].name for s in self.sources if name not in s.columns]
                why = (
                    ", ".join(lacking) + (" has" if len(lacking) == 1 else " have") + " none"
                    if lacking
                    else "what it measures cannot be told apart by it"
                )
                problems.append(f"not filtered by {FILTER_BY_NAME[name].label.lower()} ({why})")
        if selection.by and selection.by not in self.breakdowns:
            problems.append(
                f"not broken down by {selection.by} ("
                + (f"it breaks down by {', '.join(self.breakdowns)}" if self.breakdowns else "its series are its own")
                + ")"
            )
        return problems

    def notes(
        self, selection: Selection, window: Window, retention: SchemaOptions, now: float | None = None
    ) -> list[str]:
        """What a reader of the panel's answer must know: filters and a breakdown it ignores (but the breakdown
        of a panel whose series are its own: that goes without saying), retention it exceeds."""
        notes = self.refusals(Selection(selection.filters, selection.by if self.breakdowns else None))
        now = time.time() if now is None else now
        for source in self.sources:
            table = source.table(window.interval)
            days = retention.retention_days(table.retention) if table.retention else 0
            if days and window.start < now - days * DAY:
                notes.append(
                    f"{table.name} keeps {days} days: the range starts "
                    f"{(now - window.start) / DAY:.0f} days ago"
                    + ("" if table is source.tables[-1] else ", longer buckets read a longer-kept table")
                )
        if "sessions" in (s.name for s in self.sources) and len(selection.filters.get("flag", ())) > 1:
            notes.append("sessions_daily keeps a sketch per flag: distinct sessions are filtered by one flag at most")
        return notes


def _over_time(source: str, value: str, where: str = "", share: bool = False) -> str:
    """A time series of `value` per bucket and breakdown value: the most used values, the rest as (other)."""
    total, where = f"sum({value})", f" WHERE {where}" if where else ""
    shown = f"{total} / sum({total}) OVER (PARTITION BY time)" if share else total
    return f"""WITH top AS (SELECT {{by}} AS s FROM {{{source}}}{where}
             GROUP BY s ORDER BY {total} DESC, s LIMIT {TOP_SERIES})
SELECT {{bucket}} AS time, if({{by}} IN (SELECT s FROM top), {{by}}, '{OTHER}') AS series, {shown} AS value
FROM {{{source}}}{where}
GROUP BY time, series ORDER BY time, series"""


def _stat(series: str, value: Callable[[str], str]) -> str:
    """A stat: `value` over the range and over the period before it (`value` of a source modifier)."""
    return f"""SELECT label, '{series}' AS series, value FROM (
  SELECT 'current' AS label, {value("")} AS value UNION ALL SELECT 'previous', {value(":previous")})
ORDER BY label"""


MODEL_KINDS = "kind IN ('agent', 'team')"  # the kinds that run a model and carry flags
DEAD_LETTERS = ", ".join(f"'{r}'" for r in Reason if r not in QUALITY_ONLY and r not in GONE)
# the combinations of flags a run has: with chosen flags, those and each one more; without, every pair
COMBOS = """if(empty(chosen),
      arrayMap(t -> [t.1, t.2], arrayFlatten(arrayMap((a, i) -> arrayMap(b -> (a, b), arraySlice(flags, i + 1)),
                                                        flags, arrayEnumerate(flags)))),
      if(hasAll(flags, chosen), arrayPushFront(arrayMap(f -> arraySort(arrayPushBack(chosen, f)),
                                                        arrayFilter(f -> NOT has(chosen, f), flags)), chosen), []))"""

PANELS: tuple[Panel, ...] = (
    Panel(
        "runs-total",
        "Runs",
        "Agent, team and workflow runs and AgentOS launches in the range, and in the "
        "period of the same length before it.",
        STAT,
        COUNT,
        "runs",
        _stat("runs", lambda p: f"(SELECT sum(runs) FROM {{runs{p}}})"),
    ),
    Panel(
        "sessions-total",
        "Distinct sessions",
        "Sessions on the days the range touches (UTC; a sketch of keyed "
        "hashes: about 1% error, no session identifier stored), and on as many days before.",
        STAT,
        COUNT,
        "sessions",
        _stat("sessions", lambda p: f"(SELECT uniqCombined64Merge(sessions) FROM {{sessions{p}}})"),
    ),
    Panel(
        "dead-letter-share",
        "Dead-letter share",
        "Events dead-lettered (not counted: malformed, oversized...) "
        "per event consumed, in the range and before it. Dead letters have no model or flag: never filtered.",
        STAT,
        SHARE,
        "events",
        _stat(
            "dead letters",
            lambda p: f"(SELECT sum(events) FROM {{quality{p}}} WHERE reason IN ({DEAD_LETTERS})) "
            f"/ nullIf((SELECT sum(events) FROM {{quality{p}}} WHERE reason IN ({DEAD_LETTERS})) + "
            f"(SELECT sum(runs) FROM {{runs{p}}}), 0)",
        ),
        no_filters=True,
    ),
    Panel(
        "client-drop-share",
        "Client drop share",
        "Events SDK clients report they could not deliver, per event "
        "they tried to send (dropped and counted), in the range and before it.",
        STAT,
        SHARE,
        "events",
        _stat(
            "dropped",
            lambda p: f"(SELECT sum(events) FROM {{drops{p}}}) / nullIf((SELECT sum(events) FROM "
            f"{{drops{p}}}) + (SELECT sum(runs) FROM {{runs{p}}}), 0)",
        ),
    ),
    Panel(
        "runs-per-kind",
        "Runs over time",
        "Agent, team and workflow runs and AgentOS launches (os), per kind or the breakdown chosen.",
        TIME_SERIES,
        COUNT,
        "runs",
        _over_time("runs", "runs"),
        by="kind",
    ),
    Panel(
        "top-models",
        "Top models",
        "Agent and team runs per model (with its provider: the same id at two "
        "providers is two models), the 10 most used.",
        BARS,
        COUNT,
        "runs",
        f"""SELECT {MODEL} AS label, 'runs' AS series, sum(runs) AS value
FROM {{runs}} WHERE {MODEL_KINDS}
GROUP BY label ORDER BY value DESC, label LIMIT 10""",
        label_filter="model",
    ),
    Panel(
        "provider-share",
        "Model provider share",
        "Share of agent and team runs per model provider.",
        TIME_SERIES,
        SHARE,
        "agent and team runs",
        _over_time("runs", "runs", MODEL_KINDS, share=True),
        by="provider",
    ),
    Panel(
        "model-share",
        "Model share",
        f"Share of agent and team runs per model: the {TOP_SERIES} most used in the range, the rest as {OTHER}.",
        TIME_SERIES,
        SHARE,
        "agent and team runs",
        _over_time("runs", "runs", MODEL_KINDS, share=True),
        by="model",
    ),
    Panel(
        "flag-adoption",
        "Feature flag adoption",
        "Share of agent and team runs with each feature flag on "
        "(flags fewer than k installations sent, stored as (rare), are not flags of their own).",
        TIME_SERIES,
        SHARE,
        "agent and team runs",
        f"""SELECT time, series, flagged / total AS value
FROM (SELECT {{bucket}} AS time, {FLAG_NAME.format("flag")} AS series, sum(runs) AS flagged
      FROM {{runs}} ARRAY JOIN features AS flag WHERE {MODEL_KINDS} AND startsWith(flag, 'has_')
      GROUP BY time, series) AS flags
JOIN (SELECT {{bucket}} AS time, sum(runs) AS total FROM {{runs}} WHERE {MODEL_KINDS} GROUP BY time) AS totals
USING time ORDER BY time, series""",
        series_filter="flag",
    ),
    Panel(
        "flag-combinations",
        "Feature combinations adopted",
        "Share of agent and team runs with every flag of a "
        "combination on (whatever else they have): without a flag filter the 10 most adopted pairs; with one, "
        "the chosen flags and each flag used with them.",
        BARS,
        SHARE,
        "agent and team runs",
        f"""SELECT arrayStringConcat(arrayMap(f -> {FLAG_NAME.format("f")}, combo), ' + ') AS label,
       'share of runs' AS series,
       sum(runs) / (SELECT sum(runs) FROM {{runs:-flag}} WHERE {MODEL_KINDS}) AS value
FROM (SELECT runs, arrayFilter(f -> startsWith(f, 'has_'), features) AS flags, {{flags}} AS chosen
      FROM {{runs:-flag}} WHERE {MODEL_KINDS})
ARRAY JOIN {COMBOS} AS combo
GROUP BY label ORDER BY value DESC, label LIMIT 10""",
        label_filter="flag",
    ),
    Panel(
        "flag-adoption-by-model",
        "Feature flag adoption per model",
        "Share of agent and team runs with each flag on, for the 8 most used models.",
        BARS,
        SHARE,
        "agent and team runs",
        f"""SELECT label, series, flagged / total AS value
FROM (SELECT {MODEL} AS label, {FLAG_NAME.format("flag")} AS series, sum(runs) AS flagged
      FROM {{runs}} ARRAY JOIN features AS flag WHERE {MODEL_KINDS} AND startsWith(flag, 'has_')
      GROUP BY label, series) AS flags
JOIN (SELECT {MODEL} AS label, sum(runs) AS total FROM {{runs}} WHERE {MODEL_KINDS}
      GROUP BY label ORDER BY total DESC, label LIMIT 8) AS top USING label
ORDER BY total DESC, label, series""",
        label_filter="model",
        series_filter="flag",
    ),
    Panel(
        "feature-combos",
        "Feature combinations",
        "The 15 most used sets of flags on agent and team runs (exactly these flags on).",
        BARS,
        COUNT,
        "agent and team runs",
        f"""SELECT if(empty(features), '(no flag)', arrayStringConcat(arrayMap(f -> {FLAG_NAME.format("f")},
       features), ' + ')) AS label, 'runs' AS series, sum(runs) AS value
FROM {{runs}} WHERE {MODEL_KINDS}
GROUP BY label ORDER BY value DESC, label LIMIT 15""",
        label_filter="flag",
    ),
    Panel(
        "sdk-adoption",
        "SDK version adoption",
        "Share of all runs and launches per SDK minor version.",
        TIME_SERIES,
        SHARE,
        "runs",
        _over_time("runs", "runs", share=True),
        by="sdk",
    ),
    Panel(
        "team-sizes",
        "Team sizes",
        "Team runs per number of members.",
        BARS,
        COUNT,
        "team runs",
        """SELECT member_bucket AS label, 'runs' AS series, sum(runs) AS value
FROM {runs} WHERE kind = 'team'
GROUP BY label ORDER BY toUInt32OrNull(extract(label, '^[0-9]+')), label""",
    ),
    Panel(
        "team-coordination",
        "How teams coordinate",
        "Team runs per coordination mode (route: one member "
        "answers directly; coordinate: the leader delegates and composes; collaborate: every member gets the "
        "task; none: an older SDK) and per levels of teams nested below.",
        BARS,
        COUNT,
        "team runs",
        """SELECT coordination AS label, concat('nesting ', nesting) AS series, sum(runs) AS value
FROM {team_runs}
GROUP BY label, series ORDER BY label, series""",
    ),
    Panel(
        "workflow-steps",
        "Workflow lengths",
        "Workflow runs per number of top-level steps, and per levels of nested steps (none: an older SDK).",
        BARS,
        COUNT,
        "workflow runs",
        """SELECT steps AS label, concat('nesting ', nesting) AS series, sum(runs) AS value
FROM {workflow_runs}
GROUP BY label, series ORDER BY toUInt32OrNull(extract(label, '^[0-9]+')), label, series""",
    ),
    Panel(
        "workflow-step-kinds",
        "What workflows run",
        "Workflow runs using each kind of step, at any depth: "
        "agents, teams, functions, and the control flow around nested steps.",
        BARS,
        COUNT,
        "workflow runs",
        """SELECT step_kind AS label, 'runs' AS series, sum(runs) AS value
FROM {workflow_runs} ARRAY JOIN step_kinds AS step_kind WHERE step_kind != 'none'
GROUP BY label ORDER BY value DESC, label""",
    ),
    Panel(
        "workflow-control-flow",
        "Workflows beyond a sequence",
        "Share of workflow runs (of SDKs that report "
        "their steps) using parallel branches, conditions, loops or routers.",
        BARS,
        SHARE,
        "workflow runs",
        """SELECT kind AS label, 'share of workflow runs' AS series,
       sumIf(runs, has(step_kinds, kind)) / sum(runs) AS value
FROM {workflow_runs} ARRAY JOIN ['parallel', 'condition', 'loop', 'router'] AS kind
WHERE NOT has(step_kinds, 'none')
GROUP BY label ORDER BY value DESC, label""",
    ),
    Panel(
        "workflow-db",
        "Workflow runs by database",
        "Workflow runs per storage backend (db_type).",
        BARS,
        COUNT,
        "workflow runs",
        """SELECT db_type AS label, 'runs' AS series, sum(runs) AS value
FROM {runs} WHERE kind = 'workflow'
GROUP BY label ORDER BY value DESC, label""",
    ),
    Panel(
        "agentos-configurations",
        "AgentOS configurations",
        "AgentOS launches per number of agents, teams and workflows (none: not reported, as by older SDKs).",
        BARS,
        COUNT,
        "launches",
        """SELECT count.2 AS label, count.1 AS series, sum(launches) AS value
FROM {launches} ARRAY JOIN [('agents', agents), ('teams', teams), ('workflows', workflows)] AS count
GROUP BY label, series ORDER BY toUInt32OrNull(extract(label, '^[0-9]+')), label, series""",
    ),
    Panel(
        "agentos-names",
        "AgentOS interfaces and databases",
        "AgentOS launches serving each interface and using each db type.",
        BARS,
        COUNT,
        "launches",
        """SELECT name AS label, dimension AS series, sum(launches) AS value
FROM (SELECT launches, 'interfaces' AS dimension, interfaces AS names FROM {launches}
      UNION ALL SELECT launches, 'db_types', db_types FROM {launches}) ARRAY JOIN names AS name
WHERE name != 'none'
GROUP BY label, series ORDER BY series DESC, value DESC, label""",
    ),
    Panel(
        "distinct-sessions",
        "Distinct sessions per day",
        "Sessions per day (UTC) the range touches, per kind or "
        "the breakdown chosen (a sketch of keyed hashes: about 1% error, no session identifier stored).",
        BARS,
        COUNT,
        "sessions",
        """SELECT toString(day) AS label, {by} AS series, uniqCombined64Merge(sessions) AS value
FROM {sessions}
GROUP BY label, series ORDER BY label, series""",
        by="kind",
    ),
    Panel(
        "active-installations",
        "Daily active installations",
        "Installations that sent a usage event, per day "
        "(a sketch of keyed hashes of the SDK clients' daily pseudonyms: about 1% error; older SDKs send "
        "none).",
        BARS,
        COUNT,
        "installations",
        """SELECT toString(day) AS label, 'installations' AS series, uniqCombined64Merge(installations) AS value
FROM {sessions}
GROUP BY label, series ORDER BY label""",
    ),
    Panel(
        "quality",
        "Dead letters and notes by reason",
        "Events not counted (dead-lettered, late) and notes on "
        "counted ones (redacted or invalid values, replaced timestamps), per reason.",
        TIME_SERIES,
        COUNT,
        "events",
        """SELECT {bucket} AS time, reason AS series, sum(events) AS value
FROM {quality}
GROUP BY time, series ORDER BY time, series""",
    ),
    Panel(
        "client-drops",
        "Events SDK clients dropped",
        "What SDK clients report they could not deliver, per "
        "reason, as a share of the events they tried to send (dropped and counted).",
        TIME_SERIES,
        SHARE,
        "events sent",
        """SELECT time, series, dropped / (sum(dropped) OVER (PARTITION BY time) + counted) AS value
FROM (SELECT {bucket} AS time, reason AS series, sum(events) AS dropped FROM {drops} GROUP BY time, series) AS drops
LEFT JOIN (SELECT {bucket} AS time, sum(runs) AS counted FROM {runs} GROUP BY time) AS counted USING time
ORDER BY time, series""",
    ),
)
BY_NAME = {panel.name: panel for panel in PANELS}


def options_statement(f: Filter, database: str) -> str:
    """The SQL listing a filter's values (no parameters)."""
    return render(f.options, Plain(database, Window.last(DAY)))


def interval_label(interval_s: int) -> str:
    """The bucket as an axis title says it: `minute`, `5 min`, `hour`, `6 h`, `day`, `2 days`."""
    for unit, one, many in ((DAY, "day", " days"), (HOUR, "hour", " h"), (MINUTE, "minute", " min")):
        if interval_s % unit == 0:
            return one if interval_s == unit else f"{interval_s // unit}{many}"
    return f"{interval_s} s"
