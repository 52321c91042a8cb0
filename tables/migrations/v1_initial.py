"""Version 1, as released: runs, quality and flush tables; hourly and daily rollups; analyst views.

Frozen: this DDL shipped, so it never changes (`tests/golden/schema-v1-*.sql`). A later change is a new
version that adds an ALTER or a new object.
"""

from __future__ import annotations

from tables.ddl import SchemaOptions, Table, materialized_view, view

_DIMENSIONS = (
    ("kind", "LowCardinality(String)"),
    ("sdk_version", "LowCardinality(String)"),
    ("model_provider", "LowCardinality(String)"),
    ("model_name", "LowCardinality(String)"),
    ("model_id", "LowCardinality(String)"),
    ("db_type", "LowCardinality(String)"),
    ("parser_provider", "LowCardinality(String)"),
    ("parser_model_id", "LowCardinality(String)"),
    ("output_provider", "LowCardinality(String)"),
    ("output_model_id", "LowCardinality(String)"),
    ("member_bucket", "LowCardinality(String)"),
    ("features", "Array(LowCardinality(String))"),
)
_NAMES = tuple(name for name, _ in _DIMENSIONS)
_PRIMARY_KEY = ("kind", "model_provider", "model_id", "window_start")


def _runs(suffix: str, retention: str) -> Table:
    return Table(
        name=f"runs_{suffix}",
        columns=(("window_start", "DateTime('UTC')"), *_DIMENSIONS, ("runs", "UInt64")),
        engine="SummingMergeTree",
        partition_by="toYYYYMM(window_start)",
        primary_key=_PRIMARY_KEY,
        order_by=(*_PRIMARY_KEY, *(n for n in _NAMES if n not in _PRIMARY_KEY)),
        ttl_column="window_start",
        retention=retention,
        sharding_key="cityHash64(kind, model_provider, model_id)",
    )


RUNS_MINUTE = _runs("minute", "minute")
RUNS_ROLLUPS = ((_runs("hourly", "hour"), "toStartOfHour"), (_runs("daily", "day"), "toStartOfDay"))
QUALITY_MINUTE = Table(
    name="quality_minute",
    columns=(
        ("window_start", "DateTime('UTC')"),
        ("kind", "LowCardinality(String)"),
        ("reason", "LowCardinality(String)"),
        ("events", "UInt64"),
    ),
    engine="SummingMergeTree",
    partition_by="toYYYYMM(window_start)",
    order_by=("reason", "kind", "window_start"),
    ttl_column="window_start",
    retention="minute",
    sharding_key="cityHash64(reason, kind)",
)
INGEST_FLUSHES = Table(
    name="ingest_flushes",
    columns=(
        ("topic", "String"),
        ("partition", "UInt32"),
        ("start_offset", "UInt64"),
        ("end_offset", "UInt64"),
        ("events", "UInt64"),
        ("flushed_at", "DateTime64(3, 'UTC') DEFAULT now64(3)"),
    ),
    engine="ReplacingMergeTree",
    order_by=("topic", "partition"),
    sharding_key="partition",
)
SCHEMA_MIGRATIONS = Table(
    name="schema_migrations",
    columns=(("version", "UInt32"), ("name", "String"), ("applied_at", "DateTime64(3, 'UTC') DEFAULT now64(3)")),
    engine="ReplacingMergeTree",
    order_by=("version",),
    sharding_key="version",
)
TABLES = (RUNS_MINUTE, *(table for table, _ in RUNS_ROLLUPS), QUALITY_MINUTE, INGEST_FLUSHES, SCHEMA_MIGRATIONS)


def statements(opts: SchemaOptions) -> list[str]:
    statements = [f"CREATE DATABASE IF NOT EXISTS {opts.db}{opts.on_cluster}"]
    for table in TABLES:
        statements += table.create(opts)
    dims = ", ".join(_NAMES)
    for table, function in RUNS_ROLLUPS:
        statements.append(
            materialized_view(
                f"{table.name}_mv",
                table,
                f"SELECT {function}(window_start) AS window_start, {dims}, sum(runs) AS runs "
                f"FROM {RUNS_MINUTE.local_target(opts)} GROUP BY window_start, {dims}",
                opts,
            )
        )
    for table in (RUNS_MINUTE, *(t for t, _ in RUNS_ROLLUPS)):
        suffix = table.name.removeprefix("runs_")
        statements += [
            view(
                f"flag_runs_{suffix}",
                f"SELECT window_start, kind, model_provider, model_id, arrayJoin(features) AS flag, sum(runs) AS runs "
                f"FROM {table.target(opts)} GROUP BY window_start, kind, model_provider, model_id, flag",
                opts,
            ),
            view(
                f"feature_combos_{suffix}",
                f"SELECT window_start, kind, model_provider, model_id, features, sum(runs) AS runs "
                f"FROM {table.target(opts)} GROUP BY window_start, kind, model_provider, model_id, features",
                opts,
            ),
        ]
    return statements
