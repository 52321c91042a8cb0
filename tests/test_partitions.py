"""The partition lifecycle without a broker or ClickHouse: the gap check, the cursor, replays, revocation
during a flush, backpressure, and what the fetcher does after a failed fetch, against a small fake consumer
that fails like aiokafka (it raises for the whole fetch after moving the positions of the partitions it had
drained) and a fake checkpoint that records flushes."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import UnsupportedCodecError
from conftest import Record

import agents.quarantine
from agents.checkpoint import Replay, Resumption
from agents.fetching import Fetcher
from agents.flushing import Flusher
from agents.partitions import Partitions, PartitionState
from agents.poison import UndecodableBatch
from agents.quarantine import Quarantine
from agents.rollup import RollupAgent
from pipeline.admission import Keys
from pipeline.config import Settings
from pipeline.projector import EventProjector
from pipeline.rollup import OffsetGap, PartitionRollup
from pipeline.sink import FlushRange

TOPIC = "events"
NOW_MS = int(time.time() * 1000)
EVENT = b'{"type":"agent","session_id":"s","data":{"model_id":"gpt-5.2","has_tools":true}}'
project = EventProjector(60, 3600, 300, 65536, keys=Keys(b"k"))


def records(first: int, count: int) -> list[Record]:
    return [Record(offset, NOW_MS, EVENT) for offset in range(first, first + count)]


def replay(start: int, end: int) -> Replay:
    """The replay of a recorded range [start, end) whose rows landed nowhere but in its intent."""
    return Replay(TopicPartition(TOPIC, 0), FlushRange(start, end, tables=("runs_minute",)), project)


class FakeConsumer:
    """In-memory partitions with aiokafka's positions, pauses and seeks. A partition with a poison offset
    cannot be decoded there: a fetch that reaches it raises for every partition of the call, after the
    positions of the partitions drained before it moved past their (discarded) records."""

    def __init__(self, ends: dict[int, int], poison: dict[int, int] | None = None):
        self.ends = ends
        self.poison = poison or {}
        self.positions = dict.fromkeys(ends, 0)
        self.paused: set[TopicPartition] = set()
        self.seeks: list[tuple[int, int]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp.partition] = offset
        self.seeks.append((tp.partition, offset))

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    def highwater(self, tp: TopicPartition) -> int:
        return self.ends[tp.partition]

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, p) for p in self.ends}

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        drained = {}
        for tp in tps or sorted(self.assignment() - self.paused):
            position, end = self.positions[tp.partition], self.ends[tp.partition]
            if max_records is not None:
                end = min(end, position + max_records)
            bad = self.poison.get(tp.partition)
            if bad is not None and position <= bad < end:
                raise UnsupportedCodecError("Libraries for lz4 compression codec not found")
            if end > position:
                drained[tp] = records(position, end - position)
                self.positions[tp.partition] = end
        return drained


# --- the gap check ---------------------------------------------------------------------------------


def test_a_rollup_refuses_a_batch_that_does_not_start_where_it_ended():
    rollup = PartitionRollup(TOPIC, 0, 10)
    rollup.add(records(10, 5), project)
    for first in (16, 14):  # a hole, an overlap
        with pytest.raises(OffsetGap, match=f"starts at offset {first}, the rollup ends at 15"):
            rollup.add(records(first, 3), project)
    assert (rollup.events, rollup.end_offset, sum(rollup.runs.values())) == (5, 15, 5)
    rollup.add(records(15, 2), project)
    assert (rollup.events, rollup.end_offset) == (7, 17)


def test_a_partition_accepts_a_later_first_offset_only_right_after_a_seek():
    consumer = FakeConsumer({0: 100})
    state = PartitionState(TopicPartition(TOPIC, 0), Resumption(10))
    state.fold(records(10, 5), project, [])
    with pytest.raises(OffsetGap):
        state.fold(records(20, 5), project, [])  # records 15-19 were lost on the way
    assert state.cursor == 15
    state.seek(consumer)
    assert consumer.seeks == [(0, 15)]
    state.fold(records(20, 5), project, [])  # fetched from 15: the log has nothing before 20 (compaction)
    assert (state.cursor, state.rollup.events, state.rollup.start_offset) == (25, 10, 10)
    with pytest.raises(OffsetGap):
        state.fold(records(30, 1), project, [])  # and only then


def test_a_replay_closes_exactly_at_its_recorded_end_and_folding_goes_on_after_it():
    state = PartitionState(TopicPartition(TOPIC, 0), Resumption(20, replay=replay(10, 20)))
    assert state.cursor == 10
    state.fold(records(10, 5), project, [])
    assert state.close() is None  # a replay closes only at its end
    closed: list = []
    state.fold(records(15, 20), project, closed)
    assert [(r.start_offset, r.end_offset, r.events, r.replay) for r in closed] == [(10, 20, 10, True)]
    assert (state.rollup.start_offset, state.cursor, state.replay) == (20, 35, None)
    rollup = state.close()
    assert (rollup.start_offset, rollup.end_offset, rollup.replay) == (20, 35, False)
    assert state.cursor == 35 and state.rollup is None


def test_a_skip_continues_after_the_skipped_range():
    state = PartitionState(TopicPartition(TOPIC, 0), Resumption(0))
    state.fold(records(0, 5), project, [])
    assert state.close().end_offset == 5
    state.skip_through(104)
    assert state.cursor == 105
    state.fold(records(105, 1), project, [])
    assert state.rollup.start_offset == 105


# --- assignment, revocation, backpressure -----------------------------------------------------------


class FakeCheckpoint:
    """Records the flushes; a flush can be held until released, or fail."""

    def __init__(self):
        self.flushed: list[tuple[int, int, int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.failures = 0

    async def flush(self, batch: list[PartitionRollup]) -> None:
        await self.release.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("ClickHouse is away")
        self.flushed += [(rollup.partition, rollup.start_offset, rollup.end_offset) for rollup in batch]


def worker_over(consumer: FakeConsumer, cursors: dict[int, int], **settings) -> RollupAgent:
    """An agent's parts over the fake consumer, each partition folded up to its cursor."""
    agent = RollupAgent(Settings(topic=TOPIC, hash_secret="test", _env_file=None, **settings))
    agent.projector = project
    agent.consumer = consumer
    agent.checkpoint = FakeCheckpoint()
    agent.flusher = Flusher(
        agent.settings, agent.partitions, agent.checkpoint, consumer, agent.health, agent.confirm_logs
    )
    agent.quarantine = Quarantine(consumer, agent.partitions, agent.checkpoint, agent.flusher, agent.health, 1 << 20)
    agent.fetcher = Fetcher(consumer, agent.partitions, agent.quarantine, agent.health, agent.on_out_of_range)
    agent.partitions.assign(consumer, {TopicPartition(TOPIC, p): Resumption(0) for p in cursors})
    agent.health.assigned = set(cursors)
    for partition, cursor in cursors.items():
        agent._fold(agent.partitions.get(partition), records(0, cursor))
        consumer.positions[partition] = cursor
    return agent


