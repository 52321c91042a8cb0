"""The ClickHouse schema the pipeline owns, generated for one node or for a cluster.

Tables (database `kern_telemetry` by default):

- `runs_minute`: the rollup the worker writes. One row per (window, dimension set) and flush; a
  SummingMergeTree sums the partial counts of the same key that different flushes and partitions wrote.
- `runs_hourly`, `runs_daily`: the same columns, kept by materialized views from `runs_minute`.
- `quality_minute`: events not counted in the runs tables (dead-lettered, late) and notes about counted
  ones (redacted values, replaced timestamps), per window, kind and reason.
- `ingest_flushes`: per source partition, the offset range of the latest flush. Written before the
  flush's data; the worker replays that range on assignment (see `pipeline/sink.py`).
- views `flag_runs_*` (runs with each flag on) and `feature_combos_*` (runs per sorted flag set).

With `cluster` set, every table becomes a Replicated* table `<name>_local` created ON CLUSTER, with a
Distributed table `<name>` in front of it; the statements come from the same column and key lists.
"""

from __future__ import annotations

from dataclasses import dataclass

DIMENSION_COLUMNS = (
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
DIMENSION_NAMES = tuple(name for name, _ in DIMENSION_COLUMNS)
RUNS_COLUMNS = ("window_start", *DIMENSION_NAMES, "runs")
QUALITY_COLUMNS = ("window_start", "kind", "reason", "events")
FLUSH_COLUMNS = ("topic", "partition", "start_offset", "end_offset", "events")  # flushed_at: DEFAULT

# Analysts filter by kind, provider and model first, then by time; the rest completes the summing key.
_RUNS_PRIMARY_KEY = ("kind", "model_provider", "model_id", "window_start")
_RUNS_SORTING_KEY = (*_RUNS_PRIMARY_KEY, *(n for n in DIMENSION_NAMES if n not in _RUNS_PRIMARY_KEY))

#: How many recent insert blocks each table remembers for deduplicating a retried flush.
DEDUP_WINDOW = 10_000

ROLLUPS = (("hourly", "toStartOfHour"), ("daily", "toStartOfDay"))


@dataclass(frozen=True)
class SchemaOptions:
    database: str = "kern_telemetry"
    cluster: str | None = None
    retention_minute_days: int = 30
    retention_hour_days: int = 400
    retention_day_days: int = 0

    @classmethod
    def from_settings(cls, settings) -> SchemaOptions:
        return cls(settings.clickhouse_database, settings.clickhouse_cluster, settings.retention_minute_days,
                   settings.retention_hour_days, settings.retention_day_days)

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER {quote_ident(self.cluster)}" if self.cluster else ""

    def retention_days(self, table: str) -> int:
        if table == "runs_hourly":
            return self.retention_hour_days
        if table == "runs_daily":
            return self.retention_day_days
        return self.retention_minute_days


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]
    engine: str  # without the Replicated prefix, e.g. "SummingMergeTree"
    order_by: tuple[str, ...]
    primary_key: tuple[str, ...] | None = None
    partition_by: str | None = None
    ttl_column: str | None = None  # retention applies when set
    fixed_ttl_days: int | None = None  # retention that is not configurable
    sharding_key: str = "rand()"

    def physical_name(self, opts: SchemaOptions) -> str:
        return f"{self.name}_local" if opts.cluster else self.name

    def ttl_days(self, opts: SchemaOptions) -> int:
        return self.fixed_ttl_days if self.fixed_ttl_days is not None else opts.retention_days(self.name)

    def ttl_clause(self, opts: SchemaOptions) -> str:
        days = self.ttl_days(opts)
        return f"{self.ttl_column} + INTERVAL {days} DAY" if self.ttl_column and days else ""

    def create(self, opts: SchemaOptions) -> list[str]:
        db = quote_ident(opts.database)
        engine = self.engine + "()"
        if opts.cluster:
            engine = (f"Replicated{self.engine}('/clickhouse/tables/{{shard}}/{opts.database}/{self.name}', "
                      f"'{{replica}}')")
        columns = ",\n  ".join(f"{quote_ident(n)} {t}" for n, t in self.columns)
        parts = [f"CREATE TABLE IF NOT EXISTS {db}.{quote_ident(self.physical_name(opts))}{opts.on_cluster} (\n"
                 f"  {columns}\n) ENGINE = {engine}"]
        if self.partition_by:
            parts.append(f"PARTITION BY {self.partition_by}")
        if self.primary_key:
            parts.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        parts.append(f"ORDER BY ({', '.join(self.order_by)})")
        if ttl := self.ttl_clause(opts):
            parts.append(f"TTL {ttl}")
        if not opts.cluster:  # replicated tables deduplicate by default (replicated_deduplication_window)
            parts.append(f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}")
        statements = ["\n".join(parts)]
        if opts.cluster:
            statements.append(
                f"CREATE TABLE IF NOT EXISTS {db}.{quote_ident(self.name)}{opts.on_cluster} "
                f"AS {db}.{quote_ident(self.physical_name(opts))} "
                f"ENGINE = Distributed({quote_ident(opts.cluster)}, {db}, "
                f"{quote_ident(self.physical_name(opts))}, {self.sharding_key})")
        return statements

    def modify_ttl(self, opts: SchemaOptions) -> str | None:
        """The ALTER that brings the table's TTL in line with the configured retention."""
        if not self.ttl_column:
            return None
        target = f"{quote_ident(opts.database)}.{quote_ident(self.physical_name(opts))}{opts.on_cluster}"
        ttl = self.ttl_clause(opts)
        return f"ALTER TABLE {target} MODIFY TTL {ttl}" if ttl else f"ALTER TABLE {target} REMOVE TTL"


