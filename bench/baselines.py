"""The baselines `make bench` runs as subprocesses, on the same broker and topic as the worker.

    python -m bench.baselines kafka-engine BOOTSTRAP TOPIC EXPECTED   ClickHouse Kafka engine + MV (chDB)
    python -m bench.baselines stock-faust BOOTSTRAP TOPIC SAMPLE      Faust agent + windowed Table per event
    python -m bench.baselines chdb-rss                                RSS of a process that only opens chDB

Each prints one JSON line with its measurement.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def peak_rss_mb() -> float:
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def kafka_engine(bootstrap: str, topic: str, expected: int, timeout_s: float = 240.0) -> dict:
    """What a user would pick instead: ClickHouse's own Kafka table engine and a materialized view into
    a SummingMergeTree. No validation; at-least-once."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{tempfile.mkdtemp(prefix='kafka-engine-')}")
    client.command(f"""CREATE TABLE queue (raw String) ENGINE = Kafka SETTINGS
        kafka_broker_list = '{bootstrap}', kafka_topic_list = '{topic}', kafka_group_name = 'ch-{topic}',
        kafka_format = 'JSONAsString', kafka_handle_error_mode = 'stream', kafka_max_block_size = 65536,
        kafka_num_consumers = 1, kafka_thread_per_consumer = 1""")
    client.command("""CREATE TABLE runs (window_start DateTime, kind LowCardinality(String),
        model_provider LowCardinality(String), model_id LowCardinality(String), runs UInt64)
        ENGINE = SummingMergeTree ORDER BY (kind, model_provider, model_id, window_start)""")
    client.command("""CREATE MATERIALIZED VIEW mv TO runs AS SELECT toStartOfMinute(_timestamp) AS window_start,
        JSONExtractString(raw, 'type') AS kind, JSONExtractString(raw, 'data', 'model_provider') AS model_provider,
        JSONExtractString(raw, 'data', 'model_id') AS model_id, 1 AS runs FROM queue WHERE _error = ''""")
    started = time.monotonic()
    first_seen = None
    rows = 0
    while time.monotonic() - started < timeout_s:
        rows = client.query("SELECT sum(runs) FROM runs").result_rows[0][0] or 0
        now = time.monotonic()
        if rows and first_seen is None:
            first_seen = now
        if rows >= expected:
            break
        time.sleep(0.05)
    done = time.monotonic()
    span = done - first_seen if first_seen else None
    return {"rows": rows, "expected": expected, "join_s": round(first_seen - started, 1) if first_seen else None,
            "seconds": span, "rate": rows / span if span else None, "rss_mb": peak_rss_mb()}


def stock_faust(bootstrap: str, topic: str, sample: int) -> None:
    """What the Faust documentation shows: an agent that updates a windowed Table for every event."""
    import faust

    app = faust.App(f"stock-{topic}", broker=f"kafka://{bootstrap}", store="memory://", web_enabled=False,
                    broker_rebalance_timeout=6, broker_session_timeout=6, topic_partitions=4,
                    consumer_auto_offset_reset="earliest", datadir=tempfile.mkdtemp(prefix="stock-faust-"))
    source = app.topic(topic, value_serializer="raw")
    counts = app.Table("runs", default=int).tumbling(60, expires=3600)
    progress = {"n": 0, "first": None}

    @app.agent(source)
    async def rollup(stream):
        async for raw in stream:
            if progress["first"] is None:
                progress["first"] = (time.monotonic(), time.process_time())
            try:
                event = json.loads(raw)
                data = event.get("data") or {}
                counts[f"{event.get('type')}|{data.get('model_provider')}|{data.get('model_id')}"] += 1
            except (ValueError, AttributeError, TypeError):
                pass
            progress["n"] += 1
            if progress["n"] == sample:
                wall, cpu = progress["first"]
                seconds = time.monotonic() - wall
                sys.__stdout__.write(json.dumps({  # Faust redirects print() into its logging
                    "events": sample, "seconds": seconds, "rate": sample / seconds,
                    "cpu_s_per_1m": (time.process_time() - cpu) / sample * 1e6, "rss_mb": peak_rss_mb()}) + "\n")
                sys.__stdout__.flush()
                os._exit(0)

    sys.argv = [sys.argv[0], "worker", "-l", "error"]
    app.main()


def chdb_rss() -> dict:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{tempfile.mkdtemp(prefix='chdb-rss-')}")
    client.query("SELECT 1")
    return {"rss_mb": peak_rss_mb()}


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "kafka-engine":
        print(json.dumps(kafka_engine(args[0], args[1], int(args[2]))), flush=True)
    elif command == "stock-faust":
        stock_faust(args[0], args[1], int(args[2]))
    elif command == "chdb-rss":
        print(json.dumps(chdb_rss()), flush=True)
    else:
        raise SystemExit(__doc__)