def test_a_revocation_of_the_builders_partition_waits_for_the_build_in_progress():
    """Partition 0's next owner builds the coarse grains: two builders at once would both add a shortfall."""

    async def scenario():
        agent = worker_over(FakeConsumer({0: 100, 1: 100}), {0: 10, 1: 20})
        started, release, built = threading.Event(), threading.Event(), []

        def build() -> None:  # a pass on the builder's thread, held until released
            started.set()
            built.append(release.wait(5))

        agent.builder._build = build
        building = asyncio.create_task(agent.builder.build())
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        revoking = asyncio.create_task(agent.on_revoked({TopicPartition(TOPIC, 0)}))
        await asyncio.sleep(0.2)
        assert not revoking.done()  # held by the build in progress
        release.set()
        await revoking
        await building
        assert built == [True] and not agent.builder._builds()
        agent.builder.shutdown()

    asyncio.run(scenario())


def test_assignment_seeks_every_partition_to_its_resumption_and_counts_a_generation():
    consumer = FakeConsumer({0: 100, 1: 100})
    partitions = Partitions()
    partitions.assign(
        consumer,
        {TopicPartition(TOPIC, 0): Resumption(40, replay=replay(30, 40)), TopicPartition(TOPIC, 1): Resumption(7)},
    )
    assert consumer.seeks == [(0, 30), (1, 7)] and partitions.generation == 1
    assert partitions.get(0).replay.end == 40


def test_a_revocation_waits_for_the_flush_in_progress_then_drops_the_lost_partitions_rollups():
    async def scenario():
        consumer = FakeConsumer({0: 100, 1: 100})
        agent = worker_over(consumer, {0: 10, 1: 20})
        agent.checkpoint.release.clear()  # ClickHouse is slow: the first flush hangs
        flushing = asyncio.create_task(agent.flusher.flush_all())
        await asyncio.sleep(0.01)
        assert len(agent.flusher.ready) == 2 and agent.flusher.lock.locked()
        revoking = asyncio.create_task(agent.on_revoked({TopicPartition(TOPIC, 1)}))
        await asyncio.sleep(0.01)
        assert not revoking.done()  # no flush may land after on_revoked returns
        agent.checkpoint.release.set()
        await asyncio.gather(flushing, revoking)
        return agent

    agent = asyncio.run(scenario())
    assert agent.checkpoint.flushed == [(0, 0, 10), (1, 0, 20)]  # the attempt in progress completes ...
    assert agent.flusher.ready == [] and agent.partitions.get(1) is None and agent.health.assigned == {0}


