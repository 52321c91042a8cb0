"""The HTTP collector's `make bench` rows, on one embedded broker, one after another, the same events:

  direct, per event   aiokafka `send()` per event (acks=all, linger 5 ms): what a service inside the Kafka
                      network would do
  direct, per batch   aiokafka `send_batch` of 100 events: the collector's own produce path, without HTTP
  collector           one `kern-telemetry collect` process; 32 connections post NDJSON batches of 100
                      events, gzip'd beforehand (the clients' CPU is not the collector's), as fast as it answers
  latency             the same posts, open loop at half the collector's rate: from each request's scheduled
                      start to its 202 (a late start counts), p50 and p99

Targets: the collector at >= 0.3x the direct producer, p99 <= 50 ms at half load. The clients, the broker
and the collector share the machine's CPUs. `python -m bench.collector [--events N]` runs it alone and
writes bench/results/collector-<stamp>.{json,md}; `make bench` runs it after the worker's measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from bench.baselines import peak_rss_mb, process_cpu_s
from devstack.broker import EmbeddedBroker
from devstack.loadgen import EventGenerator
from devstack.processes import CollectorProcess
from pipeline.config import Settings
from pipeline.kafka import client_options, collector_producer, create_topics

RESULTS = Path(__file__).parent / "results"
BATCH = 100
CONNECTIONS = 32
TARGET_RATIO, TARGET_P99_MS = 0.3, 50.0
console = Console()


def _topic(broker: EmbeddedBroker) -> Settings:
    settings = Settings(
        bootstrap_servers=broker.bootstrap_servers, topic=f"bench.collector.{uuid.uuid4().hex[:8]}", topic_partitions=4
    )
    create_topics(settings)
    return settings


async def _direct(settings: Settings, batches: list[list[bytes]], per_event: bool) -> dict:
    from aiokafka import AIOKafkaProducer

    producer = (
        collector_producer(settings, 1 << 20, 30.0)
        if not per_event
        else AIOKafkaProducer(
            acks="all", linger_ms=5, max_batch_size=1 << 20, max_request_size=2 << 20, **client_options(settings)
        )
    )
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(settings.topic))
        started, cpu = time.monotonic(), time.process_time()
        pending = []
        for i, batch in enumerate(batches):
            if per_event:
                pending += [await producer.send(settings.topic, value) for value in batch]
            else:
                builder = producer.create_batch()
                for value in batch:
                    builder.append(key=None, value=value, timestamp=None)
                pending.append(
                    await producer.send_batch(builder, settings.topic, partition=partitions[i % len(partitions)])
                )
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
        seconds = time.monotonic() - started
        events = sum(map(len, batches))
        return {"rate": events / seconds, "cpu_s_per_1m": (time.process_time() - cpu) / events * 1e6}
    finally:
        await producer.stop()


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    async with session.post(
        url, data=body, headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    ) as response:
        await response.read()
        return response.status


async def _throughput(url: str, bodies: list[bytes]) -> float:
    """Seconds for CONNECTIONS closed-loop clients to post every body."""
    queue = iter(bodies)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as session:

        async def client() -> None:
            for body in queue:
                if (status := await _post(session, url, body)) != 202:
                    raise RuntimeError(f"the collector answered {status}")

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(CONNECTIONS)))
        return time.monotonic() - started


async def _latency(url: str, bodies: list[bytes], requests_per_s: float, seconds: float) -> tuple[list, Counter]:
    """Open loop: request i is due at i / requests_per_s and its latency counts from then, so a request that
    waits for one of the 2 x CONNECTIONS connections counts its wait (no connection storm when the collector
    slows down). The latencies of the 202s, and how many requests got each status."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2 * CONNECTIONS)) as session:

        async def one(body: bytes, due: float) -> None:
            status = await _post(session, url, body)
            statuses[status] += 1
            if status == 202:
                latencies.append(time.monotonic() - due)

        tasks, started = [], time.monotonic()
        for i in range(int(requests_per_s * seconds)):
            due = started + i / requests_per_s
            if (ahead := due - time.monotonic()) > 0:
                await asyncio.sleep(ahead)
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)], due)))
        await asyncio.gather(*tasks)
    return latencies, statuses


