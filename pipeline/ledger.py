"""The ledger checked against the running totals its intents carry.

`ingest_ledger` is a materialized view of the flush intents (`ingest_flushes`): it sums, per partition,
log generation and day, what every range covered. A ClickHouse killed in the middle of an insert can lose
an intent's block, or the view's block of it, for good (`pipeline/grains.py` says why): the offsets of
that range are then missing from the ledger while every later flush goes on as if nothing happened, and
the intents cannot tell, since `ingest_flushes` keeps only each partition's latest intent once merged.

So each intent also records its log's running total (`ledger_total`, migration 9): the offsets the ledger
of its log generation accounts for through its range's end, which the worker carries from range to range
(`agents/checkpoint.py`, `write`). Whatever block is lost, the latest intent's total still counts it, and
the ledger's sum for that generation falls short of it; a block counted twice makes the ledger exceed it.
`check` compares the two for each partition's latest log generation; a generation whose latest intent was
recorded before version 9 (total -1) is not checked.

A disagreement says how many offsets the ledger misses or holds twice. It cannot say which range, nor be
rebuilt: the intents of earlier ranges are gone. The summing tables may or may not hold that range's rows
(an intent lands before its rows, so a lost intent's rows landed when its insert was retried). An operator
who has looked into it acknowledges the difference with a reason (`acknowledge`, into
`ledger_acknowledgements`); the check counts it from then on, and a later loss shows again.
"""

from __future__ import annotations

from typing import NamedTuple

from clickhouse_connect.driver.client import Client

from tables.ddl import SchemaOptions
from tables.schema import INGEST_FLUSHES, INGEST_LEDGER, LEDGER_ACKNOWLEDGEMENTS

#: What a range adds to its log's ledger total: its events (counted, dead-lettered or late) and its offsets
#: without records (skipped, expired, lost). `PartitionRollup.accounted` is the same sum.
ACCOUNTED = "events + skipped + expired + lost"


class Disagreement(NamedTuple):
    """A partition whose ledger does not add up to its latest intent's running total."""

    topic: str
    partition: int
    generation: int
    recorded: int  # the latest intent's running total
    ledger: int  # the ledger's sum for the generation
    acknowledged: int = 0  # differences an operator acknowledged

    @property
    def missing(self) -> int:
        """Offsets the ledger misses beyond those acknowledged (negative: offsets it holds twice)."""
        return self.recorded - self.ledger - self.acknowledged

    def describe(self) -> str:
        what = f"misses {self.missing:,}" if self.missing > 0 else f"holds {-self.missing:,} twice"
        return f"{self.topic} partition {self.partition} (log generation {self.generation}) {what}"


def check(client: Client, opts: SchemaOptions) -> list[Disagreement]:
    """Each partition whose latest intent's running total is not its ledger's sum for that log generation
    plus what was acknowledged (one query). An intent that landed just before the read may have no ledger
    row yet: a caller confirms a disagreement seen in two checks in a row (`Health.ledger_checked`)."""
    by_generation = "GROUP BY topic, partition, generation"
    result = client.query(
        f"SELECT topic, partition, generation, recorded, ledger, acknowledged FROM ("
        f"SELECT topic, partition, argMax(log_generation, (log_generation, end_offset)) AS generation, "
        f"argMax(ledger_total, (log_generation, end_offset)) AS recorded "
        f"FROM {INGEST_FLUSHES.target(opts)} GROUP BY topic, partition"
        f") AS i LEFT JOIN ("
        f"SELECT topic, partition, log_generation AS generation, sum({ACCOUNTED}) AS ledger "
        f"FROM {INGEST_LEDGER.target(opts)} {by_generation}"
        f") AS l USING (topic, partition, generation) LEFT JOIN ("
        f"SELECT topic, partition, log_generation AS generation, sum(offsets) AS acknowledged "
        f"FROM {LEDGER_ACKNOWLEDGEMENTS.target(opts)} {by_generation}"
        f") AS a USING (topic, partition, generation) "
        f"WHERE recorded >= 0 AND recorded != ledger + acknowledged ORDER BY topic, partition",
    )
    return [
        Disagreement(topic, int(partition), int(generation), int(recorded), int(ledger), int(acknowledged))
        for topic, partition, generation, recorded, ledger, acknowledged in result.result_rows
    ]


def acknowledge(client: Client, opts: SchemaOptions, disagreements: list[Disagreement], reason: str) -> None:
    """Record that an operator accepts these differences (`reason`: what they found); the check adds them."""
    client.insert(
        LEDGER_ACKNOWLEDGEMENTS.target(opts),
        [[d.topic, d.partition, d.generation, d.missing, reason] for d in disagreements],
        column_names=["topic", "partition", "log_generation", "offsets", "reason"],
    )
