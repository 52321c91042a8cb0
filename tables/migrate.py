"""Apply the versioned migrations (`tables/migrations/`) and align the TTLs with the configured retention.

`migrate` applies the versions `schema_migrations` has not recorded, then aligns the TTLs (only where they
differ: a TTL change rewrites parts). Running it twice changes nothing. The worker runs it on start;
`kern-telemetry migrate` runs it alone.
"""

from __future__ import annotations

import re

from clickhouse_connect.driver.client import Client

from tables.ddl import SchemaOptions
from tables.migrations import MIGRATIONS, Migration
from tables.schema import RETAINED_TABLES, SCHEMA_MIGRATIONS

_TTL_DAYS = re.compile(r"\bTTL\s+\w+\s*\+\s*toIntervalDay\((\d+)\)")


def migrate(client: Client, opts: SchemaOptions, through: int | None = None) -> list[Migration]:
    """Apply what is missing, up to version `through` (default: all); returns the migrations applied."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {opts.db}{opts.on_cluster}")
    for statement in SCHEMA_MIGRATIONS.create(opts):
        client.command(statement)
    applied = set(applied_versions(client, opts))
    new = [m for m in MIGRATIONS if m.version not in applied and (through is None or m.version <= through)]
    for migration in new:
        for statement in migration.statements(opts):
            client.command(statement)
        client.insert(
            SCHEMA_MIGRATIONS.target(opts), [(migration.version, migration.name)], column_names=("version", "name")
        )
    for statement in retention_changes(client, opts):
        client.command(statement)
    return new


def applied_versions(client: Client, opts: SchemaOptions) -> list[int]:
    rows = client.query(f"SELECT DISTINCT version FROM {SCHEMA_MIGRATIONS.target(opts)} ORDER BY version").result_rows
    return [version for (version,) in rows]


def retention_changes(client: Client, opts: SchemaOptions) -> list[str]:
    """ALTERs for the tables whose TTL differs from the configured retention."""
    rows = client.query(
        "SELECT name, engine_full FROM system.tables WHERE database = {db:String}", parameters={"db": opts.database}
    ).result_rows
    current = {name: _ttl_days(engine_full) for name, engine_full in rows}
    changes = []
    for table in RETAINED_TABLES:
        name, alter = table.physical_name(opts), table.modify_ttl(opts)
        if table.retention and alter and name in current and current[name] != opts.retention_days(table.retention):
            changes.append(alter)
    return changes


def _ttl_days(engine_full: str) -> int:
    match = _TTL_DAYS.search(engine_full)
    return int(match.group(1)) if match else 0