def _runs_table(name: str) -> Table:
    return Table(
        name=name,
        columns=(("window_start", "DateTime('UTC')"), *DIMENSION_COLUMNS, ("runs", "UInt64")),
        engine="SummingMergeTree",
        partition_by="toYYYYMM(window_start)",
        primary_key=_RUNS_PRIMARY_KEY,
        order_by=_RUNS_SORTING_KEY,
        ttl_column="window_start",
        # Rows of the same dimension set must meet on one shard to be summed by merges.
        sharding_key="cityHash64(kind, model_provider, model_id)",
    )


RUNS_MINUTE = _runs_table("runs_minute")
RUNS_ROLLUPS = tuple((_runs_table(f"runs_{suffix}"), function) for suffix, function in ROLLUPS)
QUALITY_MINUTE = Table(
    name="quality_minute",
    columns=(("window_start", "DateTime('UTC')"), ("kind", "LowCardinality(String)"),
             ("reason", "LowCardinality(String)"), ("events", "UInt64")),
    engine="SummingMergeTree",
    partition_by="toYYYYMM(window_start)",
    order_by=("reason", "kind", "window_start"),
    ttl_column="window_start",
    sharding_key="cityHash64(reason, kind)",
)
INGEST_FLUSHES = Table(
    name="ingest_flushes",
    columns=(("topic", "String"), ("partition", "UInt32"), ("start_offset", "UInt64"), ("end_offset", "UInt64"),
             ("events", "UInt64"), ("flushed_at", "DateTime64(3, 'UTC') DEFAULT now64(3)")),
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


def rollup_views(opts: SchemaOptions) -> list[str]:
    """Materialized views from runs_minute to the hourly and daily tables (on the local tables in a
    cluster, so each shard rolls up its own rows)."""
    db = quote_ident(opts.database)
    source = f"{db}.{quote_ident(RUNS_MINUTE.physical_name(opts))}"
    dims = ", ".join(DIMENSION_NAMES)
    return [
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{quote_ident(table.name + '_mv')}{opts.on_cluster} "
        f"TO {db}.{quote_ident(table.physical_name(opts))} AS "
        f"SELECT {function}(window_start) AS window_start, {dims}, sum(runs) AS runs "
        f"FROM {source} GROUP BY window_start, {dims}"
        for table, function in RUNS_ROLLUPS
    ]


def analyst_views(opts: SchemaOptions) -> list[str]:
    """Plain views over each runs table: per-flag counts and per-feature-combination counts."""
    db = quote_ident(opts.database)
    statements = []
    for table in (RUNS_MINUTE, *(t for t, _ in RUNS_ROLLUPS)):
        suffix = table.name.removeprefix("runs_")
        source = f"{db}.{quote_ident(table.name)}"
        statements += [
            f"CREATE VIEW IF NOT EXISTS {db}.{quote_ident('flag_runs_' + suffix)}{opts.on_cluster} AS "
            f"SELECT window_start, kind, model_provider, model_id, arrayJoin(features) AS flag, sum(runs) AS runs "
            f"FROM {source} GROUP BY window_start, kind, model_provider, model_id, flag",
            f"CREATE VIEW IF NOT EXISTS {db}.{quote_ident('feature_combos_' + suffix)}{opts.on_cluster} AS "
            f"SELECT window_start, kind, model_provider, model_id, features, sum(runs) AS runs "
            f"FROM {source} GROUP BY window_start, kind, model_provider, model_id, features",
        ]
    return statements


def create_statements(opts: SchemaOptions) -> list[str]:
    """Every statement of the schema, in dependency order; each is idempotent (IF NOT EXISTS)."""
    statements = [f"CREATE DATABASE IF NOT EXISTS {quote_ident(opts.database)}{opts.on_cluster}"]
    for table in TABLES:
        statements += table.create(opts)
    return statements + rollup_views(opts) + analyst_views(opts)


def retention_statements(opts: SchemaOptions) -> list[str]:
    return [stmt for table in TABLES if (stmt := table.modify_ttl(opts))]
