"""End to end on the real embedded broker and chDB: a known mix of events through a worker process, then
the exact contents of every ClickHouse table and of the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import (
    expected_quality,
    reference_rollup,
    roll,
    stored_drops,
    stored_patterns,
    stored_quality,
    stored_runs,
)
from kern_telemetry_client.contract import OS
from test_events import DOC_DATA, DOC_DIMS

from pipeline.kafka import dead_letter_producer, send_grouped

pytestmark = pytest.mark.integration

NOW_S = int(time.time())
BASE_S = NOW_S - NOW_S % 60 - 180  # a window start three minutes ago: every window below is complete
SENTINEL = "SENTINEL-d41d8cd9"  # planted in identifiers and unknown fields: must never be stored

DOC_AGENT_DATA = {**DOC_DATA, "agent_id": SENTINEL}
DOC_AGENT_DIMS = DOC_DIMS


def event(kind: str | None, data: dict | None = None, sdk: str = "1.0.0", **extra) -> bytes:
    payload = {"session_id": SENTINEL, "run_id": SENTINEL, "sdk_version": sdk, "prompt": SENTINEL, **extra}
    if kind is not None:
        payload["type"] = kind
    if data is not None:
        payload["data"] = data
    return json.dumps(payload).encode()


def ms(seconds: float) -> int:
    return int(seconds * 1000)


# (record value, record time in s, expected: dims counted in window W, or ("quality", reason, kind))
VALID = [
    (event("agent", DOC_AGENT_DATA), BASE_S + 5, (BASE_S, DOC_AGENT_DIMS)),
    (event("agent", DOC_AGENT_DATA), BASE_S + 30, (BASE_S, DOC_AGENT_DIMS)),
    (event("agent", DOC_AGENT_DATA), BASE_S + 59, (BASE_S, DOC_AGENT_DIMS)),
    (event("agent", DOC_AGENT_DATA), BASE_S + 60, (BASE_S + 60, DOC_AGENT_DIMS)),  # next window
    # payload time wins over the record time: counted in the earlier window
    (event("agent", DOC_AGENT_DATA, timestamp=BASE_S + 59.5), BASE_S + 61, (BASE_S, DOC_AGENT_DIMS)),
    (
        event(
            "agent",
            {
                "agent_id": SENTINEL,
                "model_provider": "anthropic",
                "model_name": "Claude",
                "model_id": "claude-sonnet-4-5",
                "db_type": None,
                "has_tools": True,
                "has_culture": True,
                "has_learnings": True,
                "has_brand_new_flag": True,
                "has_memory": None,
                "instructions": SENTINEL,
            },
            sdk="2.4.1",
        ),
        BASE_S + 10,
        (
            BASE_S,
            (
                "agent",
                "2.4.1",
                "anthropic",
                "Claude",
                "claude-sonnet-4-5",
                "none",
                "none",
                "none",
                "none",
                "none",
                "none",
                ("(rare)", "has_culture", "has_learnings", "has_tools"),
            ),
        ),
    ),  # one session's new flag
    (
        event(
            "team",
            {
                "team_id": SENTINEL,
                "db_type": "SqliteDb",
                "model_provider": "google",
                "model_name": "Gemini",
                "model_id": "gemini-2.5-pro",
                "parser_model": None,
                "output_model": None,
                "member_count": 3,
                "has_knowledge": False,
                "has_tools": True,
                "has_learnings": False,
            },
            sdk="2.3.2",
        ),
        BASE_S + 70,
        (
            BASE_S + 60,
            (
                "team",
                "2.3.2",
                "google",
                "Gemini",
                "gemini-2.5-pro",
                "SqliteDb",
                "none",
                "none",
                "none",
                "none",
                "3-4",
                ("has_tools",),
            ),
        ),
    ),
    (
        event("workflow", {"workflow_id": SENTINEL, "db_type": "SqliteDb"}, sdk="2.3.2"),
        BASE_S + 75,
        (
            BASE_S + 60,
            ("workflow", "2.3.2", "none", "none", "none", "SqliteDb", "none", "none", "none", "none", "none", ()),
        ),
    ),
    (
        event("os", {"agents": 3, "interfaces": ["slack"]}, os_id=SENTINEL),
        BASE_S + 80,
        (BASE_S + 60, ("os", "1.0.0", *["none"] * 9, ())),
    ),
    (
        json.dumps({"os_id": SENTINEL, "sdk_version": "1.9.0", "data": {"teams": 1}}).encode(),
        BASE_S + 81,
        (BASE_S + 60, ("os", "1.9.0", *["none"] * 9, ())),
    ),
    # a secret in a dimension: counted, value redacted
    (
        event("agent", {"agent_id": SENTINEL, "model_provider": "openai", "model_id": "sk-live-" + "a1b2c3d4" * 3}),
        BASE_S + 90,
        (
            BASE_S + 60,
            ("agent", "1.0.0", "openai", "none", "(redacted)", "none", "none", "none", "none", "none", "none", ()),
        ),
    ),
    # payload an hour in the future: record time used
    (event("agent", DOC_AGENT_DATA, timestamp=BASE_S + 3700), BASE_S + 95, (BASE_S + 60, DOC_AGENT_DIMS)),
]
# client reports: what SDK clients could not deliver, summed per window, sdk_version and reason
REPORTS = [
    (
        json.dumps(
            {
                "type": "client_report",
                "sdk_version": "2.4.1",
                "data": {"dropped": {"queue_full": 12, "send_failed": 0, "unsent_at_exit": 3}},
            }
        ).encode(),
        BASE_S + 20,
    ),
    (
        json.dumps(
            {
                "type": "client_report",
                "sdk_version": "2.4.1",
                "session_id": SENTINEL,
                "data": {"dropped": {"queue_full": 5}, "note": SENTINEL},
            }
        ).encode(),
        BASE_S + 40,
    ),
    (
        json.dumps({"type": "client_report", "sdk_version": "2.3.2", "data": {"dropped": {"send_failed": 2}}}).encode(),
        BASE_S + 65,
    ),
]
DROPS = {
    (BASE_S, "2.4.1", "queue_full"): 17,
    (BASE_S, "2.4.1", "unsent_at_exit"): 3,
    (BASE_S + 60, "2.3.2", "send_failed"): 2,
}
QUALITY_NOTES = {  # (window, kind, reason) -> events, for counted or dropped events
    (BASE_S, "agent", "rare_value"): 1,
    (BASE_S + 60, "agent", "redacted_value"): 1,
    (BASE_S + 60, "agent", "future_timestamp"): 1,
    (BASE_S + 120, "agent", "late"): 1,
}
LATE = [(event("agent", DOC_AGENT_DATA, timestamp=BASE_S - 7200), BASE_S + 125)]
# (record value, record time, reason, path, kind)
INVALID = [
    (None, BASE_S + 1, "tombstone", "$", "unknown"),
    (b"", BASE_S + 2, "empty", "$", "unknown"),
    (b"this is not json " + SENTINEL.encode(), BASE_S + 3, "not_json", "$", "unknown"),
    (b"\xff\xfe" + SENTINEL.encode(), BASE_S + 4, "not_utf8", "$", "unknown"),
    (json.dumps([SENTINEL]).encode(), BASE_S + 6, "not_object", "$", "unknown"),
    (event("agent", {}, sdk=24), BASE_S + 7, "wrong_type", "$.sdk_version", "agent"),
    (event("agent", {"has_tools": SENTINEL}), BASE_S + 8, "wrong_type", "$.data.has_tools", "agent"),
    (
        json.dumps({"type": "agent", "data": {"model_id": SENTINEL}}).encode(),
        BASE_S + 9,
        "missing_field",
        "$.session_id",
        "agent",
    ),
    (event("assistant", {}), BASE_S + 11, "unknown_kind", "$.type", "unknown"),
    (event("agent", {"blob": SENTINEL * 5000}), BASE_S + 12, "oversized", "$", "unknown"),
]


def test_known_mix_lands_exactly_in_every_table_and_the_dlq(stack_factory):
    stack = stack_factory(partitions=2)
    records = [(value, seconds) for value, seconds, _ in VALID] + LATE + [(v, s) for v, s, *_ in INVALID] + REPORTS
    ends = stack.produce([value for value, _ in records], [ms(seconds) for _, seconds in records], partition=0)
    assert ends == {0: len(records)}

    worker = stack.worker()
    report = worker.wait_flushed(ends)
    assert report["status"] == "ok"
    assert worker.stop() == 0

    minute = Counter(expected for _, _, expected in VALID)
    quality = Counter(QUALITY_NOTES)
    for _, seconds, reason, _, kind in INVALID:
        quality[(seconds - seconds % 60, kind, reason)] += 1

    with stack.clickhouse() as client:
        assert stored_runs(client, "runs_minute") == minute
        assert stored_runs(client, "runs_hourly") == roll(minute, 3600)
        assert stored_runs(client, "runs_daily") == roll(minute, 86400)
        quality_rows = client.query(
            "SELECT toUnixTimestamp(window_start), kind, reason, sum(events) "
            "FROM kern_telemetry.quality_minute GROUP BY ALL"
        ).result_rows
        assert Counter({tuple(row[:3]): row[3] for row in quality_rows}) == quality

        assert stored_drops(client) == Counter(DROPS)
        flags = client.query("SELECT flag, sum(runs) FROM kern_telemetry.flag_runs_daily GROUP BY flag").result_rows
        assert dict(flags) == {
            "has_tools": 8,
            "has_reasoning": 6,
            "has_knowledge": 6,
            "has_team": 6,
            "has_culture": 1,
            "has_learnings": 1,
            "(rare)": 1,
        }
        combos = client.query(
            "SELECT model_id, features, sum(runs) FROM kern_telemetry.feature_combos_hourly "
            "WHERE model_id = 'gpt-5.2' GROUP BY ALL"
        ).result_rows
        assert combos == [("gpt-5.2", list(DOC_AGENT_DIMS[-1]), 6)]
        flushes = client.query(
            "SELECT partition, max(end_offset) FROM kern_telemetry.ingest_flushes GROUP BY partition"
        ).result_rows
        assert flushes == [(0, len(records))]

        stored = "\n".join(
            str(client.query(f"SELECT * FROM kern_telemetry.{table}").result_rows)
            for table in (
                "runs_minute",
                "runs_hourly",
                "runs_daily",
                "quality_minute",
                "ingest_flushes",
                "client_drops_minute",
                "client_drops_daily",
            )
        )
        assert SENTINEL not in stored

    dead_letters = sorted(
        stack.read_topic(stack.settings.dlq_topic, len(INVALID)),
        key=lambda record: json.loads(record.value)["source"]["offset"],
    )
    first_invalid = len(VALID) + len(LATE)
    partitions = stack.settings.topic_partitions
    assert all(r.partition == json.loads(r.value)["source"]["partition"] % partitions for r in dead_letters)
    assert [
        (json.loads(r.value)["reason"], json.loads(r.value)["path"], json.loads(r.value)["kind"]) for r in dead_letters
    ] == [(reason, path, kind) for _, _, reason, path, kind in INVALID]
    for i, record in enumerate(dead_letters):
        letter = json.loads(record.value)
        offset = first_invalid + i
        assert letter["source"] == {
            "topic": stack.settings.topic,
            "partition": 0,
            "offset": offset,
            "timestamp_ms": ms(INVALID[i][1]),
        }
        assert record.key == f"{stack.settings.topic}/0/{offset}".encode()
        assert SENTINEL.encode() not in record.value
    wrong_type = json.loads(dead_letters[5].value)
    assert wrong_type["shape"] == {
        "session_id": "string",
        "run_id": "string",
        "sdk_version": "int",
        "type": "string",
        "data": {},
        "(other keys)": {"string": 1},
    }  # prompt: unnamed
    assert json.loads(dead_letters[9].value)["size"] > stack.settings.max_event_bytes


def test_grouped_records_go_to_their_groups_partition_in_order_however_many_batches_they_fill(stack_factory):
    """`send_grouped`, the worker's dead-letter send: a group's records on the partition of its number
    modulo the topic's partitions (a letter resent after a crash lands where it first did), in order, in
    as many record batches as the producer's batch size needs."""
    stack = stack_factory(partitions=3)
    groups = [
        (
            source,
            [(f"events/{source}/{i}".encode(), b"letter %d " % i * (150 if i != 50 else 4000)) for i in range(100)],
        )
        for source in (0, 1, 4, 5)
    ]  # each group's 51st letter larger than a batch (40 KB against the producer's 16 KB)

    async def send() -> None:
        producer = dead_letter_producer(stack.settings)
        await producer.start()
        try:
            await send_grouped(producer, stack.settings.dlq_topic, groups)
        finally:
            await producer.stop()

    asyncio.run(send())  # ~760 KB: dozens of batches of the producer's 16 KB
    read = stack.read_topic(stack.settings.dlq_topic, 400)
    for partition in range(3):
        assert [(r.key, r.value) for r in read if r.partition == partition] == [
            record for source, records in groups if source % 3 == partition for record in records
        ]


