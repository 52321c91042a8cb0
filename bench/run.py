"""`make bench`: throughput, CPU, memory and freshness of the worker, with same-run baselines.

All measurements run in one process tree on one embedded broker, one after another, on the same topic:
  ceiling       a bare aiokafka consumer draining the topic, no processing
  worker        this pipeline (validation, rollup, ClickHouse writes): first event consumed -> last flush landed,
                with chDB in the worker's process, then writing over HTTP to a ClickHouse in its own process
  2 workers     two worker processes sharing the topic's 4 partitions and that ClickHouse
  kafka engine  ClickHouse's Kafka table engine + MV into a SummingMergeTree (chDB 3.7 in its own process)
  stock faust   a Faust agent updating a windowed Table per event (on a sample: it is slow)
  freshness     events produced at a steady rate; delay from produce to visible in ClickHouse
  collector     the HTTP collector beside a direct aiokafka producer, and its latency at half load (bench/collector.py)
Ratios between these, measured in the same run, are the figures to quote; absolute rates depend on the
(shared, noisy) machine. Results: a table on stdout, JSON and Markdown under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import clickhouse_connect
import msgspec
from rich.console import Console
from rich.table import Table

from bench import collector as http_collector
from bench.baselines import current_rss_mb, kafka_engine, peak_rss_mb, process_cpu_s
from devstack.broker import EmbeddedBroker
from devstack.chdb_server import ChdbServerProcess
from devstack.loadgen import DEFAULT_PROFILES, EventGenerator
from devstack.processes import WorkerProcess, reached
from pipeline import dimensions
from pipeline.config import Settings
from pipeline.kafka import FETCH_OPTIONS, create_topics, produce

RESULTS = Path(__file__).parent / "results"
KAFKA_ENGINE_PYTHON = Path(__file__).parent.parent / ".venv-kafka-engine" / "bin" / "python"
PARTITIONS = 4
console = Console()


class Topic:
    """A topic (fresh unless named) with its own consumer group and database for the workers."""

    def __init__(self, broker: EmbeddedBroker, workdir: Path, name: str | None = None, dsn: str | None = None):
        name = name or f"bench.{uuid.uuid4().hex[:8]}"
        self.workdir = workdir
        self.env = {
            "KERN_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "KERN_TOPIC": name,
            "KERN_TOPIC_PARTITIONS": str(PARTITIONS),
            "KERN_CONSUMER_GROUP": f"rollup-{uuid.uuid4().hex[:8]}",
            "KERN_CLICKHOUSE_DSN": dsn or f"chdb://{workdir / 'chdb'}",
            "KERN_LOG_LEVEL": "warn",
            "KERN_HASH_SECRET": "bench-hash-secret-of-the-benchmarks",
        }
        self.settings = Settings(**{k.removeprefix("KERN_").lower(): v for k, v in self.env.items()})
        self.name = name
        create_topics(self.settings)

    def worker(self, name: str) -> WorkerProcess:
        return WorkerProcess(dict(self.env), self.workdir, name=name).start()


def _drained(count: int, first: float, cpu: float) -> dict:
    """A drain's figures, from its first record's monotonic time and the process time then."""
    seconds = time.monotonic() - first
    return {
        "events": count,
        "seconds": seconds,
        "rate": count / seconds,
        "cpu_s_per_1m": (time.process_time() - cpu) / count * 1e6,
    }


async def _drain(bootstrap: str, topic: str, expected: int) -> dict:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **FETCH_OPTIONS)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count, first = 0, None
        cpu = time.process_time()
        while count < expected:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                if first is None:
                    first, cpu = time.monotonic(), time.process_time()
                count += len(messages)
        return _drained(count, first, cpu)
    finally:
        await consumer.stop()


def _drain_librdkafka(bootstrap: str, topic: str, expected: int) -> dict:
    """The other ceiling: librdkafka (confluent-kafka) draining the topic, `consume(10000)` at a time, each
    record's value, offset and timestamp read (as a worker would). Its CPU includes librdkafka's threads."""
    import confluent_kafka

    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"drain-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": FETCH_OPTIONS["fetch_max_bytes"],
            "max.partition.fetch.bytes": FETCH_OPTIONS["max_partition_fetch_bytes"],
        }
    )
    consumer.subscribe([topic])
    try:
        count, first, cpu = 0, None, time.process_time()
        while count < expected:
            for message in consumer.consume(10_000, 1.0):
                if message.error() is None:
                    if first is None:
                        first, cpu = time.monotonic(), time.process_time()
                    message.value(), message.offset(), message.timestamp()
                    count += 1
        return _drained(count, first, cpu)
    finally:
        consumer.close()


def run_workers(topic: Topic, ends: dict[int, int], count: int, events: int) -> dict:
    """Start `count` workers on a filled topic; time them from the first event any of them consumed to
    the last flush that lands the topic's end, from outside (their /health, and /proc for CPU)."""
    workers = [topic.worker(f"worker{i}") for i in range(count)]
    first = None  # (time, CPU seconds of each worker) when the first event was consumed
    try:
        deadline = time.monotonic() + 600
        while True:
            reports = [w.health() or {} for w in workers]
            for w in workers:
                w.assert_running()
            if first is None and any(r.get("events_consumed") for r in reports):
                first = (time.time(), [process_cpu_s(w.process.pid) for w in workers])
            if reached(reports, ends):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers did not finish: {reports}")
            # often until the start (it is timed from the probe), then seldom: a /health answer costs a
            # worker ~1 ms of CPU, 5% of its samples when probed every 20 ms (py-spy, 6 December); the end
            # is exact whatever the probe's period (`last_flush_age_s`)
            time.sleep(0.02 if first is None else 0.2)
        now = time.time()
        last = max(now - r["last_flush_age_s"] for r in reports if r.get("last_flush_age_s") is not None)
        cpu = sum(process_cpu_s(w.process.pid) for w in workers) - sum(first[1])
        rss = max(peak_rss_mb(w.process.pid) for w in workers)
        return {
            "events": events,
            "seconds": last - first[0],
            "rate": events / (last - first[0]),
            "cpu_s_per_1m": cpu / events * 1e6,
            "rss_mb": rss,
        }
    finally:
        for w in workers:
            w.stop()


