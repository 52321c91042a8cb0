"""Version 9: each intent carries its log's running ledger total, so that a lost ledger block shows.

`ingest_flushes` gains `ledger_total`: the offsets the ledger of the intent's log generation accounts for
through the end of its range (events + skipped + expired + lost of every range of that generation so
far, this one included), kept by the worker from range to range (`agents/checkpoint.py`). The latest
intent's total must equal that generation's sum in `ingest_ledger` (`pipeline/ledger.py`): a ClickHouse
killed in the middle of an insert can lose an intent's block, or the ledger view's, for good. -1: an
intent recorded before this version (the worker then starts the total from the ledger's sum).

`ledger_acknowledgements`: a difference an operator has looked into and accepted (`kern-telemetry ledger
--acknowledge`, with the reason), which the check adds to the ledger: nothing can say which range a lost
block covered, so the ledger itself is never corrected.
"""

from __future__ import annotations

from tables.ddl import SchemaOptions, Table
from tables.migrations.v1_initial import INGEST_FLUSHES

LEDGER_ACKNOWLEDGEMENTS = Table(
    name="ledger_acknowledgements",
    columns=(
        ("topic", "String"),
        ("partition", "UInt32"),
        ("log_generation", "UInt32"),
        ("offsets", "Int64"),  # what the ledger misses (negative: holds twice)
        ("reason", "String"),
        ("acknowledged_at", "DateTime64(3, 'UTC') DEFAULT now64(3)"),
    ),
    engine="MergeTree",  # every acknowledgement is kept, with its reason
    order_by=("topic", "partition", "log_generation"),
    sharding_key="partition",
)


def statements(opts: SchemaOptions) -> list[str]:
    return [
        *INGEST_FLUSHES.add_columns((("ledger_total", "Int64 DEFAULT -1"),), opts),
        *LEDGER_ACKNOWLEDGEMENTS.create(opts),
    ]
