"""What a SIGKILL of ClickHouse in the middle of an insert leaves, with no worker involved
(`python -m bench.clickhouse_kills [--kills 100] [--path DIR]`; `pipeline/grains.py` says why it matters).

A child process opens the embedded engine (chDB) and inserts 200-row blocks into a SummingMergeTree with a
materialized view, each under its own deduplication token, as the worker's flushes do. The parent kills it
at a random moment, reopens the data, retries the block in flight and the three before it under the same
tokens (what a replay does), and compares the table and the view with what was sent. Prints each round
and the blocks lost for good, in the table and in the view.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import chdb.session

_SCHEMA = (
    "CREATE DATABASE IF NOT EXISTS t",
    "CREATE TABLE IF NOT EXISTS t.src (k UInt32, n UInt64) ENGINE = SummingMergeTree ORDER BY k "
    "SETTINGS non_replicated_deduplication_window = 10000",
    "CREATE TABLE IF NOT EXISTS t.dst (h UInt32, n UInt64) ENGINE = SummingMergeTree ORDER BY h "
    "SETTINGS non_replicated_deduplication_window = 10000",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS t.mv TO t.dst AS SELECT intDiv(k, 60) AS h, sum(n) AS n "
    "FROM t.src GROUP BY h",
)
_ROWS = 200
_RETRIED = 4  # the block in flight and the ones before it, whose answers the killed process may not have had


def block(number: int) -> list[tuple[int, int]]:
    rng = random.Random(number)
    return [(rng.randrange(600), rng.randrange(1, 5)) for _ in range(_ROWS)]


def insert(session: chdb.session.Session, number: int) -> None:
    values = ",".join(f"({k},{n})" for k, n in block(number))
    session.query(
        "INSERT INTO t.src SETTINGS insert_deduplicate = 1, deduplicate_blocks_in_dependent_materialized_views = 1, "
        f"insert_deduplication_token = 'block-{number}' VALUES {values}"
    )


def child(path: str, first: int) -> None:
    session = chdb.session.Session(path)
    for statement in _SCHEMA:
        session.query(statement)
    number = first
    while True:
        insert(session, number)
        print(number, flush=True)
        number += 1


def total(session: chdb.session.Session, table: str) -> int:
    return int(session.query(f"SELECT sum(n) FROM t.{table}", "CSV").bytes().decode() or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--path", default=None, help="data directory (default: a new temporary one)")
    args = parser.parse_args()
    path = args.path or tempfile.mkdtemp(prefix="clickhouse-kills-")
    sent = 0  # blocks 0 .. sent-1 were inserted, or retried after a kill
    expected = 0
    lost = {"src": 0, "dst": 0}  # kills after which the table fell shorter of what was sent
    short = {"src": 0, "dst": 0}
    for kill in range(args.kills):
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.clickhouse_kills", "--child", path, str(sent)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.2 + random.random() * 0.5)
        os.kill(process.pid, signal.SIGKILL)
        answered = process.stdout.read().split() if process.stdout else []
        process.wait()
        last = int(answered[-1]) if answered else sent - 1
        session = chdb.session.Session(path)
        for number in range(max(0, last - _RETRIED + 2), last + 2):
            insert(session, number)
        expected += sum(n for number in range(sent, last + 2) for _, n in block(number))
        sent = last + 2
        totals = {table: total(session, table) for table in lost}
        session.close()
        for table, value in totals.items():
            if expected - value > short[table]:
                lost[table] += 1
            short[table] = expected - value
        print(f"kill {kill + 1}: {sent} blocks, expected {expected}, table {totals['src']}, view {totals['dst']}")
    print(f"{args.kills} kills; kills that lost a block for good: table {lost['src']}, view {lost['dst']} ({path})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