def freshness(broker: EmbeddedBroker, workdir: Path, rate: int, seconds: int, seed: int) -> dict:
    """Delay from a record's produce time to the moment the worker reports its offset landed."""
    topic = Topic(broker, workdir)
    worker = topic.worker("freshness")
    try:
        while (worker.health() or {}).get("status") != "ok":
            time.sleep(0.2)
        warm_up = produce(topic.settings, [b"{}"] * PARTITIONS * 50)  # every partition assigned and flushing
        worker.wait_flushed(warm_up, timeout=120)
        values = list(EventGenerator(seed=seed).events(rate * seconds))
        sent: list[tuple[int, int, float]] = []
        landed: list[tuple[float, dict]] = []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                report = worker.health()
                if report:
                    landed.append((time.time(), {int(p): o for p, o in report["flushed_offsets"].items()}))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            ends = produce(
                topic.settings,
                values,
                rate=rate,
                delivered=lambda partition, offset, at: sent.append((partition, offset, at)),
            )
            worker.wait_flushed(ends, 120)
            time.sleep(0.1)
        finally:
            stop.set()
            watcher.join()
        delays = sorted(
            next(t for t, flushed in landed if flushed.get(partition, 0) > offset) - at
            for partition, offset, at in sent
        )
        return {
            "rate": rate,
            "seconds": seconds,
            "p50_s": delays[len(delays) // 2],
            "p99_s": delays[int(len(delays) * 0.99)],
            "max_s": delays[-1],
            "flush_interval_s": topic.settings.flush_interval_seconds,
        }
    finally:
        worker.stop()


#: The free-text fields of an agent run a hostile event fills (`hostile_values`).
_FREE_TEXT = ("model_provider", "model_name", "model_id", "db_type")
_MODEL_REFERENCES = ("parser_model", "output_model")
HOSTILE_CHARS = 1_000  # per value: the rules before their length cap took 6-45 ms on the worst such shapes


def hostile_values(generator: EventGenerator, events: int, every: int = 100) -> list[bytes]:
    """The normal mix in which one event in `every` is an agent run carrying, in every free-text field and
    the SDK version, a value of HOSTILE_CHARS shaped against the value rules (`bench.value_rules.shapes`: a
    prefix the rules look for, a long run of one character or unit, one ending character; a different shape
    per value). At this length the rules before their cap spent ~0.2 s on such an event; with the cap a
    value is `(invalid)` before any rule runs, and what is left is the event's bytes (~10 KB)."""
    from bench.value_rules import shaped, shapes

    rotation = itertools.cycle(shapes())
    values = list(generator.events(events))
    for i in range(0, events, every):
        payload = generator.payload()
        payload["type"] = "agent"
        texts = [
            shaped(HOSTILE_CHARS, *next(rotation)) for _ in range(len(_FREE_TEXT) + 2 * len(_MODEL_REFERENCES) + 1)
        ]
        values[i] = msgspec.json.encode(_filled(payload, texts))
    return values


def _filled(payload: dict, texts: list[str]) -> dict:
    """`payload` with `texts` in its free-text fields, its model references' and its SDK version."""
    texts = iter(texts)
    payload["data"].update({field: next(texts) for field in _FREE_TEXT})
    payload["data"].update({ref: {"provider": next(texts), "id": next(texts)} for ref in _MODEL_REFERENCES})
    payload["sdk_version"] = next(texts)
    return payload


def cardinality_flood(broker: EmbeddedBroker, workdir: Path, events: int, seed: int) -> dict:
    """One worker (ClickHouse over HTTP) drains a backlog of six phases: the normal mix twice (the first
    warms the worker up: consumer start, caches, first flushes), a flood of events that each carry a unique
    model id and a unique session (a buggy or hostile client), the normal mix, the normal mix with hostile
    values (`hostile_values`), and the normal mix again. Per phase: the consumption rate (events consumed,
    polled every 20 ms), the worker's and ClickHouse's CPU, and the worker's peak resident memory; then the
    rows in runs_minute and value_candidates. The flood and the hostile values are each compared with the
    mean rate of the normal mixes either side of them, so that the machine's drift over the run (a phase
    of a few seconds moves by a fifth on a busy machine) falls on both sides of a ratio; the normal mix
    after the flood with the one before it. Flushes run every second throughout (no catch-up interval), so
    that each phase pays for its own."""
    generator = EventGenerator(seed=seed)
    flood = []
    for i in range(events):
        payload = generator.payload()
        payload["session_id"], payload["data"]["model_id"] = f"flood-session-{i}", f"flood-model-{i:07d}"
        flood.append(msgspec.json.encode(payload))
    phases = (
        ("warm-up, normal mix", list(generator.events(events))),
        ("normal mix", list(generator.events(events))),
        ("flood of unique values", flood),
        ("normal mix after the flood", list(generator.events(events))),
        ("hostile values (1 event in 100)", hostile_values(generator, events)),
        ("normal mix after the hostile values", list(generator.events(events))),
    )
    topic = Topic(broker, workdir)
    for _, values in phases:
        ends = produce(topic.settings, values)
    with ChdbServerProcess(str(workdir / "chdb")) as server:
        reader = Topic(broker, workdir, name=topic.name, dsn=server.url)
        reader.env["KERN_CATCH_UP_LAG_EVENTS"] = str(10 * len(phases) * events)
        worker = reader.worker("flood")
        pids = (worker.process.pid, server.process.pid)
        marks, cpu, rss = [], [], []  # at each phase boundary: time, and CPU seconds of the worker and ClickHouse
        try:
            for done in range(1, len(phases) + 1):
                while (report := worker.health() or {}).get("events_consumed", 0) < done * events:
                    worker.assert_running()
                    if report.get("events_consumed") and not marks:
                        marks.append(time.monotonic())
                        cpu.append([process_cpu_s(pid) for pid in pids])
                    rss.append((done, current_rss_mb(worker.process.pid)))
                    time.sleep(0.02)
                marks.append(time.monotonic())
                cpu.append([process_cpu_s(pid) for pid in pids])
            worker.wait_flushed(ends, timeout=120)
            suppressed = worker.health()["suppressed_values"]
        finally:
            worker.stop()
        client = clickhouse_connect.get_client(dsn=server.url)
        database = reader.settings.clickhouse_database
        runs_rows, rare_rows, candidate_rows = client.query(
            f"SELECT count(), countIf(model_id = '(rare)'), (SELECT count() FROM {database}.value_candidates) "
            f"FROM {database}.runs_minute"
        ).result_rows[0]
    rows = [
        {
            "phase": name,
            "rate": events / (marks[i + 1] - marks[i]),
            "worker_cpu_s_per_1m": (cpu[i + 1][0] - cpu[i][0]) / events * 1e6,
            "clickhouse_cpu_s_per_1m": (cpu[i + 1][1] - cpu[i][1]) / events * 1e6,
            "rss_mb": max(mb for phase, mb in rss if phase == i + 1),
        }
        for i, (name, _) in enumerate(phases)
    ]
    _, normal, flooded, after, hostile, last = rows
    return {
        "events_per_phase": events,
        "phases": rows,
        "runs_minute_rows": runs_rows,
        "rare_rows": rare_rows,
        "candidate_rows": candidate_rows,
        "suppressed": suppressed,
        "flood_vs_normal": flooded["rate"] / ((normal["rate"] + after["rate"]) / 2),
        "hostile_vs_normal": hostile["rate"] / ((after["rate"] + last["rate"]) / 2),
        "after_vs_before": after["rate"] / normal["rate"],
        "flood_rss_vs_normal": flooded["rss_mb"] / normal["rss_mb"],
    }


def memory_runs(broker: EmbeddedBroker, workdir: Path, runs: tuple[tuple[int, int], ...], seed: int) -> list[dict]:
    """One worker (ClickHouse over HTTP) per (events, profiles): peak RSS and CPU must follow the distinct
    dimension sets (bounded by the generator's profiles), not the number of events."""
    rows = []
    for count, profiles in runs:
        topic = Topic(broker, workdir / f"memory-{count}-{profiles}")
        generator = EventGenerator(seed=seed, profiles=profiles)
        ends: dict[int, int] = {}
        for start in range(0, count, 1_000_000):  # generate and produce in slices: 10M events are ~5 GB
            chunk = list(generator.events(min(1_000_000, count - start)))
            for partition, offset in produce(topic.settings, chunk).items():
                ends[partition] = max(ends.get(partition, 0), offset)
        with ChdbServerProcess(str(topic.workdir / "chdb")) as server:
            reader = Topic(broker, topic.workdir, name=topic.name, dsn=server.url)
            measured = run_workers(reader, ends, 1, count)
            client = clickhouse_connect.get_client(dsn=server.url)
            measured["dimension_sets"], measured["runs_minute_rows"] = client.query(
                f"SELECT uniqExact({', '.join(dimensions.NAMES)}), count() "
                f"FROM {reader.settings.clickhouse_database}.runs_minute"
            ).result_rows[0]
            client.close()
        rows.append({"events": count, "profiles": profiles, **measured})
        console.print(
            f"{count:,} events, {measured['dimension_sets']:,} dimension sets: {measured['rate']:,.0f} ev/s, "
            f"{measured['cpu_s_per_1m']:.1f} CPU-s/1M, peak RSS {measured['rss_mb']:.0f} MB"
        )
    return rows


def subprocess_json(args: list[str], timeout: float) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "bench.baselines", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).parent.parent,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{args[0]} printed no result: {result.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="200k events, short freshness run")
    parser.add_argument("--faust-sample", type=int, default=60_000, help="events stock Faust is timed on")
    parser.add_argument("--freshness-rate", type=int, default=20_000)
    parser.add_argument("--freshness-seconds", type=int, default=60)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--flood-events",
        type=int,
        default=500_000,
        help="events per phase of the cardinality flood (normal, normal, flood, normal, hostile values, normal)",
    )
    parser.add_argument("--flood", action="store_true", help="only the cardinality flood")
    parser.add_argument(
        "--kafka-engine-python",
        default=str(KAFKA_ENGINE_PYTHON),
        help="an interpreter with chDB 3.7 (ClickHouse 25.8), whose Kafka engine works",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="only the memory check: one worker's peak RSS and CPU by event count and dimension sets",
    )
    args = parser.parse_args()
    if args.memory:
        return memory_report(args.seed)
    if args.flood:
        return flood_report(args.flood_events, args.seed)
    if args.quick:
        args.events, args.faust_sample, args.freshness_seconds, args.flood_events = 200_000, 20_000, 15, 100_000

    workdir = Path(tempfile.mkdtemp(prefix="kern-bench-"))
    results: dict = {
        "events": args.events,
        "partitions": PARTITIONS,
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
        console.print(f"generating {args.events:,} events ...")
        values = list(EventGenerator(seed=args.seed).events(args.events))
        topic = Topic(broker, workdir / "main")
        started = time.monotonic()
        ends = produce(topic.settings, values)
        results["produce_rate"] = args.events / (time.monotonic() - started)
        empty = values.count(b"")
        del values
        console.print(f"produced to {topic.name}; measuring the ceilings (bare aiokafka and librdkafka drains) ...")
        results["ceiling"] = asyncio.run(_drain(broker.bootstrap_servers, topic.name, args.events))
        results["ceiling_librdkafka"] = _drain_librdkafka(broker.bootstrap_servers, topic.name, args.events)
        console.print("measuring the worker ...")
        results["worker"] = run_workers(topic, ends, 1, args.events)
        for key, count in (("worker_http", 1), ("two_workers", 2)):
            console.print(f"measuring {count} worker(s) writing to ClickHouse over HTTP ...")
            with ChdbServerProcess(str(workdir / key / "chdb")) as server:
                cpu = process_cpu_s(server.process.pid)
                results[key] = run_workers(
                    Topic(broker, workdir / key, name=topic.name, dsn=server.url), ends, count, args.events
                )
                results[key]["clickhouse_cpu_s_per_1m"] = (process_cpu_s(server.process.pid) - cpu) / args.events * 1e6
        console.print(f"measuring the worker over HTTP on {args.events:,} events of sessions of ~8 runs ...")
        sessions = Topic(broker, workdir / "sessions")
        sessions_ends = produce(
            sessions.settings, EventGenerator(seed=args.seed, runs_per_session=8).events(args.events)
        )
        with ChdbServerProcess(str(workdir / "sessions" / "chdb")) as server:
            cpu = process_cpu_s(server.process.pid)
            results["worker_http_sessions"] = run_workers(
                Topic(broker, workdir / "sessions", name=sessions.name, dsn=server.url), sessions_ends, 1, args.events
            )
            results["worker_http_sessions"]["clickhouse_cpu_s_per_1m"] = (
                (process_cpu_s(server.process.pid) - cpu) / args.events * 1e6
            )
        console.print("measuring ClickHouse's Kafka engine (its consumer takes ~30 s to join) ...")
        (workdir / "kafka-engine").mkdir()
        results["kafka_engine"] = kafka_engine(
            broker.bootstrap_servers,
            topic.name,
            args.events,
            empty,
            str(workdir / "kafka-engine"),
            args.kafka_engine_python,
        )
        console.print(f"measuring stock Faust on {args.faust_sample:,} events ...")
        results["stock_faust"] = subprocess_json(
            ["stock-faust", broker.bootstrap_servers, topic.name, str(args.faust_sample)], timeout=900
        )
        results["chdb_rss"] = subprocess_json(["chdb-rss"], timeout=120)
        console.print(f"measuring freshness at {args.freshness_rate:,} events/s for {args.freshness_seconds} s ...")
        results["freshness"] = freshness(
            broker, workdir / "fresh", args.freshness_rate, args.freshness_seconds, args.seed
        )
        console.print(
            f"measuring a flood of {args.flood_events:,} unique values, then hostile values, between normal mixes ..."
        )
        results["cardinality"] = cardinality_flood(broker, workdir / "flood", args.flood_events, args.seed)
        console.print("measuring the HTTP collector beside a direct aiokafka producer ...")
        results["collector"] = http_collector.measure(broker, workdir / "collector", args.events, args.seed)
    report(results)


def flood_report(events: int, seed: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="kern-bench-flood-"))
    with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
        flood = cardinality_flood(broker, workdir, events, seed)
    note = flood_note(flood)
    console.print(note)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (RESULTS / f"flood-{stamp}.json").write_text(json.dumps(flood, indent=2))
    (RESULTS / f"flood-{stamp}.md").write_text(f"# Cardinality flood\n\n- {note}\n")
    console.print(f"written: bench/results/flood-{stamp}.json, .md")


