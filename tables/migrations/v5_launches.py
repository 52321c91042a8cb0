"""Version 5: AgentOS launches with their configuration (`pipeline/dimensions.py`, `LAUNCH_DIMENSIONS`).

`launches_minute` (written by the worker), `launches_hourly` and `launches_daily` (materialized views):
launches per window, SDK version, bucketed counts of agents, teams and workflows, and the sets of
interface and database names. Views `launch_names_*` count launches per name (`dimension` is
`interfaces` or `db_types`). Launches are still counted in the runs tables too, as kind `os`.
"""

from __future__ import annotations

from tables.ddl import SchemaOptions, Table, materialized_view, view

_TEXT = "LowCardinality(String)"
_CONFIGURATION = (
    ("agents", _TEXT),
    ("teams", _TEXT),
    ("workflows", _TEXT),
    ("interfaces", f"Array({_TEXT})"),
    ("db_types", f"Array({_TEXT})"),
)
_NAMES = ", ".join(name for name, _ in _CONFIGURATION)


def _launches(suffix: str, retention: str) -> Table:
    return Table(
        name=f"launches_{suffix}",
        columns=(("window_start", "DateTime('UTC')"), ("sdk_version", _TEXT), *_CONFIGURATION, ("launches", "UInt64")),
        engine="SummingMergeTree",
        partition_by="toYYYYMM(window_start)",
        order_by=("agents", "teams", "workflows", "sdk_version", "interfaces", "db_types", "window_start"),
        ttl_column="window_start",
        retention=retention,
        sharding_key="cityHash64(agents, teams, workflows, sdk_version)",
    )


LAUNCHES_MINUTE = _launches("minute", "minute")
LAUNCHES_ROLLUPS = ((_launches("hourly", "hour"), "toStartOfHour"), (_launches("daily", "day"), "toStartOfDay"))
LAUNCHES_TABLES = (LAUNCHES_MINUTE, *(table for table, _ in LAUNCHES_ROLLUPS))


def statements(opts: SchemaOptions) -> list[str]:
    statements = [statement for table in LAUNCHES_TABLES for statement in table.create(opts)]
    for table, function in LAUNCHES_ROLLUPS:
        statements.append(
            materialized_view(
                f"{table.name}_mv",
                table,
                f"SELECT {function}(window_start) AS window_start, sdk_version, {_NAMES}, sum(launches) AS launches "
                f"FROM {LAUNCHES_MINUTE.local_target(opts)} GROUP BY window_start, sdk_version, {_NAMES}",
                opts,
            )
        )
    for table in LAUNCHES_TABLES:
        statements.append(
            view(
                f"launch_names_{table.name.removeprefix('launches_')}",
                "SELECT window_start, sdk_version, dimension, name, sum(launches) AS launches FROM ("
                "SELECT window_start, sdk_version, 'interfaces' AS dimension, arrayJoin(interfaces) AS name, launches "
                f"FROM {table.target(opts)} UNION ALL "
                "SELECT window_start, sdk_version, 'db_types' AS dimension, arrayJoin(db_types) AS name, launches "
                f"FROM {table.target(opts)}) GROUP BY window_start, sdk_version, dimension, name",
                opts,
            )
        )
    return statements