def test_a_revocation_between_retries_drops_the_rollups_it_cannot_flush_any_more():
    async def scenario():
        consumer = FakeConsumer({0: 100, 1: 100})
        agent = worker_over(consumer, {0: 10, 1: 20})
        agent.checkpoint.failures = 1
        flushing = asyncio.create_task(agent.flusher.flush_all())
        await asyncio.sleep(0.1)  # the first attempt failed; the flusher backs off without the lock
        assert "clickhouse" in agent.health.degraded and not agent.flusher.lock.locked()
        await agent.on_revoked({TopicPartition(TOPIC, 0)})
        await flushing
        return agent

    agent = asyncio.run(scenario())
    assert agent.checkpoint.flushed == [(1, 0, 20)] and agent.health.ok


def test_backpressure_pauses_every_partition_and_resumes_below_half_the_bound():
    consumer = FakeConsumer({0: 100, 1: 100})
    agent = worker_over(consumer, {0: 10, 1: 10}, max_pending_rows=1000)
    flusher = agent.flusher
    bound_rows = [PartitionRollup(TOPIC, 0, 0) for _ in range(1)]
    bound_rows[0].quality.update({(w, "agent", "late"): 1 for w in range(1000)})
    flusher.ready += bound_rows
    flusher.apply_backpressure()
    assert agent.partitions.paused and consumer.paused == consumer.assignment()
    assert "backpressure" in agent.health.degraded and flusher.due()  # a pause asks for a flush at once
    flusher.ready.clear()
    flusher.apply_backpressure()
    assert not agent.partitions.paused and consumer.paused == set() and agent.health.ok


def test_a_flush_is_due_once_the_partitions_together_hold_the_most_events():
    """The bound is on the worker's rollups, not each partition's: their memory stays bounded however fast
    the worker folds (while catching up, the interval alone let it grow with the speed)."""
    consumer = FakeConsumer({0: 1000, 1: 1000})
    assert not worker_over(consumer, {0: 60, 1: 50}, flush_max_events=111).flusher.due()
    assert worker_over(consumer, {0: 60, 1: 50}, flush_max_events=110).flusher.due()


# --- the fetcher after a failed fetch --------------------------------------------------------------


async def _undecodable_at_15(consumer, tp, position, max_bytes):
    assert (tp.partition, position) == (0, 10)
    return UndecodableBatch(15, 19, 5, "lz4", "UnsupportedCodecError: Libraries for lz4 compression codec not found")


def test_after_a_failed_fetch_every_partition_resumes_at_its_cursor_and_only_the_bad_one_pauses(monkeypatch):
    consumer = FakeConsumer({0: 40, 1: 60, 2: 70}, poison={0: 15})
    agent = worker_over(consumer, {0: 10, 1: 20, 2: 30})
    monkeypatch.setattr(agents.quarantine, "find_undecodable_batch", _undecodable_at_15)
    consumer.seeks.clear()

    with pytest.raises(UnsupportedCodecError):
        asyncio.run(consumer.getmany())  # what aiokafka does: partition 0 raises ...
    consumer.positions.update({1: 60, 2: 70})  # ... after moving 1 and 2 past records nobody got
    batches = asyncio.run(agent.fetcher._after_error(UnsupportedCodecError("lz4")))

    assert consumer.seeks[:3] == [(0, 10), (1, 20), (2, 30)]  # back to where folding stands
    assert {tp.partition: (batch[0].offset, batch[-1].offset) for tp, batch in batches.items()} == {
        0: (10, 14),
        1: (20, 59),
        2: (30, 69),
    }  # partition 0 exactly up to the bad batch
    assert consumer.paused == {TopicPartition(TOPIC, 0)}
    assert agent.partitions.get(0).poison.first_offset == 15
    report = agent.health.report()
    assert report["poisoned_partitions"]["0"]["last_offset"] == 19 and report["status"] == "degraded"
    for tp, batch in batches.items():
        agent._fold(agent.partitions.get(tp.partition), batch)
    assert {s.partition: s.cursor for s in agent.partitions} == {0: 15, 1: 60, 2: 70}
    assert report["offset_gaps_refused"] == 0


def test_backpressure_never_resumes_a_poisoned_partition(monkeypatch):
    consumer = FakeConsumer({0: 40, 1: 60}, poison={0: 15})
    agent = worker_over(consumer, {0: 10, 1: 20})
    monkeypatch.setattr(agents.quarantine, "find_undecodable_batch", _undecodable_at_15)
    asyncio.run(agent.fetcher._after_error(UnsupportedCodecError("lz4")))
    agent.partitions.pause(consumer)
    agent.flusher.apply_backpressure()  # nothing pending: resume
    assert not agent.partitions.paused and consumer.paused == {TopicPartition(TOPIC, 0)}


def test_a_batch_refused_by_the_gap_check_is_fetched_again_from_the_cursor():
    consumer = FakeConsumer({0: 100})
    agent = worker_over(consumer, {0: 10})
    consumer.seeks.clear()
    agent._fold(agent.partitions.get(0), records(12, 5))
    assert consumer.seeks == [(0, 10)] and agent.health.report()["offset_gaps_refused"] == 1
    assert agent.partitions.get(0).cursor == 10