def memory_report(seed: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="kern-bench-memory-"))
    default = DEFAULT_PROFILES
    plan = ((1_000_000, default), (10_000_000, default), (1_000_000, default // 10), (1_000_000, default * 10))
    with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
        rows = memory_runs(broker, workdir, plan, seed)
    small, large = rows[0], rows[1]
    lines = [
        "| events | dimension sets | runs_minute rows | events/s | CPU s / 1M | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['events']:,} | {r['dimension_sets']:,} | {r['runs_minute_rows']:,} | {r['rate']:,.0f} | "
        f"{r['cpu_s_per_1m']:.1f} | {r['rss_mb']:.0f} |"
        for r in rows
    ]
    verdict = (
        f"peak RSS at {large['events']:,} events is {large['rss_mb'] / small['rss_mb']:.3f} x the peak at "
        f"{small['events']:,} (target: within 1.10); at 1,000,000 events, RSS and CPU follow the "
        f"dimension sets (the generator's profiles: {default // 10:,}, {default:,}, {default * 10:,})"
    )
    console.print("\n".join(lines) + "\n" + verdict)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (RESULTS / f"memory-{stamp}.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / f"memory-{stamp}.md").write_text(
        "# Memory vs event count and dimension sets\n\n" + "\n".join(lines) + f"\n\n- {verdict}\n"
    )
    console.print(f"written: bench/results/memory-{stamp}.json, .md")


def flood_note(flood: dict) -> str:
    rates = ", ".join(
        f"{p['phase']} {p['rate']:,.0f} events/s (CPU s / 1M: worker {p['worker_cpu_s_per_1m']:.1f}, "
        f"ClickHouse {p['clickhouse_cpu_s_per_1m']:.1f}; peak RSS {p['rss_mb']:.0f} MB)"
        for p in flood["phases"]
    )
    return (
        f"cardinality flood, {flood['events_per_phase']:,} events per phase, one worker: {rates}; flood / the "
        f"normal mixes either side {flood['flood_vs_normal']:.2f} (target >= 0.5), hostile values / the normal "
        f"mixes either side {flood['hostile_vs_normal']:.2f} "
        f"(target >= 0.9), after / before {flood['after_vs_before']:.2f} (target "
        f">= 0.9), flood peak RSS / normal {flood['flood_rss_vs_normal']:.3f} (target <= 1.10); runs_minute rows "
        f"{flood['runs_minute_rows']:,} of which (rare) model ids {flood['rare_rows']:,}; candidate rows "
        f"{flood['candidate_rows']:,}; suppressed values {flood['suppressed']}"
    )


COLUMNS = (
    "measurement",
    "events/s",
    "× aiokafka drain",
    "× librdkafka drain",
    "worker HTTP ×",
    "CPU s / 1M (+ ClickHouse)",
    "events / CPU-s",
    "peak RSS MB",
)


def _cells(name: str, m: dict, results: dict) -> list[str]:
    """A row: the rate, its ratio to both ceilings and the worker over HTTP's ratio to it, CPU per 1M events
    (the process's own, plus ClickHouse's where it runs apart) and events per CPU-second of both."""
    rate, worker = m.get("rate"), results["worker_http"]["rate"]
    cpu, clickhouse = m.get("cpu_s_per_1m"), m.get("clickhouse_cpu_s_per_1m", 0.0)
    return [
        name,
        f"{rate:,.0f}" if rate else "n/a",
        *(f"{rate / results[ceiling]['rate']:.2f}" if rate else "n/a" for ceiling in ("ceiling", "ceiling_librdkafka")),
        f"{worker / rate:.2f}" if rate else "n/a",
        (f"{cpu:.1f}" + (f" + {clickhouse:.1f}" if clickhouse else "")) if cpu else "n/a",
        f"{1e6 / (cpu + clickhouse):,.0f}" if cpu else "n/a",
        f"{m['rss_mb']:.0f}" if m.get("rss_mb") else "n/a",
    ]


def report(results: dict) -> None:
    worker = results["worker"]
    rows = [
        ("ceiling: bare aiokafka drain", results["ceiling"]),
        ("ceiling: bare librdkafka drain", results["ceiling_librdkafka"]),
        ("this worker, embedded chDB in process", worker),
        ("this worker -> ClickHouse over HTTP", results["worker_http"]),
        ("this worker -> over HTTP, sessions of ~8 runs", results["worker_http_sessions"]),
        ("2 workers / 4 partitions -> ClickHouse over HTTP", results["two_workers"]),
        ("ClickHouse Kafka engine + MV (chDB 3.7)", results["kafka_engine"]),
        ("stock Faust, windowed Table per event", results["stock_faust"]),
        *http_collector.rows(results["collector"]),
    ]
    table = Table(
        title=f"{results['events']:,} events, {results['partitions']} partitions, "
        f"{results['cpus']} CPUs (started {results['started']})",
        title_justify="left",
    )
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "measurement" else "right")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, m in rows:
        cells = _cells(name, m, results)
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    engine = results["kafka_engine"]["rate"]
    fresh = results["freshness"]
    notes = [
        f"worker over HTTP / Kafka engine: {results['worker_http']['rate'] / engine:.2f} (one session per event), "
        f"{results['worker_http_sessions']['rate'] / engine:.2f} (sessions of ~8 runs); target >= 1.5",
        f"freshness at {fresh['rate']:,} events/s for {fresh['seconds']} s: p50 {fresh['p50_s']:.2f} s, "
        f"p99 {fresh['p99_s']:.2f} s, max {fresh['max_s']:.2f} s (target p99 <= flush interval "
        f"{fresh['flush_interval_s']} s + 1 s)",
        f"chDB engine alone (a process that only opens it): {results['chdb_rss']['rss_mb']:.0f} MB RSS; the worker "
        f"above that: {worker['rss_mb'] - results['chdb_rss']['rss_mb']:.0f} MB",
        "ClickHouse (chDB server process) CPU per 1M events: "
        f"{results['worker_http']['clickhouse_cpu_s_per_1m']:.1f} s "
        f"with 1 worker, {results['two_workers']['clickhouse_cpu_s_per_1m']:.1f} s with 2 (not in the workers' CPU "
        f"column); all processes share {results['cpus']} CPUs with the broker",
        f"Kafka engine (chDB 3.7 = ClickHouse 25.8, in its own process): consumer joined after "
        f"{results['kafka_engine']['join_s']} s; timed from the first message it read",
        f"stock Faust timed on its first {results['stock_faust']['events']:,} events",
        flood_note(results["cardinality"]),
        http_collector.note(results["collector"]),
    ]
    console.print(table)
    for note in notes:
        console.print(f"- {note}")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (RESULTS / f"bench-{stamp}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"bench-{stamp}.md").write_text(
        f"# Benchmark {results['started']}\n\n" + "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    )
    console.print(f"written: bench/results/bench-{stamp}.json, .md")


if __name__ == "__main__":
    main()
