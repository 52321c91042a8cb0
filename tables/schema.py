"""The schema as the running code sees it, after every migration: the tables it writes and reads. The DDL
lives in the versioned migrations (`tables/migrations/`); the columns each write names live with the
writer (`pipeline/sink.py`), and a test checks that a migrated database has them.

Tables (database `kern_telemetry` by default):

- `runs_minute`: the rollup the worker writes. One row per (window, dimension set) and flush; a
  SummingMergeTree sums the partial counts of the same key that different flushes and partitions wrote.
- `runs_hourly`, `runs_daily`: the same columns, built by the worker from `runs_minute` (hourly) and
  `runs_hourly` (daily) every few seconds (`pipeline/grains.py`).
- `quality_minute`: events not counted in the runs tables (dead-lettered, late, skipped) and notes about
  counted ones (redacted values, replaced timestamps), per window, kind and reason.
- `ingest_flushes`: per source partition, the offset range of the latest flush and what it covered.
  Written before the flush's data; the worker replays that range on assignment (`agents/checkpoint.py`).
- `ingest_ledger`: counted, dead-lettered, late, skipped, expired and lost offsets per partition, day and
  log generation.
- `flush_landings`: per partition and summing table, the last flush range that landed in it.
- `skip_requests`: ranges an operator decided to skip (`kern-telemetry skip`), with the reason.
- `client_drops_minute`, `client_drops_daily`: events SDK clients report they could not deliver, per
  reason and SDK version (`client_report` events).
- `admitted_values`, `value_candidates`: k-anonymous values (`pipeline/admission.py`); `sessions_daily`:
  distinct sessions per day, as mergeable sketches of keyed hashes.
- `launches_minute`, `launches_hourly`, `launches_daily`: AgentOS launches per SDK version and
  configuration (bucketed counts of agents, teams, workflows; sets of interfaces and db types); views
  `launch_names_*` count launches per interface and db type.
- `team_runs_minute`, `_hourly`, `_daily`: team runs per SDK version, coordination mode, bucketed member
  teams and nesting depth; `workflow_runs_minute`, `_hourly`, `_daily`: workflow runs per SDK version,
  bucketed step count, set of step kinds and bucketed nesting depth; views `workflow_step_kinds_*`.
- views `flag_runs_*` (runs with each flag on) and `feature_combos_*` (runs per sorted flag set).

Why the cluster DDL is safe for exactly-once flushes (see also `pipeline/sink.py`): a retried flush must
split into the same per-shard blocks, so every table shards by a deterministic function of its row
(`tables/ddl.py` refuses a random key): the runs tables by `cityHash64(kind, model_provider, model_id)`,
which also puts rows of one dimension set on one shard for the SummingMergeTree to sum; the flush intents,
the ledger and the skip requests by `partition`, so one partition's intents live on one shard.
"""

from __future__ import annotations

from typing import NamedTuple

from tables.ddl import Table
from tables.migrations.v1_initial import INGEST_FLUSHES, QUALITY_MINUTE, RUNS_MINUTE, RUNS_ROLLUPS, SCHEMA_MIGRATIONS
from tables.migrations.v2_ledger import INGEST_LEDGER, LEDGER_COUNTS, SKIP_REQUESTS
from tables.migrations.v3_client_reports import CLIENT_DROPS_DAILY, CLIENT_DROPS_MINUTE
from tables.migrations.v4_privacy import (
    ADMITTED_VALUES,
    SESSION_SIGHTINGS,
    SESSIONS_DAILY,
    VALUE_CANDIDATES,
    VALUE_SIGHTINGS,
)
from tables.migrations.v5_launches import LAUNCHES_MINUTE, LAUNCHES_ROLLUPS, LAUNCHES_TABLES
from tables.migrations.v6_every_offset import FLUSH_LANDINGS, NEW_OUTCOMES
from tables.migrations.v8_patterns import (
    PATTERN_TABLES,
    TEAM_RUNS_MINUTE,
    TEAM_RUNS_ROLLUPS,
    WORKFLOW_RUNS_MINUTE,
    WORKFLOW_RUNS_ROLLUPS,
)
from tables.migrations.v9_ledger_totals import LEDGER_ACKNOWLEDGEMENTS

__all__ = [
    "ADMITTED_VALUES",
    "CLIENT_DROPS_MINUTE",
    "COARSE_GRAINS",
    "FLUSH_LANDINGS",
    "INGEST_FLUSHES",
    "INGEST_LEDGER",
    "LAUNCHES_MINUTE",
    "LAUNCHES_TABLES",
    "LEDGER_ACKNOWLEDGEMENTS",
    "LEDGER_OUTCOMES",
    "PATTERN_TABLES",
    "QUALITY_MINUTE",
    "RUNS_MINUTE",
    "RUNS_TABLES",
    "SCHEMA_MIGRATIONS",
    "SESSIONS_DAILY",
    "SESSION_SIGHTINGS",
    "SKIP_REQUESTS",
    "TEAM_RUNS_MINUTE",
    "VALUE_CANDIDATES",
    "VALUE_SIGHTINGS",
    "WORKFLOW_RUNS_MINUTE",
    "CoarseGrain",
]

RUNS_TABLES = (RUNS_MINUTE, *(table for table, _ in RUNS_ROLLUPS))

#: What the ledger says of every offset of a log: counted, dead-lettered, late, skipped by an operator,
#: expired (removed by retention before it was consumed) or lost (gone from a truncated log).
LEDGER_OUTCOMES = (*LEDGER_COUNTS, *NEW_OUTCOMES)

#: Tables whose TTL follows the configured retention.
RETAINED_TABLES: tuple[Table, ...] = (
    *RUNS_TABLES,
    *LAUNCHES_TABLES,
    *PATTERN_TABLES,
    QUALITY_MINUTE,
    CLIENT_DROPS_MINUTE,
    CLIENT_DROPS_DAILY,
    SESSIONS_DAILY,
)


class CoarseGrain(NamedTuple):
    """An hourly or daily grain the worker builds from a finer one (`pipeline/grains.py`): `SELECT
    {function}(window_start) AS window_start, <dimensions>, sum(<measure>) ... GROUP BY` all but the measure,
    from the minute table for an hourly grain and from the hourly table for a daily one (24 rows a key and
    day to read, not 1,440)."""

    source: Table
    target: Table
    function: str  # toStartOfHour or toStartOfDay

    @property
    def measure(self) -> str:
        return self.target.columns[-1][0]

    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.target.columns[1:-1])

    @property
    def period_seconds(self) -> int:
        return 3600 if self.function == "toStartOfHour" else 86400


def _built_from(minute: Table, rollups: tuple[tuple[Table, str], ...]) -> tuple[CoarseGrain, ...]:
    """Each coarse grain of a minute table built from the grain before it, finest first (the build's order)."""
    grains, source = [], minute
    for target, function in rollups:
        grains.append(CoarseGrain(source, target, function))
        source = target
    return tuple(grains)


COARSE_GRAINS: tuple[CoarseGrain, ...] = (
    *_built_from(RUNS_MINUTE, RUNS_ROLLUPS),
    *_built_from(LAUNCHES_MINUTE, LAUNCHES_ROLLUPS),
    *_built_from(TEAM_RUNS_MINUTE, TEAM_RUNS_ROLLUPS),
    *_built_from(WORKFLOW_RUNS_MINUTE, WORKFLOW_RUNS_ROLLUPS),
    *_built_from(CLIENT_DROPS_MINUTE, ((CLIENT_DROPS_DAILY, "toStartOfDay"),)),
)