def test_a_worker_writing_over_http_loads_no_dataframe_library(stack_factory):
    """clickhouse-connect imports pandas (numpy, pyarrow) on a process's first insert to ask whether the rows
    are a DataFrame: ~100 MB of a worker's RSS, measured idle 190 MB with them and 97 MB without."""
    stack = stack_factory(partitions=1, shared_clickhouse=True)
    ends = stack.produce([value for value, _, _ in VALID], [ms(seconds) for _, seconds, _ in VALID], partition=0)
    worker = stack.worker()
    worker.wait_flushed(ends)
    mapped = Path(f"/proc/{worker.process.pid}/maps").read_text()
    with stack.clickhouse() as client:
        assert stored_runs(client, "runs_minute") == Counter(expected for _, _, expected in VALID)
    assert [library for library in ("/pandas/", "/numpy/", "/pyarrow/") if library in mapped] == []


def test_worker_killed_mid_stream_then_restarted_counts_every_event_once(stack_factory):
    from devstack.loadgen import EventGenerator

    stack = stack_factory(partitions=2, KERN_FLUSH_MAX_EVENTS="5000")
    values = list(EventGenerator(seed=11, invalid_share=0.02, profiles=500).events(120_000))
    record_ms = ms(NOW_S - 30)
    ends = stack.produce(values, [record_ms] * len(values))

    first = stack.worker("first")
    first.wait_events(30_000)
    first.kill()
    second = stack.worker("second")
    second.wait_flushed(ends)
    assert second.stop() == 0

    expected = reference_rollup(stack.settings, values, record_ms)
    with stack.clickhouse() as client:
        assert stored_runs(client, "runs_minute") == Counter(expected.run_counts())
        total = sum(expected.run_counts().values())
        for table in ("runs_hourly", "runs_daily"):
            assert client.query(f"SELECT sum(runs) FROM kern_telemetry.{table}").result_rows == [(total,)]
        launches = expected.patterns(OS)
        assert launches and stored_patterns(client, OS) == launches
        assert stored_patterns(client, OS, "hourly") == roll(launches, 3600)
        assert stored_quality(client) == expected_quality(expected)