def measure(broker: EmbeddedBroker, workdir: Path, events: int, seed: int) -> dict:
    values = list(EventGenerator(seed=seed, invalid_share=0).events(events))
    batches = [values[i : i + BATCH] for i in range(0, len(values), BATCH)]
    bodies = [gzip.compress(b"\n".join(batch), 1) for batch in batches]
    results: dict = {
        "events": events,
        "batch": BATCH,
        "connections": CONNECTIONS,
        "gzip_ratio": sum(map(len, bodies)) / sum(map(len, values)),
    }
    results["direct_per_event"] = asyncio.run(_direct(_topic(broker), batches, per_event=True))
    results["direct_per_batch"] = asyncio.run(_direct(_topic(broker), batches, per_event=False))
    settings = _topic(broker)
    env = {
        "KERN_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "KERN_TOPIC": settings.topic,
        "KERN_LOG_LEVEL": "warn",
        "KERN_COLLECTOR_RATE_LIMIT_PER_SECOND": "0",
    }
    collector = CollectorProcess(env, workdir).start()
    try:
        collector.wait_ready()
        url = f"{collector.url}/v1/events"
        asyncio.run(_throughput(url, bodies[:50]))  # warm-up: connections, the producer's metadata
        cpu = process_cpu_s(collector.process.pid)
        seconds = asyncio.run(_throughput(url, bodies))
        rate = events / seconds
        results["collector"] = {
            "rate": rate,
            "rss_mb": peak_rss_mb(collector.process.pid),
            "cpu_s_per_1m": (process_cpu_s(collector.process.pid) - cpu) / events * 1e6,
        }
        load = rate / 2
        before = _answered_within(collector.metrics(), TARGET_P99_MS / 1000)
        latencies, statuses = asyncio.run(_latency(url, bodies, load / BATCH, max(5.0, min(30.0, events / 40_000))))
        latencies.sort()
        after = _answered_within(collector.metrics(), TARGET_P99_MS / 1000)
        results["latency"] = {
            "events_per_s": load,
            "requests": sum(statuses.values()),
            "refused": {str(status): n for status, n in statuses.items() if status != 202},
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
            "max_ms": latencies[-1] * 1000,
            "collector_within_target": (after[0] - before[0]) / (after[1] - before[1]),
        }
    finally:
        collector.stop()
    direct = max(results["direct_per_event"]["rate"], results["direct_per_batch"]["rate"])
    results["ratio"] = results["collector"]["rate"] / direct
    return results


def _answered_within(exposition: str, seconds: float) -> tuple[float, float]:
    """(requests the collector answered within `seconds`, all it answered), from its own histogram."""
    samples = {
        (sample.name, sample.labels.get("le")): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
    return (
        samples[("kern_collector_request_duration_seconds_bucket", str(seconds))],
        samples[("kern_collector_request_duration_seconds_count", None)],
    )


def rows(results: dict) -> list[tuple[str, dict]]:
    """Rows for `bench.run`'s table (events/s, CPU s / 1M events, peak RSS)."""
    return [
        ("producing: aiokafka send() per event", results["direct_per_event"]),
        ("producing: aiokafka send_batch of 100", results["direct_per_batch"]),
        ("producing: HTTP collector, 1 process, 100 gzip'd per POST", results["collector"]),
    ]


def note(results: dict) -> str:
    latency = results["latency"]
    return (
        f"HTTP collector: {results['collector']['rate']:,.0f} events/s = {results['ratio']:.2f}x the faster direct "
        f"producer (target >= {TARGET_RATIO}); at half that rate ({latency['events_per_s']:,.0f} events/s, "
        f"{latency['requests']:,} requests, refused: {latency['refused'] or 'none'}) p50 {latency['p50_ms']:.1f} ms, "
        f"p99 {latency['p99_ms']:.1f} ms, max "
        f"{latency['max_ms']:.1f} ms (target p99 <= {TARGET_P99_MS:.0f} ms), of which the collector answered "
        f"{latency['collector_within_target']:.2%} within {TARGET_P99_MS:.0f} ms by its own clock; "
        f"{results['connections']} connections, gzip'd bodies {results['gzip_ratio']:.2f} of the events' bytes; "
        "clients, broker and collector share the CPUs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kern-bench-collector-"))
    with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
        results = measure(broker, workdir, args.events, args.seed)
    lines = ["| measurement | events/s | CPU s / 1M events | peak RSS MB |", "|---|---|---|---|"]
    lines += [
        f"| {name} | {m['rate']:,.0f} | {m['cpu_s_per_1m']:.1f} | {m['rss_mb']:.0f} |"
        if "rss_mb" in m
        else f"| {name} | {m['rate']:,.0f} | {m['cpu_s_per_1m']:.1f} (the producing process) | n/a |"
        for name, m in rows(results)
    ]
    console.print("\n".join(lines) + "\n" + note(results))
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (RESULTS / f"collector-{stamp}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"collector-{stamp}.md").write_text(
        f"# HTTP collector, {args.events:,} events\n\n" + "\n".join(lines) + f"\n\n- {note(results)}\n"
    )
    console.print(f"written: bench/results/collector-{stamp}.json, .md")


if __name__ == "__main__":
    main()
