"""Version 2: the per-partition ledger and the operator's skip requests.

- `ingest_flushes` records what each flush covered: counted, dead-lettered, late events, and offsets
  skipped by an operator (undecodable records, `kern-telemetry skip`).
- `ingest_ledger` sums those per topic, partition and day (a materialized view of the flush intents,
  deduplicated with them), so that counted + dead-lettered + late + skipped adds up to the offsets
  consumed, per partition.
- `skip_requests`: what an operator decided to skip and why; the worker that owns the partition applies it.
"""

from __future__ import annotations

from tables.ddl import SchemaOptions, Table, materialized_view
from tables.migrations.v1_initial import INGEST_FLUSHES

LEDGER_COUNTS = ("counted", "dead_lettered", "late", "skipped")

INGEST_LEDGER = Table(
    name="ingest_ledger",
    columns=(
        ("topic", "String"),
        ("partition", "UInt32"),
        ("day", "Date"),
        ("events", "UInt64"),
        *((name, "UInt64") for name in LEDGER_COUNTS),
    ),
    engine="SummingMergeTree",
    order_by=("topic", "partition", "day"),
    sharding_key="partition",
)
SKIP_REQUESTS = Table(
    name="skip_requests",
    columns=(
        ("topic", "String"),
        ("partition", "UInt32"),
        ("through_offset", "UInt64"),
        ("reason", "String"),
        ("requested_at", "DateTime64(3, 'UTC') DEFAULT now64(3)"),
    ),
    engine="MergeTree",  # every request is kept: a replay reads the earliest, whatever merges did
    order_by=("topic", "partition", "through_offset"),
    sharding_key="partition",
)


def statements(opts: SchemaOptions) -> list[str]:
    counts = ", ".join(LEDGER_COUNTS)
    return [
        *INGEST_FLUSHES.add_columns(tuple((name, "UInt64 DEFAULT 0") for name in LEDGER_COUNTS), opts),
        *INGEST_LEDGER.create(opts),
        materialized_view(
            "ingest_ledger_mv",
            INGEST_LEDGER,
            f"SELECT topic, partition, toDate(flushed_at) AS day, events, {counts} "
            f"FROM {INGEST_FLUSHES.local_target(opts)}",
            opts,
        ),
        *SKIP_REQUESTS.create(opts),
    ]
