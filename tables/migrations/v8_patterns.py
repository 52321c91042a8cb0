"""Version 8: team coordination and workflow orchestration patterns (`pipeline/dimensions.py`,
`TEAM_DIMENSIONS`, `WORKFLOW_DIMENSIONS`).

`team_runs_minute` (written by the worker), `team_runs_hourly` and `team_runs_daily` (materialized views):
team runs per window, SDK version, coordination mode, bucketed count of member teams and nesting depth.
`workflow_runs_minute`, `_hourly`, `_daily`: workflow runs per window, SDK version, bucketed step count,
the set of step kinds used and bucketed nesting depth; views `workflow_step_kinds_*` count runs per step
kind. Team and workflow runs are still counted in the runs tables too.
"""

from __future__ import annotations

from tables.ddl import SchemaOptions, Table, materialized_view, view

_TEXT = "LowCardinality(String)"
TEAM_PATTERN = (("coordination", _TEXT), ("member_teams", _TEXT), ("nesting", _TEXT))
WORKFLOW_PATTERN = (("steps", _TEXT), ("step_kinds", f"Array({_TEXT})"), ("nesting", _TEXT))


def _pattern_tables(prefix: str, pattern: tuple[tuple[str, str], ...]) -> tuple[Table, tuple[tuple[Table, str], ...]]:
    """The minute table of a kind's runs with their pattern, and its hourly and daily rollups."""
    names = tuple(name for name, _ in pattern)

    def table(suffix: str, retention: str) -> Table:
        return Table(
            name=f"{prefix}_{suffix}",
            columns=(("window_start", "DateTime('UTC')"), ("sdk_version", _TEXT), *pattern, ("runs", "UInt64")),
            engine="SummingMergeTree",
            partition_by="toYYYYMM(window_start)",
            order_by=(*names, "sdk_version", "window_start"),
            ttl_column="window_start",
            retention=retention,
            sharding_key=f"cityHash64({', '.join(n for n, t in pattern if not t.startswith('Array'))}, sdk_version)",
        )

    return table("minute", "minute"), (
        (table("hourly", "hour"), "toStartOfHour"),
        (table("daily", "day"), "toStartOfDay"),
    )


TEAM_RUNS_MINUTE, TEAM_RUNS_ROLLUPS = _pattern_tables("team_runs", TEAM_PATTERN)
WORKFLOW_RUNS_MINUTE, WORKFLOW_RUNS_ROLLUPS = _pattern_tables("workflow_runs", WORKFLOW_PATTERN)
PATTERN_TABLES = (
    TEAM_RUNS_MINUTE,
    *(t for t, _ in TEAM_RUNS_ROLLUPS),
    WORKFLOW_RUNS_MINUTE,
    *(t for t, _ in WORKFLOW_RUNS_ROLLUPS),
)


def statements(opts: SchemaOptions) -> list[str]:
    statements = [statement for table in PATTERN_TABLES for statement in table.create(opts)]
    for minute, rollups, pattern in (
        (TEAM_RUNS_MINUTE, TEAM_RUNS_ROLLUPS, TEAM_PATTERN),
        (WORKFLOW_RUNS_MINUTE, WORKFLOW_RUNS_ROLLUPS, WORKFLOW_PATTERN),
    ):
        names = ", ".join(name for name, _ in pattern)
        for table, function in rollups:
            statements.append(
                materialized_view(
                    f"{table.name}_mv",
                    table,
                    f"SELECT {function}(window_start) AS window_start, sdk_version, {names}, sum(runs) AS runs "
                    f"FROM {minute.local_target(opts)} GROUP BY window_start, sdk_version, {names}",
                    opts,
                )
            )
    for table in (WORKFLOW_RUNS_MINUTE, *(t for t, _ in WORKFLOW_RUNS_ROLLUPS)):
        statements.append(
            view(
                f"workflow_step_kinds_{table.name.removeprefix('workflow_runs_')}",
                "SELECT window_start, sdk_version, arrayJoin(step_kinds) AS step_kind, sum(runs) AS runs "
                f"FROM {table.target(opts)} GROUP BY window_start, sdk_version, step_kind",
                opts,
            )
        )
    return statements