def test_a_backlog_lands_in_one_catch_up_flush_then_the_flush_interval_applies_again(stack_factory):
    """Far behind the log end, the worker flushes at the catch-up interval (here an hour), so a backlog
    lands in one flush instead of one per 0.3 s; once caught up, new events land within seconds."""
    from devstack.loadgen import EventGenerator

    stack = stack_factory(partitions=1, KERN_CATCH_UP_LAG_EVENTS="1000", KERN_CATCH_UP_FLUSH_INTERVAL_SECONDS="3600")
    generator = EventGenerator(seed=13, invalid_share=0.0)
    backlog = list(generator.events(40_000))
    ends = stack.produce(backlog)
    worker = stack.worker()
    report = worker.wait_flushed(ends, timeout=120)
    assert report["events_consumed"] == len(backlog)
    assert report["flushes"] == 1
    # the native fold counted most (73% in process: the first events of each of ~9,000 signatures teach it)
    assert 0.6 * len(backlog) < report["events_folded_natively"] < len(backlog)

    for _ in range(3):  # each lands well within the catch-up interval, or wait_flushed times out
        worker.wait_flushed(stack.produce(list(generator.events(200))), timeout=30)
    assert worker.stop() == 0
    with stack.clickhouse() as client:
        assert client.query("SELECT sum(events) FROM kern_telemetry.ingest_flushes").result_rows == [(40_600,)]


def test_backpressure_while_catching_up_flushes_instead_of_waiting_for_the_catch_up_interval(stack_factory):
    """More unflushed rows than KERN_MAX_PENDING_ROWS pauses consumption; the pause must lead to a flush,
    not to an hour-long wait for the catch-up interval."""
    from devstack.loadgen import EventGenerator

    stack = stack_factory(
        partitions=1,
        KERN_MAX_PENDING_ROWS="1000",
        KERN_CATCH_UP_LAG_EVENTS="100",
        KERN_CATCH_UP_FLUSH_INTERVAL_SECONDS="3600",
    )
    backlog = list(EventGenerator(seed=17, invalid_share=0.0, profiles=3000).events(20_000))
    worker = stack.worker()
    report = worker.wait_flushed(stack.produce(backlog), timeout=60)
    assert report["events_consumed"] == len(backlog)
    assert report["flushes"] > 1  # the row bound, not the end of the backlog, closed the first flushes
