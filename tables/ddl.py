"""DDL building blocks: tables, views and column additions, generated for one node or for a cluster.

Released migrations (`tables/migrations/`) are written with these blocks, so for a given input their
output must never change: `tests/golden/` keeps the first release's DDL as it shipped, and a test compares.
Add parameters with defaults that keep today's output; never change what an existing call generates.

On a cluster every table is a Replicated* table `<name>_local` created ON CLUSTER, with a Distributed
table `<name>` in front of it. Deduplication of a retried flush works per shard, so a retried insert must
split into the same per-shard blocks: every table names a deterministic sharding key (there is no default,
and `rand()` is refused).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchemaOptions:
    database: str = "kern_telemetry"
    cluster: str | None = None
    retention_minute_days: int = 30
    retention_hour_days: int = 400
    retention_day_days: int = 0

    @classmethod
    def from_settings(cls, settings) -> SchemaOptions:
        return cls(
            settings.clickhouse_database,
            settings.clickhouse_cluster,
            settings.retention_minute_days,
            settings.retention_hour_days,
            settings.retention_day_days,
        )

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER {quote_ident(self.cluster)}" if self.cluster else ""

    @property
    def db(self) -> str:
        return quote_ident(self.database)

    def retention_days(self, retention: str) -> int:
        return {"minute": self.retention_minute_days, "hour": self.retention_hour_days, "day": self.retention_day_days}[
            retention
        ]


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


#: How many recent insert blocks each single-node table remembers for deduplicating a retried flush
#: (replicated tables deduplicate by default: replicated_deduplication_window).
DEDUP_WINDOW = 10_000


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]
    engine: str  # without the Replicated prefix, e.g. "SummingMergeTree"
    order_by: tuple[str, ...]
    sharding_key: str  # a deterministic function of the row: per-shard deduplication depends on it
    primary_key: tuple[str, ...] | None = None
    partition_by: str | None = None
    ttl_column: str | None = None  # with `retention` or `fixed_ttl_days`: rows expire that long after it
    retention: str | None = None  # which configured retention applies: "minute", "hour" or "day"
    fixed_ttl_days: int | None = None  # a retention that is not configurable

    def __post_init__(self) -> None:
        if "rand" in self.sharding_key.lower():
            raise ValueError(f"{self.name}: a random sharding key breaks per-shard deduplication of retried flushes")

    def physical_name(self, opts: SchemaOptions) -> str:
        return f"{self.name}_local" if opts.cluster else self.name

    def target(self, opts: SchemaOptions) -> str:
        """The table inserts and reads go to (the Distributed table on a cluster)."""
        return f"{opts.db}.{quote_ident(self.name)}"

    def local_target(self, opts: SchemaOptions) -> str:
        return f"{opts.db}.{quote_ident(self.physical_name(opts))}"

    def ttl_clause(self, opts: SchemaOptions) -> str:
        days = opts.retention_days(self.retention) if self.retention else self.fixed_ttl_days or 0
        return f"{self.ttl_column} + INTERVAL {days} DAY" if self.ttl_column and days else ""

    def create(self, opts: SchemaOptions) -> list[str]:
        engine = self.engine + "()"
        if self.engine == "Null":  # a table that only feeds materialized views: nothing stored, no keys
            engine = "Null"
        elif opts.cluster:
            engine = (
                f"Replicated{self.engine}('/clickhouse/tables/{{shard}}/{opts.database}/{self.name}', '{{replica}}')"
            )
        columns = ",\n  ".join(f"{quote_ident(n)} {t}" for n, t in self.columns)
        parts = [
            f"CREATE TABLE IF NOT EXISTS {self.local_target(opts)}{opts.on_cluster} (\n  {columns}\n) ENGINE = {engine}"
        ]
        if engine == "Null":
            return [parts[0], *self._distributed(opts)]
        if self.partition_by:
            parts.append(f"PARTITION BY {self.partition_by}")
        if self.primary_key:
            parts.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        parts.append(f"ORDER BY ({', '.join(self.order_by)})")
        if ttl := self.ttl_clause(opts):
            parts.append(f"TTL {ttl}")
        if not opts.cluster:
            parts.append(f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}")
        return ["\n".join(parts), *self._distributed(opts)]

    def _distributed(self, opts: SchemaOptions) -> list[str]:
        if not opts.cluster:
            return []
        return [
            f"CREATE TABLE IF NOT EXISTS {self.target(opts)}{opts.on_cluster} AS {self.local_target(opts)} "
            f"ENGINE = Distributed({quote_ident(opts.cluster)}, {opts.db}, "
            f"{quote_ident(self.physical_name(opts))}, {self.sharding_key})"
        ]

    def add_columns(self, columns: tuple[tuple[str, str], ...], opts: SchemaOptions) -> list[str]:
        """ALTERs that add `columns` (with their DEFAULTs) to the table, and to its Distributed table."""
        additions = ", ".join(f"ADD COLUMN IF NOT EXISTS {quote_ident(n)} {t}" for n, t in columns)
        targets = [self.local_target(opts), *([self.target(opts)] if opts.cluster else [])]
        return [f"ALTER TABLE {target}{opts.on_cluster} {additions}" for target in targets]

    def modify_ttl(self, opts: SchemaOptions) -> str | None:
        """The ALTER that brings the table's TTL in line with the configured retention."""
        if not self.ttl_column:
            return None
        target = f"{self.local_target(opts)}{opts.on_cluster}"
        ttl = self.ttl_clause(opts)
        return f"ALTER TABLE {target} MODIFY TTL {ttl}" if ttl else f"ALTER TABLE {target} REMOVE TTL"


def materialized_view(name: str, target: Table, select: str, opts: SchemaOptions) -> str:
    """A materialized view into `target`: on a cluster into its local table, and `select` reads local
    tables (`Table.local_target`), so each shard rolls up its own rows."""
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {opts.db}.{quote_ident(name)}{opts.on_cluster} "
        f"TO {target.local_target(opts)} AS {select}"
    )


def drop_view(name: str, opts: SchemaOptions) -> str:
    """Drop a view (plain or materialized) an earlier version created, on every node of a cluster."""
    return f"DROP VIEW IF EXISTS {opts.db}.{quote_ident(name)}{opts.on_cluster}"


def view(name: str, select: str, opts: SchemaOptions) -> str:
    """A plain view; `select` reads the tables analysts read (`Table.target`)."""
    return f"CREATE VIEW IF NOT EXISTS {opts.db}.{quote_ident(name)}{opts.on_cluster} AS {select}"
