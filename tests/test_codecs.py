"""Every standard record codec, from kafka-python and from librdkafka (the client under most non-Java
SDKs), counted exactly by a real worker on the real broker. Each codec's events carry their own record
time, so every codec is checked window by window against the reference fold."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from conftest import expected_quality, reference_rollup, stored_quality, stored_runs

from devstack.loadgen import EventGenerator

pytestmark = pytest.mark.integration

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
EVENTS_PER_CODEC = 2000


@pytest.mark.parametrize("producer", ["kafka-python", "librdkafka"])
def test_every_codec_is_counted_exactly(stack_factory, producer):
    stack = stack_factory(partitions=2)
    base_ms = (int(time.time()) // 60 - 20) * 60_000
    expected_runs, expected_notes = Counter(), Counter()
    for i, codec in enumerate(CODECS):
        values = list(EventGenerator(seed=100 + i, invalid_share=0.02).events(EVENTS_PER_CODEC))
        record_ms = base_ms + i * 60_000  # one window per codec
        if producer == "kafka-python":
            ends = stack.produce(values, [record_ms] * len(values), compression=None if codec == "none" else codec)
        else:
            ends = stack.produce_with_librdkafka(values, record_ms, compression=codec)
        reference = reference_rollup(stack.settings, values, record_ms)
        expected_runs.update(reference.run_counts())
        expected_notes.update(expected_quality(reference))
    assert sum(ends.values()) == len(CODECS) * EVENTS_PER_CODEC

    worker = stack.worker()
    report = worker.wait_flushed(ends)
    assert report["status"] == "ok" and report["events_flushed"] == len(CODECS) * EVENTS_PER_CODEC
    assert worker.stop() == 0
    with stack.clickhouse() as client:
        stored = stored_runs(client, "runs_minute")
        for i, codec in enumerate(CODECS):
            window = (base_ms + i * 60_000) // 1000
            assert Counter({k: n for k, n in stored.items() if k[0] == window}) == Counter(
                {k: n for k, n in expected_runs.items() if k[0] == window}
            ), codec
        assert stored == expected_runs
        assert stored_quality(client) == expected_notes
