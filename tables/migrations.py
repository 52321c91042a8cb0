"""Versioned, idempotent migrations of the ClickHouse schema.

`migrate` applies every migration whose version `schema_migrations` has not recorded, then aligns the
tables' TTLs with the configured retention (only where they differ: a TTL change rewrites parts).
Running it twice changes nothing. The worker runs it on start; `kern-telemetry migrate` runs it alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from tables.schema import SCHEMA_MIGRATIONS, TABLES, SchemaOptions, create_statements, quote_ident


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[SchemaOptions], list[str]]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs, quality and flush tables; hourly/daily rollups; analyst views", create_statements),
)

_TTL_DAYS = re.compile(r"\bTTL\s+window_start\s*\+\s*toIntervalDay\((\d+)\)")


def migrate(client: Client, opts: SchemaOptions) -> list[Migration]:
    """Apply what is missing; returns the migrations applied by this call."""
    db = quote_ident(opts.database)
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}{opts.on_cluster}")
    for statement in SCHEMA_MIGRATIONS.create(opts):
        client.command(statement)
    applied = set(applied_versions(client, opts))
    new = [m for m in MIGRATIONS if m.version not in applied]
    for migration in new:
        for statement in migration.statements(opts):
            client.command(statement)
        client.insert(f"{db}.{quote_ident(SCHEMA_MIGRATIONS.name)}",
                      [(migration.version, migration.name)], column_names=("version", "name"))
    for statement in retention_changes(client, opts):
        client.command(statement)
    return new


def applied_versions(client: Client, opts: SchemaOptions) -> list[int]:
    rows = client.query(
        f"SELECT DISTINCT version FROM {quote_ident(opts.database)}.{quote_ident(SCHEMA_MIGRATIONS.name)} "
        "ORDER BY version").result_rows
    return [version for (version,) in rows]


def retention_changes(client: Client, opts: SchemaOptions) -> list[str]:
    """ALTERs for the tables whose TTL differs from the configured retention."""
    rows = client.query(
        "SELECT name, engine_full FROM system.tables WHERE database = {db:String}",
        parameters={"db": opts.database}).result_rows
    current = {name: _ttl_days(engine_full) for name, engine_full in rows}
    changes = []
    for table in TABLES:
        name = table.physical_name(opts)
        if table.ttl_column and name in current and current[name] != table.ttl_days(opts):
            changes.append(table.modify_ttl(opts))
    return changes


def _ttl_days(engine_full: str) -> int:
    match = _TTL_DAYS.search(engine_full)
    return int(match.group(1)) if match else 0
