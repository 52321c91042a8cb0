"""Versioned migrations of the ClickHouse schema: frozen steps, applied in order, each once
(`tables/migrate.py` runs them).

Each version is a module whose DDL never changes once released; a later change is a new version with an
ALTER or a new object (`CREATE ... IF NOT EXISTS` never changes an existing table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tables.ddl import SchemaOptions
from tables.migrations import (
    v1_initial,
    v2_ledger,
    v3_client_reports,
    v4_privacy,
    v5_launches,
    v6_every_offset,
    v7_installations,
    v8_patterns,
    v9_ledger_totals,
    v10_built_grains,
    v11_one_session_view,
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[SchemaOptions], list[str]]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs, quality and flush tables; hourly/daily rollups; analyst views", v1_initial.statements),
    Migration(
        2,
        "per-partition ledger of counted, dead-lettered, late and skipped offsets; skip requests",
        v2_ledger.statements,
    ),
    Migration(3, "drops SDK clients report, per reason and SDK version", v3_client_reports.statements),
    Migration(
        4,
        "k-anonymous values (admission epochs, candidates) and distinct sessions per day, from keyed hashes",
        v4_privacy.statements,
    ),
    Migration(5, "AgentOS launches with their configuration, per minute, hour and day", v5_launches.statements),
    Migration(
        6,
        "every offset accounted for per log (expired, lost, log generations) and the tables each flush landed in",
        v6_every_offset.statements,
    ),
    Migration(7, "distinct installations per day; k-anonymity over installations", v7_installations.statements),
    Migration(
        8, "team coordination and workflow orchestration patterns, per minute, hour and day", v8_patterns.statements
    ),
    Migration(
        9,
        "each intent carries its log's running ledger total (a lost ledger or intent block shows)",
        v9_ledger_totals.statements,
    ),
    Migration(
        10,
        "the hourly and daily grains built by the worker from the finer grain, not by views in every flush",
        v10_built_grains.statements,
    ),
    Migration(
        11,
        "one view writes a batch's daily session and installation sketches; a view nothing fed since v7 goes",
        v11_one_session_view.statements,
    ),
)
