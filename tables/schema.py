"""The schema as the running code sees it, after every migration: the tables it writes and reads, and
the columns it writes. The DDL lives in the versioned migrations (`tables/migrations/`); a test checks
that a migrated database has exactly these columns.

Tables (database `kern_telemetry` by default):

- `runs_minute`: the rollup the worker writes. One row per (window, dimension set) and flush; a
  SummingMergeTree sums the partial counts of the same key that different flushes and partitions wrote.
- `runs_hourly`, `runs_daily`: the same columns, kept by materialized views from `runs_minute`.
- `quality_minute`: events not counted in the runs tables (dead-lettered, late, skipped) and notes about
  counted ones (redacted values, replaced timestamps), per window, kind and reason.
- `ingest_flushes`: per source partition, the offset range of the latest flush and what it covered.
  Written before the flush's data; the worker replays that range on assignment (see `pipeline/sink.py`).
- `ingest_ledger`: counted, dead-lettered, late and skipped per partition and day.
- `skip_requests`: ranges an operator decided to skip (`kern-telemetry skip`), with the reason.
- views `flag_runs_*` (runs with each flag on) and `feature_combos_*` (runs per sorted flag set).
"""

from __future__ import annotations

from tables.ddl import Table
from tables.migrations.v1_initial import INGEST_FLUSHES, QUALITY_MINUTE, RUNS_MINUTE, RUNS_ROLLUPS, SCHEMA_MIGRATIONS
from tables.migrations.v2_ledger import INGEST_LEDGER, LEDGER_COUNTS, SKIP_REQUESTS

__all__ = ["INGEST_FLUSHES", "INGEST_LEDGER", "QUALITY_MINUTE", "RUNS_MINUTE", "SCHEMA_MIGRATIONS", "SKIP_REQUESTS"]

DIMENSION_COLUMNS = tuple((name, kind) for name, kind in RUNS_MINUTE.columns if name not in ("window_start", "runs"))
DIMENSION_NAMES = tuple(name for name, _ in DIMENSION_COLUMNS)
RUNS_TABLES = (RUNS_MINUTE, *(table for table, _ in RUNS_ROLLUPS))

#: The columns each write names (others take their DEFAULT).
RUNS_COLUMNS = ("window_start", *DIMENSION_NAMES, "runs")
QUALITY_COLUMNS = ("window_start", "kind", "reason", "events")
FLUSH_COLUMNS = ("topic", "partition", "start_offset", "end_offset", "events", *LEDGER_COUNTS)
SKIP_COLUMNS = ("topic", "partition", "through_offset", "reason")
WRITES: dict[str, tuple[str, ...]] = {
    RUNS_MINUTE.name: RUNS_COLUMNS, QUALITY_MINUTE.name: QUALITY_COLUMNS, INGEST_FLUSHES.name: FLUSH_COLUMNS,
    SKIP_REQUESTS.name: SKIP_COLUMNS,
}

#: Tables whose TTL follows the configured retention.
RETAINED_TABLES: tuple[Table, ...] = (*RUNS_TABLES, QUALITY_MINUTE)
