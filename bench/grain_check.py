"""What a worker's grain check costs ClickHouse (`pipeline/grains.py`): `python -m bench.grain_check
[--keys 1000]` fills runs_minute with 5 closed days of rows, `--keys` dimension sets a minute (the views
fill the hourly and daily grains), merges them, and times the check a worker runs every
KERN_AUDIT_SECONDS over its horizon, in-process chDB (median of 5)."""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile
import time

from pipeline import grains
from pipeline.clickhouse import connect
from pipeline.config import Settings
from tables.ddl import SchemaOptions
from tables.migrate import migrate

_DAYS = 5
_COLUMNS = ["window_start", "kind", "sdk_version", "model_provider", "model_id", "features", "runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1000, help="dimension sets a minute")
    keys = parser.parse_args().keys
    settings = Settings(clickhouse_dsn=f"chdb://{tempfile.mkdtemp(prefix='grain-check-')}/chdb")
    client, opts = connect(settings), SchemaOptions.from_settings(settings)
    migrate(client, opts)
    start = int(time.time()) // 86400 * 86400 - _DAYS * 86400
    rng = random.Random(1)
    for hour in range(_DAYS * 24):
        rows = [
            [dt.datetime.fromtimestamp(start + hour * 3600 + 60 * minute, dt.UTC), "agent", "2.1.0", f"p{key % 7}",
             f"m{key}", ["tools"] if key % 3 else [], rng.randrange(1, 50)]
            for minute in range(60)
            for key in range(keys)
        ]  # fmt: skip
        client.insert("kern_telemetry.runs_minute", rows, column_names=_COLUMNS)
    client.command("OPTIMIZE TABLE kern_telemetry.runs_minute FINAL")
    horizon = grains.worker_horizon_s(settings.topic_retention_hours, settings.allowed_lateness_seconds)
    timings = []
    for _ in range(5):
        wall, cpu = time.perf_counter(), time.process_time()
        found = grains.check_all(client, opts, settings.allowed_lateness_seconds, time.time(), False, horizon)
        timings.append((time.perf_counter() - wall, time.process_time() - cpu))
    wall, cpu = sorted(timings)[2]
    print(
        f"{_DAYS * 24 * 60 * keys:,} minute rows ({keys} dimension sets a minute, {_DAYS} days): the check took "
        f"{wall * 1000:.0f} ms, {cpu * 1000:.0f} ms of CPU (median of 5); {len(found)} period(s) disagree"
    )


if __name__ == "__main__":
    main()
