"""What a worker's audit and its builder of the coarse grains cost ClickHouse (`pipeline/grains.py`,
`pipeline/ledger.py`): `python -m bench.audit [--keys 1000] [--intents 100000]` fills runs_minute with 5
closed days of rows and the last hour, `--keys` dimension sets a minute, merges them, and records `--intents`
flush intents of 8 partitions (the view sums them into the ledger), left unmerged as a busy worker's are
between merges; then it times, in-process chDB: the first settling of the closed days (the hourly and daily
grains built from nothing), the audit's two checks (every KERN_AUDIT_SECONDS; the grains' settles nothing
then: its cost is its check's), and a build of the last hour that finds nothing new (every
KERN_GRAIN_BUILD_SECONDS), each a median of 5 but the first."""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile
import time
from collections.abc import Callable

from pipeline import grains, ledger
from pipeline.clickhouse import connect
from pipeline.config import Settings
from tables.ddl import SchemaOptions
from tables.migrate import migrate

_DAYS = 5
_PARTITIONS = 8
_COLUMNS = ["window_start", "kind", "sdk_version", "model_provider", "model_id", "features", "runs"]
_INTENT_COLUMNS = ["topic", "partition", "start_offset", "end_offset", "events", "counted", "ledger_total"]


def _timed(check: Callable[[], list | None]) -> tuple[float, float, int]:
    """Median wall and CPU seconds of 5 runs, and how many things the last one found."""
    timings = []
    for _ in range(5):
        wall, cpu = time.perf_counter(), time.process_time()
        found = check()
        timings.append((time.perf_counter() - wall, time.process_time() - cpu))
    wall, cpu = sorted(timings)[2]
    return wall, cpu, len(found or ())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1000, help="dimension sets a minute")
    parser.add_argument("--intents", type=int, default=100_000, help="unmerged flush intents")
    arguments = parser.parse_args()
    settings = Settings(clickhouse_dsn=f"chdb://{tempfile.mkdtemp(prefix='audit-')}/chdb")
    client, opts = connect(settings), SchemaOptions.from_settings(settings)
    migrate(client, opts)
    start = int(time.time()) // 86400 * 86400 - _DAYS * 86400
    rng = random.Random(1)
    last_hour = int(time.time()) // 60 * 60 - 3600
    for hour_start in [start + hour * 3600 for hour in range(_DAYS * 24)] + [last_hour]:
        rows = [
            [dt.datetime.fromtimestamp(hour_start + 60 * minute, dt.UTC), "agent", "2.1.0", f"p{key % 7}",
             f"m{key}", ["tools"] if key % 3 else [], rng.randrange(1, 50)]
            for minute in range(60)
            for key in range(arguments.keys)
        ]  # fmt: skip
        client.insert("kern_telemetry.runs_minute", rows, column_names=_COLUMNS)
    client.command("OPTIMIZE TABLE kern_telemetry.runs_minute FINAL")
    client.command("SYSTEM STOP MERGES kern_telemetry.ingest_flushes")
    per_partition, batch = arguments.intents // _PARTITIONS, 1000
    for first in range(0, per_partition, batch):
        intents = [
            ["events", partition, 100 * i, 100 * (i + 1), 100, 100, 100 * (i + 1)]
            for i in range(first, min(first + batch, per_partition))
            for partition in range(_PARTITIONS)
        ]
        client.insert("kern_telemetry.ingest_flushes", intents, column_names=_INTENT_COLUMNS)

    horizon = grains.worker_horizon_s(settings.topic_retention_hours, settings.allowed_lateness_seconds)
    lateness = settings.allowed_lateness_seconds

    def settle() -> list:
        return grains.check_all(client, opts, lateness, time.time(), False, horizon, settling=True)

    wall, cpu = time.perf_counter(), time.process_time()
    settle()
    print(
        f"grains built from nothing over {_DAYS} closed days: {(time.perf_counter() - wall) * 1000:.0f} ms, "
        f"{(time.process_time() - cpu) * 1000:.0f} ms of CPU"
    )
    grains.build(client, opts, lateness, time.time())
    wall, cpu, _ = _timed(lambda: grains.build(client, opts, lateness, time.time()))
    print(
        f"build of the last hour ({60 * arguments.keys:,} minute rows) with nothing new: {wall * 1000:.0f} ms, "
        f"{cpu * 1000:.0f} ms of CPU (median of 5)"
    )
    wall, cpu, found = _timed(settle)
    print(
        f"grains: {_DAYS * 24 * 60 * arguments.keys:,} minute rows ({arguments.keys} dimension sets a minute, "
        f"{_DAYS} days): {wall * 1000:.0f} ms, {cpu * 1000:.0f} ms of CPU (median of 5); {found} period(s) disagree"
    )
    wall, cpu, found = _timed(lambda: ledger.check(client, opts))
    print(
        f"ledger: {per_partition * _PARTITIONS:,} unmerged intents of {_PARTITIONS} partitions: {wall * 1000:.0f} ms, "
        f"{cpu * 1000:.0f} ms of CPU (median of 5); {found} partition(s) disagree"
    )


if __name__ == "__main__":
    main()
