"""Which log a partition's ledger describes (`agents/logs.py`), the landings that make a rewrite skip what
landed (`agents/checkpoint.py`), and what the worker does when a fetch says its position is out of range,
stalls and freshness: without a broker or ClickHouse (the integration tests are in `test_ledger.py`)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from conftest import Record
from test_partitions import TOPIC, FakeConsumer, project, records, worker_over
from test_sink import RecordingClient

from agents.checkpoint import BATCH_MAX_EVENTS, Checkpoint, Resumption, batch_of, token, write
from agents.logs import DIVERGED, EXPIRED, NEW_LOG, SAME, TRUNCATED, Facts, Recorded, Verdict, judge
from pipeline.admission import Keys
from pipeline.config import Settings
from pipeline.health import Health
from pipeline.rejections import Reason
from pipeline.rollup import Fingerprint, LogIdentity, PartitionRollup
from pipeline.sink import ClickHouseSink, FlushRange
from tables.ddl import SchemaOptions

ID, OTHER = "0199-aaaa", "0199-bbbb"
LOG = LogIdentity(3, ID)
AT_99 = Fingerprint(99, 1234)


def recorded(
    end: int = 100, log: LogIdentity = LOG, fingerprint: Fingerprint | None = AT_99, seen: int = 100
) -> Recorded:
    return Recorded(log, end, fingerprint, seen)


@pytest.mark.parametrize(
    "case, ledger, facts, verdict",
    [
        ("the same log", recorded(), Facts(ID, 0, 150, 1234), Verdict(SAME, LOG, 100)),
        (
            "the same log, no topic ids",
            recorded(log=LogIdentity(3, "")),
            Facts("", 0, 150, 1234),
            Verdict(SAME, LogIdentity(3, ""), 100),
        ),
        (
            "a broker that starts giving ids",
            recorded(log=LogIdentity(3, "")),
            Facts(ID, 0, 150, 1234),
            Verdict(SAME, LOG, 100),
        ),
        (
            "recreated: another topic id",
            recorded(),
            Facts(OTHER, 0, 40, None),
            Verdict(NEW_LOG, LogIdentity(4, OTHER), 0),
        ),
        (
            "recreated and longer: another id",
            recorded(),
            Facts(OTHER, 0, 500, 777),
            Verdict(NEW_LOG, LogIdentity(4, OTHER), 0),
        ),
        (
            "replaced, no ids: another record",
            recorded(log=LogIdentity(3, "")),
            Facts("", 0, 500, 777),
            Verdict(NEW_LOG, LogIdentity(4, ""), 0),
        ),
        (
            "replaced, no ids: shorter",
            recorded(log=LogIdentity(3, "")),
            Facts("", 0, 40, None),
            Verdict(NEW_LOG, LogIdentity(4, ""), 0),
        ),
        (
            "replaced by an empty broker",
            recorded(log=LogIdentity(0, ""), fingerprint=None),
            Facts("", 0, 0, None),
            Verdict(NEW_LOG, LogIdentity(1, ""), 0),
        ),
        ("truncated", recorded(), Facts(ID, 0, 60, None), Verdict(TRUNCATED, LogIdentity(4, ID), 60)),
        (
            "diverged: truncated and refilled",
            recorded(),
            Facts(ID, 0, 500, 777),
            Verdict(DIVERGED, LogIdentity(4, ID), 99),
        ),
        ("expired past the ledger's end", recorded(), Facts(ID, 130, 150, None), Verdict(EXPIRED, LOG, 130, 100)),
        ("retention passed the fingerprint only", recorded(), Facts(ID, 100, 150, None), Verdict(SAME, LOG, 100)),
        (
            "a new log partly expired",
            recorded(),
            Facts(OTHER, 20, 40, None),
            Verdict(NEW_LOG, LogIdentity(4, OTHER), 20, 0),
        ),
        (
            "recreated after records were seen, never consumed",
            recorded(seen=180),
            Facts(OTHER, 0, 10, None),
            Verdict(NEW_LOG, LogIdentity(4, OTHER), 0, None, (100, 180)),
        ),
        (
            "truncated below records seen",
            recorded(seen=180),
            Facts(ID, 0, 60, None),
            Verdict(TRUNCATED, LogIdentity(4, ID), 60, None, (100, 180)),
        ),
    ],
)
def test_the_decision_table(case, ledger, facts, verdict):
    assert judge(ledger, facts) == verdict, case


def test_every_verdict_describes_the_offsets_and_what_was_done():
    verdict = judge(recorded(seen=180), Facts(OTHER, 20, 40, None))
    text = verdict.describe(recorded(seen=180))
    assert "new log" in text and "generation 4" in text and OTHER in text
    assert "offsets 0-19 recorded as expired" in text and "offsets 100-179 of log generation 3 recorded as lost" in text


def test_a_fingerprint_tells_two_logs_of_identical_payloads_apart_by_their_timestamps():
    first, again, later = (
        Record(5, 1_000, b'{"type":"agent"}'),
        Record(5, 1_000, b'{"type":"agent"}'),
        Record(5, 2_000, b'{"type":"agent"}'),
    )
    assert Fingerprint.of(first) == Fingerprint.of(again) != Fingerprint.of(later)


# --- tokens and landings ------------------------------------------------------------------------------


def test_the_first_log_keeps_the_released_tokens_and_a_later_log_names_its_generation():
    rollup = PartitionRollup(TOPIC, 2, 10)
    rollup.add(records(10, 5), project)
    assert token(rollup) == f"{TOPIC}/2/10-15"
    later = PartitionRollup(TOPIC, 2, 10, log=LogIdentity(2, ID))
    later.add(records(10, 5), project)
    assert token(later) == f"{TOPIC}/2/g2/10-15"


class FailingClient(RecordingClient):
    """Fails every insert into `table` while `failing`."""

    def __init__(self, table: str):
        super().__init__()
        self.table, self.failing = table, True

    def raw_insert(self, table, columns, body, settings, fmt):
        if self.failing and self.table in table:
            raise ConnectionError(f"{self.table}: too many parts")
        super().raw_insert(table, columns, body, settings, fmt)


def written(client: RecordingClient) -> list[str]:
    return [call[2]["insert_deduplication_token"].split("/", 3)[-1] for call in client.calls]


def test_a_retried_flush_writes_only_the_tables_it_had_not_landed_in():
    client = FailingClient("quality_minute")
    sink = ClickHouseSink(client, SchemaOptions())
    rollup = PartitionRollup(TOPIC, 0, 0)
    rollup.add([*records(0, 3), Record(3, records(0, 1)[0].timestamp, b"not json")], project)
    with pytest.raises(ConnectionError):
        write(sink, [rollup], Keys(b"k"), [4], {})
    assert written(client) == ["ingest_flushes", "runs_minute", "landed/runs_minute"]
    client.failing = False
    write(sink, [rollup], Keys(b"k"), [4], {})
    assert written(client)[3:] == ["quality_minute", "session_sightings", "landed/quality_minute"]
    write(sink, [rollup], Keys(b"k"), [4], {})
    assert len(client.calls) == 6  # everything landed: nothing is written again


def rollups(*partitions: int) -> list[PartitionRollup]:
    """A rollup of offsets 0-3 (three events and one dead letter) per partition."""
    made = [PartitionRollup(TOPIC, partition, 0) for partition in partitions]
    for rollup in made:
        rollup.add([*records(0, 3), Record(3, records(0, 1)[0].timestamp, b"not json")], project)
    return made


def tokens(calls: list) -> list[str]:
    return [call[2]["insert_deduplication_token"] for call in calls]


def test_a_batch_of_partitions_shares_its_landings_and_sketch_inserts_and_keeps_each_range_token():
    client = FailingClient("quality_minute")
    sink = ClickHouseSink(client, SchemaOptions())
    batch = rollups(0, 1)
    with pytest.raises(ConnectionError):
        write(sink, batch, Keys(b"k"), [4, 4], {})
    assert tokens(client.calls) == [
        f"{TOPIC}/0/0-4/ingest_flushes",
        f"{TOPIC}/0/0-4/runs_minute",
        f"{TOPIC}/0/0-4/landed/runs_minute",  # what landed before the failure is recorded at once
    ]  # (on one client a failure stops the batch: partition 1 had not started)
    client.failing = False
    write(sink, batch, Keys(b"k"), [4, 4], {})
    retried = client.calls[3:]
    assert tokens(retried)[:4] == [
        f"{TOPIC}/0/0-4/quality_minute",
        *(f"{TOPIC}/1/0-4/{table}" for table in ("ingest_flushes", "runs_minute", "quality_minute")),
    ]
    assert [call[1].split(".")[-1] for call in retried[4:]] == ["`session_sightings`", "`flush_landings`"]
    assert all(token.startswith("batch/") for token in tokens(retried[4:]))  # both rollups' sketches, landings


class LostResponse(RecordingClient):
    """ClickHouse applies the first insert into `table`, and its answer is lost."""

    def __init__(self, table: str):
        super().__init__()
        self.table, self.lost = table, False

    def raw_insert(self, table, columns, body, settings, fmt):
        super().raw_insert(table, columns, body, settings, fmt)
        if self.table in table and not self.lost:
            self.lost = True
            raise ConnectionError("connection reset")


def test_an_intent_retried_in_a_batch_made_up_differently_keeps_its_token_so_the_ledger_counts_it_once():
    client = LostResponse("ingest_flushes")
    sink = ClickHouseSink(client, SchemaOptions())
    first, second = rollups(0, 1)
    with pytest.raises(ConnectionError):
        write(sink, [first, second], Keys(b"k"), [4, 4], {})
    write(sink, [first], Keys(b"k"), [4], {})  # partition 1 was revoked meanwhile
    intents = [call for call in client.calls if "ingest_flushes" in call[1]]
    assert tokens(intents) == [f"{TOPIC}/0/0-4/ingest_flushes"] * 2  # ClickHouse drops the second


def test_a_batch_holds_at_most_one_rollup_per_partition_in_the_order_they_are_ready_and_a_bounded_number_of_events():
    first, second, later_first, third = (
        PartitionRollup(TOPIC, p, start) for p, start in ((0, 0), (1, 0), (0, 10), (2, 0))
    )
    assert batch_of([first, second, later_first]) == [first, second]
    assert batch_of([later_first]) == [later_first] and batch_of([]) == []
    first.events, second.events, third.events = BATCH_MAX_EVENTS - 1, 1, 1
    assert batch_of([first, second, third]) == [first, second]  # the batch's rollups stay until it lands
    first.events = BATCH_MAX_EVENTS * 3
    assert batch_of([first, second]) == [first]  # a large rollup flushes alone, as before batches


class LedgerSink:
    """What `Checkpoint.resume` reads: one recorded flush, and a ledger that sums to `ledger`."""

    def __init__(self, last: FlushRange | None, ledger: int = 0):
        self.last, self.ledger = last, ledger

    def last_flush(self, topic, partition):
        return self.last

    def ledger_sum(self, topic, partition, generation):
        return self.ledger


class InlineThread:
    async def call(self, function, *args):
        return function(*args)


class BrokerSays:
    """The `Logs` of a broker whose log of every partition is `facts`."""

    def __init__(self, facts: Facts, health: Health):
        self._facts, self.health = facts, health

    async def facts(self, tp, fingerprint):
        return self._facts

    async def judge(self, tp, recorded):
        verdict = judge(recorded, self._facts)
        if verdict.change != SAME:
            self.health.log_changed(tp.partition, verdict.change, verdict.describe(recorded))
        return verdict


def checkpoint_over(last: FlushRange | None, facts: Facts, ledger: int = 0) -> Checkpoint:
    health = Health()
    settings = Settings(topic=TOPIC, hash_secret="t", _env_file=None)
    checkpoint = Checkpoint(
        settings, LedgerSink(last, ledger), InlineThread(), None, None, health, None, BrokerSays(facts, health)
    )
    checkpoint.projector = lambda epoch: project
    return checkpoint


def resumed(last: FlushRange | None, facts: Facts) -> tuple[Resumption, Health]:
    checkpoint = checkpoint_over(last, facts)
    return asyncio.run(checkpoint.resume(TopicPartition(TOPIC, 0))), checkpoint.health


RANGE = dict(
    log=LOG, fingerprint=AT_99, log_end_seen=100, tables=("runs_minute", "quality_minute"), flushed_at=1_800_000_000.0
)


def test_the_running_ledger_total_goes_on_from_the_last_intent_or_from_the_ledger_when_it_had_none():
    landed = frozenset(RANGE["tables"])
    for recorded, expected in ((140, 140), (-1, 97)):  # -1: the intent was recorded before version 9
        checkpoint = checkpoint_over(
            FlushRange(50, 100, landed=landed, ledger_total=recorded, **RANGE), Facts(ID, 0, 150, 1234), ledger=97
        )
        checkpoint.ledger_totals[(0, 0)] = checkpoint.ledger_totals[(0, 5)] = 1  # of an earlier assignment
        checkpoint.ledger_totals[(1, 0)] = 7  # another partition's
        asyncio.run(checkpoint.resume(TopicPartition(TOPIC, 0)))
        assert checkpoint.ledger_totals == {(0, LOG.generation): expected, (1, 0): 7}


def test_a_range_that_landed_everywhere_is_not_replayed():
    resumption, health = resumed(
        FlushRange(50, 100, landed=frozenset(RANGE["tables"]), **RANGE), Facts(ID, 0, 150, 1234)
    )
    assert resumption == Resumption(100, LOG, AT_99) and health.ok


def test_a_range_missing_in_one_table_is_replayed_for_that_table_only():
    resumption, _ = resumed(FlushRange(50, 100, landed=frozenset({"runs_minute"}), **RANGE), Facts(ID, 0, 150, 1234))
    replay = resumption.replay
    assert (replay.rollup.start_offset, replay.end, resumption.cursor) == (50, 100, 100)
    assert replay.rollup.landed == {"ingest_flushes", "runs_minute"} and replay.rollup.log == LOG


def test_a_range_recorded_before_landings_is_replayed_everywhere():
    resumption, _ = resumed(FlushRange(50, 100), Facts("", 0, 150, None))
    assert resumption.replay.rollup.landed == {"ingest_flushes"}


def test_a_skipped_range_missing_its_quality_rows_is_rebuilt_from_its_intent():
    resumption, _ = resumed(
        FlushRange(100, 120, skipped=20, **{**RANGE, "tables": ("quality_minute",)}), Facts(ID, 0, 150, 1234)
    )
    [rewrite] = resumption.rewrites
    assert (rewrite.start_offset, rewrite.end_offset, rewrite.skipped, rewrite.replay) == (100, 120, 20, True)
    assert rewrite.quality == {(1_800_000_000 - 1_800_000_000 % 60, "unknown", Reason.SKIPPED): 20}
    assert rewrite.dead_letters == [] and resumption.replay is None


def test_a_new_log_is_counted_from_its_start_in_a_new_generation_and_health_says_so():
    resumption, health = resumed(
        FlushRange(50, 100, landed=frozenset(RANGE["tables"]), **{**RANGE, "log_end_seen": 130}),
        Facts(OTHER, 0, 30, None),
    )
    assert (resumption.cursor, resumption.log, resumption.fingerprint, resumption.replay) == (
        0,
        LogIdentity(4, OTHER),
        None,
        None,
    )
    [lost] = resumption.rewrites
    assert (lost.log, lost.start_offset, lost.end_offset, lost.lost) == (LOG, 100, 130, 30)
    assert [letter.key for letter in lost.dead_letters] == [f"{TOPIC}/0/100-129".encode()]
    report = health.report()
    assert report["status"] == "degraded" and "new log" in report["degraded"]["log 0"]
    assert health.metrics.value("kern_log_changes_total", {"change": "new log"}) == 1


def test_an_unfinished_range_whose_records_are_gone_is_reported():
    _, health = resumed(FlushRange(50, 100, landed=frozenset({"runs_minute"}), **RANGE), Facts(OTHER, 0, 30, None))
    assert "had not landed in quality_minute" in str(health.incidents)


def test_expired_offsets_are_recorded_as_a_range_of_their_own():
    resumption, health = resumed(
        FlushRange(50, 100, landed=frozenset(RANGE["tables"]), **RANGE), Facts(ID, 140, 150, None)
    )
    [expired] = resumption.rewrites
    assert (expired.log, expired.start_offset, expired.end_offset, expired.expired) == (LOG, 100, 140, 40)
    assert resumption.cursor == 140 and "log 0" in health.degraded


# --- while consuming ----------------------------------------------------------------------------------


def test_a_position_out_of_range_restarts_the_partition_where_the_verdict_says():
    consumer = FakeConsumer({0: 100, 1: 100})
    agent = worker_over(consumer, {0: 30, 1: 20})
    agent.logs = BrokerSays(Facts(OTHER, 0, 5, None), agent.health)
    agent.health.log_end(0, 45)  # records seen, never consumed

    async def out_of_range():
        raise OffsetOutOfRangeError({TopicPartition(TOPIC, 0): 30})

    consumer.getmany = lambda *a, **k: out_of_range()
    consumer.seeks.clear()
    assert asyncio.run(agent.fetcher.fetch()) == {}
    folded, lost = agent.flusher.ready
    assert (folded.start_offset, folded.end_offset, folded.log) == (0, 30, LogIdentity())
    assert (lost.start_offset, lost.end_offset, lost.lost, lost.log) == (30, 45, 15, LogIdentity())
    state = agent.partitions.get(0)
    assert (state.cursor, state.log, state.fingerprint) == (0, LogIdentity(1, OTHER), None)
    assert consumer.seeks == [(0, 0)] and "log 0" in agent.health.degraded
    assert agent.partitions.get(1).cursor == 20  # the other partition is untouched


# --- stalls and freshness -----------------------------------------------------------------------------


def test_a_partition_whose_log_grows_while_nothing_is_consumed_stalls_within_the_stall_time():
    health = Health(stall_s=0.2)
    health.assigned = {0}
    health.log_end(0, 500)
    oldest_ms = int(time.time() * 1000) - 3_000
    health.progress(0, 100, oldest_ms, paused=False)
    assert health.ok and health.metrics.value("kern_partition_freshness_seconds", {"partition": "0"}) >= 3
    time.sleep(0.25)
    health.progress(0, 100, oldest_ms, paused=False)
    assert "400 records in the log after offset 100" in health.degraded["partition 0 stalled"]
    health.progress(0, 101, oldest_ms, paused=False)
    assert health.ok


def test_a_paused_or_caught_up_partition_never_stalls():
    health = Health(stall_s=0.0)
    health.log_end(0, 100)
    for _ in range(2):
        health.progress(0, 100, None, paused=False)  # caught up
        health.log_end(1, 200)
        health.progress(1, 50, None, paused=True)
    assert health.ok
    assert health.metrics.value("kern_partition_freshness_seconds", {"partition": "0"}) == 0


def test_an_incident_stops_degrading_after_its_hold_time():
    health = Health(hold_s=0.1)
    health.log_changed(3, NEW_LOG, "counted from offset 0")
    assert not health.ok and health.report()["log_incidents"][0]["partition"] == 3
    time.sleep(0.15)
    assert health.report()["status"] == "ok" and health.incidents  # the incident stays listed
