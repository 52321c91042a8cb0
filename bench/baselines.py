"""The baselines `make bench` measures on the same broker and topic as the worker.

`kafka_engine()` drives a ClickHouse (chDB) server process; the others run as subprocesses:

    python -m bench.baselines stock-faust BOOTSTRAP TOPIC SAMPLE      Faust agent + windowed Table per event
    python -m bench.baselines chdb-rss                                RSS of a process that only opens chDB

and print one JSON line with their measurement.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path


def current_rss_mb(pid: int | str = "self") -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def peak_rss_mb(pid: int | str = "self") -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024


def process_cpu_s(pid: int | str = "self") -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def kafka_engine(bootstrap: str, topic: str, events: int, empty: int, workdir: str, python: str) -> dict:
    """What a user would pick instead: ClickHouse's own Kafka table engine and a materialized view into
    a SummingMergeTree (no validation, at-least-once).

    chDB 26.x cannot run the Kafka engine (its background message-broker pool is fixed at 0 threads:
    CREATE fails with "Shutdown was called"), chDB 3.7 (ClickHouse 25.8) can; `python` is an interpreter
    with that build (`make bench` installs it in .venv-kafka-engine). It runs behind our ClickHouse HTTP
    interface in its own process, so it is driven with clickhouse-connect like every ClickHouse, and its
    CPU and memory are that process's. Timed from the first message its consumer read to the moment
    every message is accounted for: counted, rejected as unparsable, or (the `empty` ones) skipped.
    """
    import clickhouse_connect

    from devstack.chdb_server import ChdbServerProcess

    with ChdbServerProcess(
        os.path.join(workdir, "chdb"), python=python, log_path=os.path.join(workdir, "server.log")
    ) as server:
        client = clickhouse_connect.get_client(dsn=server.url)
        client.command(f"""CREATE TABLE queue (raw String) ENGINE = Kafka SETTINGS
            kafka_broker_list = '{bootstrap}', kafka_topic_list = '{topic}', kafka_group_name = 'ch-{topic}',
            kafka_format = 'JSONAsString', kafka_handle_error_mode = 'stream', kafka_max_block_size = 65536,
            kafka_num_consumers = 1, kafka_thread_per_consumer = 1""")
        client.command("""CREATE TABLE runs (window_start DateTime, kind LowCardinality(String),
            model_provider LowCardinality(String), model_id LowCardinality(String), runs UInt64)
            ENGINE = SummingMergeTree ORDER BY (kind, model_provider, model_id, window_start)""")
        client.command("CREATE TABLE rejected (messages UInt64) ENGINE = SummingMergeTree ORDER BY tuple()")
        client.command("""CREATE MATERIALIZED VIEW counted TO runs AS SELECT
            toStartOfMinute(_timestamp) AS window_start, JSONExtractString(raw, 'type') AS kind,
            JSONExtractString(raw, 'data', 'model_provider') AS model_provider,
            JSONExtractString(raw, 'data', 'model_id') AS model_id, 1 AS runs FROM queue WHERE _error = ''""")
        client.command(
            "CREATE MATERIALIZED VIEW unparsable TO rejected AS SELECT 1 AS messages FROM queue WHERE _error != ''"
        )
        pid = server.process.pid
        started = time.monotonic()
        first_read = cpu_at_first_read = None
        done = 0
        while time.monotonic() - started < 300:
            if first_read is None and client.command("SELECT sum(num_messages_read) FROM system.kafka_consumers"):
                first_read, cpu_at_first_read = time.monotonic(), process_cpu_s(pid)
            done = client.command("SELECT (SELECT sum(runs) FROM runs) + (SELECT sum(messages) FROM rejected)")
            if done + empty >= events:
                break
            time.sleep(0.02)
        finished = time.monotonic()
        if done + empty < events:
            raise RuntimeError(f"the Kafka engine accounted for {done + empty:,} of {events:,} messages in 300 s")
        seconds = finished - first_read
        return {
            "events": events,
            "join_s": round(first_read - started, 1),
            "seconds": seconds,
            "rate": events / seconds,
            "cpu_s_per_1m": (process_cpu_s(pid) - cpu_at_first_read) / events * 1e6,
            "rss_mb": peak_rss_mb(pid),
        }


def stock_faust(bootstrap: str, topic: str, sample: int) -> None:
    """What the Faust documentation shows: an agent that updates a windowed Table for every event."""
    import faust

    app = faust.App(
        f"stock-{topic}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        broker_rebalance_timeout=6,
        broker_session_timeout=6,
        topic_partitions=4,
        consumer_auto_offset_reset="earliest",
        datadir=tempfile.mkdtemp(prefix="stock-faust-"),
    )
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
                sys.__stdout__.write(
                    json.dumps(
                        {  # Faust redirects print() into its logging
                            "events": sample,
                            "seconds": seconds,
                            "rate": sample / seconds,
                            "cpu_s_per_1m": (time.process_time() - cpu) / sample * 1e6,
                            "rss_mb": peak_rss_mb(),
                        }
                    )
                    + "\n"
                )
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
    if command == "stock-faust":
        stock_faust(args[0], args[1], int(args[2]))
    elif command == "chdb-rss":
        print(json.dumps(chdb_rss()), flush=True)
    else:
        raise SystemExit(__doc__)
