"""Version 6: every offset accounted for, per log, and which tables of a flush have landed.

- `ingest_flushes` gains what a flush needs to know which log it describes and to be rewritten only
  where it had not landed (`agents/checkpoint.py`, `agents/logs.py`): the log's `log_generation` (a
  counter the worker raises when it meets a new log under the same topic and partition: recreated topic,
  replaced or restored cluster, truncated log), the broker's `topic_id`, the `fingerprint` of the last
  record folded (a CRC of its timestamp and value) at `fingerprint_offset`, the highest log end the worker
  had seen (`log_end_seen`), the summing tables the flush writes rows to (`tables`), and two new ledger
  outcomes: `expired` (offsets retention removed before they were consumed) and `lost` (offsets gone from
  a truncated log before they were consumed).
- `ingest_ledger` gains `expired`, `lost` and `log_generation` (in its key: each log adds up on its own);
  its view is replaced by one that carries them.
- `flush_landings`: per partition and summing table, the last flush range that landed in it; a retried
  or replayed flush rewrites only the tables whose landing is missing.
"""

from __future__ import annotations

from tables.ddl import SchemaOptions, Table, drop_view, materialized_view
from tables.migrations.v1_initial import INGEST_FLUSHES
from tables.migrations.v2_ledger import INGEST_LEDGER, LEDGER_COUNTS

NEW_OUTCOMES = ("expired", "lost")
_LOG_COLUMNS = (
    ("log_generation", "UInt32 DEFAULT 0"),
    ("topic_id", "String DEFAULT ''"),
    ("fingerprint_offset", "Int64 DEFAULT -1"),
    ("fingerprint", "UInt32 DEFAULT 0"),
    ("log_end_seen", "UInt64 DEFAULT 0"),
    ("tables", "Array(LowCardinality(String)) DEFAULT []"),
)

FLUSH_LANDINGS = Table(
    name="flush_landings",
    columns=(
        ("topic", "String"),
        ("partition", "UInt32"),
        ("table_name", "LowCardinality(String)"),
        ("log_generation", "UInt32"),
        ("start_offset", "UInt64"),
        ("end_offset", "UInt64"),
        ("landed_at", "DateTime64(3, 'UTC') DEFAULT now64(3)"),
    ),
    engine="ReplacingMergeTree",  # one row per partition and table survives merges: the latest landing
    order_by=("topic", "partition", "table_name"),
    sharding_key="partition",  # with the intents: one partition's protocol state on one shard
)


def statements(opts: SchemaOptions) -> list[str]:
    counts = ", ".join((*LEDGER_COUNTS, *NEW_OUTCOMES))
    outcomes = tuple((name, "UInt64 DEFAULT 0") for name in NEW_OUTCOMES)
    ledger = INGEST_LEDGER.local_target(opts)
    return [
        *INGEST_FLUSHES.add_columns((*outcomes, *_LOG_COLUMNS), opts),
        *INGEST_LEDGER.add_columns(outcomes, opts),
        f"ALTER TABLE {ledger}{opts.on_cluster} ADD COLUMN IF NOT EXISTS log_generation UInt32, "
        "MODIFY ORDER BY (topic, partition, day, log_generation)",
        *(
            [
                f"ALTER TABLE {INGEST_LEDGER.target(opts)}{opts.on_cluster} ADD COLUMN IF NOT EXISTS log_generation "
                "UInt32"
            ]
            if opts.cluster
            else []
        ),
        drop_view("ingest_ledger_mv", opts),
        materialized_view(
            "ingest_ledger_by_log_mv",
            INGEST_LEDGER,
            f"SELECT topic, partition, toDate(flushed_at) AS day, log_generation, events, {counts} "
            f"FROM {INGEST_FLUSHES.local_target(opts)}",
            opts,
        ),
        *FLUSH_LANDINGS.create(opts),
    ]
