"""An undecodable record batch costs only its own partition, and nothing is lost: a real lz4 batch on one
partition (Tansu stores it as it is) in front of a worker whose environment hides the codec library. The
worker pauses that partition right before the batch and names it in /health, the log and /metrics, keeps
counting the others, and resumes when an operator skips the batch (`kern-telemetry skip`); the skip
survives a SIGKILL and a rebalance, and the ledger adds up per partition."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import expected_quality, reference_rollup, stored_quality, stored_runs

from devstack.loadgen import EventGenerator
from devstack.processes import wait_flushed_together

pytestmark = pytest.mark.integration

PARTITIONS = 4
ALL_PARTITIONS = range(PARTITIONS)
LZ4_EVENTS = 100


@pytest.fixture
def without_codecs(tmp_path) -> dict[str, str]:
    """Worker environment in which `import cramjam` fails, so aiokafka has no snappy, lz4 or zstd."""
    shim = tmp_path / "no-codecs"
    shim.mkdir()
    (shim / "cramjam.py").write_text('raise ImportError("hidden from this worker by the test")\n')
    return {"PYTHONPATH": str(shim)}


def produce_each(
    stack, generator, per_partition: int, record_ms: int, partitions=ALL_PARTITIONS, compression: str | None = None
) -> list[bytes]:
    values = []
    for partition in partitions:
        chunk = list(generator.events(per_partition))
        stack.produce(chunk, [record_ms] * len(chunk), partition=partition, compression=compression)
        values += chunk
    return values


def skip(stack, partition: int, through: int, reason: str) -> subprocess.CompletedProcess:
    env = {**stack.env, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "skip",
            "--partition",
            str(partition),
            "--through-offset",
            str(through),
            "--reason",
            reason,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=stack.workdir,
    )


def test_a_poison_batch_pauses_only_its_partition_until_an_operator_skips_it(stack_factory, without_codecs):
    stack = stack_factory(partitions=PARTITIONS, shared_clickhouse=True, KERN_FLUSH_INTERVAL_SECONDS="0.3")
    record_ms = int(time.time() * 1000) - 30_000
    generator = EventGenerator(seed=41, invalid_share=0.02, profiles=1000)
    counted = produce_each(stack, generator, 1000, record_ms)
    poison_first = stack.produced[0]
    lz4 = list(EventGenerator(seed=42, invalid_share=0.0).events(LZ4_EVENTS))
    stack.produce(lz4, [record_ms] * LZ4_EVENTS, partition=0, compression="lz4")
    poison_last = stack.produced[0] - 1
    assert poison_last - poison_first + 1 == LZ4_EVENTS

    worker = stack.worker("blind0", **without_codecs)
    report = worker.wait_health(lambda r: "0" in r["poisoned_partitions"])
    poison = report["poisoned_partitions"]["0"]
    assert (poison["first_offset"], poison["last_offset"], poison["codec"]) == (poison_first, poison_last, "lz4")
    assert poison["error"].startswith("UnsupportedCodecError")
    assert f"--partition 0 --through-offset {poison_last}" in poison["resolve"]
    assert report["status"] == "degraded" and "partition 0" in report["degraded"]
    # Everything before the bad batch is counted; the other partitions go on to their ends.
    others = {p: o for p, o in stack.produced.items() if p != 0}
    worker.wait_flushed({0: poison_first, **others})
    counted += produce_each(stack, generator, 500, record_ms, partitions=(1, 2, 3))
    report = worker.wait_flushed({p: o for p, o in stack.produced.items() if p != 0})
    assert report["flushed_offsets"]["0"] == poison_first and "0" in report["poisoned_partitions"]
    metrics = worker.metrics()
    assert 'kern_partition_poisoned{error="UnsupportedCodecError",partition="0"} 1.0' in metrics
    lagging = worker.wait_health(lambda r: r["consumer_lag"].get("0", 0) >= LZ4_EVENTS, timeout=15)  # paused: behind
    assert {lagging["consumer_lag"][p] for p in "123"} == {0}
    assert f'kern_consumer_lag{{partition="0"}} {float(LZ4_EVENTS)}' in worker.metrics()
    log = worker.log_path.read_text()
    assert f"partition 0 paused: undecodable record batch at offsets {poison_first}-{poison_last} (lz4)" in log

    refused = skip(stack, 0, poison_first - 1, "too early")
    assert refused.returncode != 0 and "nothing to skip" in refused.stderr
    done = skip(stack, 0, poison_last, "lz4 batch from a producer we cannot decode (test)")
    assert done.returncode == 0, done.stderr
    report = worker.wait_flushed(dict(stack.produced))
    assert report["poisoned_partitions"] == {} and report["status"] == "ok"
    with stack.clickhouse() as client:  # the skip is partition 0's last flush
        last = client.query(
            "SELECT start_offset, end_offset, skipped FROM kern_telemetry.ingest_flushes "
            "WHERE partition = 0 ORDER BY end_offset DESC LIMIT 1"
        ).result_rows
    assert last == [(poison_first, poison_last + 1, LZ4_EVENTS)]
    worker.kill()

    # A new worker, still without the codec, never reads the skipped range again.
    survivor = stack.worker("blind1", **without_codecs)
    counted += produce_each(stack, generator, 300, record_ms)
    report = survivor.wait_flushed(dict(stack.produced))
    assert report["fetch_errors"] == 0 and report["poisoned_partitions"] == {}
    # A rebalance: a second worker takes half of the partitions.
    second = stack.worker("blind2", **without_codecs)
    second.wait_health(lambda r: len(r["assigned_partitions"]) == PARTITIONS // 2, timeout=90)
    counted += produce_each(stack, generator, 300, record_ms)
    wait_flushed_together([survivor, second], stack.produced)
    assert all(w.health()["fetch_errors"] == 0 for w in (survivor, second))
    assert [survivor.stop(), second.stop()] == [0, 0]

    expected = reference_rollup(stack.settings, counted, record_ms)
    with stack.clickhouse() as client:
        assert stored_runs(client, "runs_minute") == Counter(expected.run_counts())
        quality = expected_quality(expected)
        quality[("unknown", "skipped")] = LZ4_EVENTS
        assert stored_quality(client) == quality
        ledger = client.query(
            "SELECT partition, sum(counted), sum(dead_lettered), sum(late), sum(skipped) "
            "FROM kern_telemetry.ingest_ledger GROUP BY partition ORDER BY partition"
        ).result_rows
    assert {p: c + d + late + s for p, c, d, late, s in ledger} == stack.produced
    assert sum(row[1] for row in ledger) == sum(expected.runs.values())
    assert [row[4] for row in ledger] == [LZ4_EVENTS, 0, 0, 0]
    letters = [
        json.loads(r.value) for r in stack.read_topic(stack.settings.dlq_topic, sum(row[2] for row in ledger) + 1)
    ]
    skipped = [letter for letter in letters if letter["reason"] == "skipped"]
    assert skipped == [
        {
            "reason": "skipped",
            "path": "$",
            "detail": "lz4 batch from a producer we cannot decode (test)",
            "kind": "unknown",
            "source": {
                "topic": stack.settings.topic,
                "partition": 0,
                "offset": poison_first,
                "through_offset": poison_last,
            },
            "size": None,
            "shape": None,
        }
    ]


def test_a_batch_whose_crc_does_not_match_pauses_only_its_partition(stack_factory):
    """The worker checks CRCs with the CPU's instruction and leaves aiokafka's check to a partition whose
    fetch it does not vouch for (`pipeline/kafka.py`): a corrupt batch still fails, exactly at its offsets."""
    stack = stack_factory(partitions=PARTITIONS, shared_clickhouse=True, KERN_FLUSH_INTERVAL_SECONDS="0.3")
    record_ms = int(time.time() * 1000) - 30_000
    generator = EventGenerator(seed=43, invalid_share=0.02, profiles=1000)
    counted = produce_each(stack, generator, 1000, record_ms)
    corrupt = list(EventGenerator(seed=44, invalid_share=0.0).events(20))
    before = stack.produced[2]
    first = stack.produce_corrupt_batch(corrupt, record_ms, partition=2)
    assert first == before
    after = produce_each(stack, generator, 300, record_ms, partitions=(2,))

    worker = stack.worker()
    report = worker.wait_health(lambda r: "2" in r["poisoned_partitions"])
    poison = report["poisoned_partitions"]["2"]
    assert (poison["first_offset"], poison["last_offset"], poison["codec"]) == (first, first + 19, "none")
    assert poison["error"].startswith("CorruptRecordException") and poison["error"].endswith("invalid CRC")
    report = worker.wait_flushed({**stack.produced, 2: first})
    assert report["flushed_offsets"]["2"] == first and "2" in report["poisoned_partitions"]

    done = skip(stack, 2, first + 19, "a batch whose CRC does not match (test)")
    assert done.returncode == 0, done.stderr
    report = worker.wait_flushed(dict(stack.produced))
    assert report["poisoned_partitions"] == {} and worker.stop() == 0
    expected = reference_rollup(stack.settings, counted + after, record_ms)
    with stack.clickhouse() as client:
        assert stored_runs(client, "runs_minute") == Counter(expected.run_counts())
        ledger = client.query(
            "SELECT partition, sum(counted) + sum(dead_lettered) + sum(late), sum(skipped) "
            "FROM kern_telemetry.ingest_ledger GROUP BY partition ORDER BY partition"
        ).result_rows
    assert {p: kept + skipped for p, kept, skipped in ledger} == stack.produced
    assert [row[2] for row in ledger] == [0, 0, len(corrupt), 0]
