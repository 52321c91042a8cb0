"""The state of each assigned partition, and its transitions.

A partition this worker owns is, at any time:

- **replaying** its last recorded range (`agents/checkpoint.py`, step 5) until the range's end offset;
- **folding** the records after it into a rollup; earlier rollups may be flushing meanwhile (the
  flusher's ready list), and each next one starts where the last one ended;
- **paused by backpressure** (`Partitions.pause` / `resume`, every partition at once);
- **poisoned**: paused before a record batch it cannot decode (`agents/poison.py`) until an operator
  skips it; backpressure never resumes it.

A revoked partition has no state at all (`Partitions.revoke`). Each state knows which log it counts in
(`log`: a new log under the same name starts a new generation, `agents/logs.py`) and the fingerprint of
the last record it counted.

`cursor` is where the next batch must start: the end of the rollup being folded (or replayed), or where
the last closed one ended. Every seek goes to the cursor, and a batch that starts anywhere else is
refused (`OffsetGap`: it would leave a hole in a flushed range), except on the first fetch after a seek,
when a later first offset means the log itself has nothing in between (compaction, transaction markers,
retention).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.checkpoint import Resumption
from agents.poison import UndecodableBatch
from pipeline.projector import EventProjector
from pipeline.rollup import Fingerprint, LogIdentity, OffsetGap, PartitionRollup


class PartitionState:
    __slots__ = ("_fingerprint", "_next", "_sought", "log", "poison", "replay", "rollup", "tp")

    def __init__(self, tp: TopicPartition, resumption: Resumption):
        self.tp = tp
        self.rollup: PartitionRollup | None = None  # being folded
        self.replay = resumption.replay  # the recorded range re-consumed before anything newer
        self.poison: UndecodableBatch | None = None  # paused before it
        self.log = resumption.log  # the log counting goes on in
        self._next = resumption.cursor  # where the next rollup starts, once the replay (if any) is done
        self._sought = False  # the next batch is the first after a seek to the cursor
        self._fingerprint = resumption.fingerprint  # of the last record of the last closed rollup

    @property
    def partition(self) -> int:
        return self.tp.partition

    @property
    def cursor(self) -> int:
        if self.replay is not None:
            return self.replay.rollup.end_offset
        return self.rollup.end_offset if self.rollup is not None else self._next

    @property
    def fingerprint(self) -> Fingerprint | None:
        """Of the last record counted (or being counted) in `log`."""
        if self.rollup is not None:
            return self.rollup.fingerprint
        return self.replay.rollup.fingerprint if self.replay is not None else self._fingerprint

    @property
    def oldest_ms(self) -> int | None:
        """The Kafka timestamp of the first record folded and not handed over yet."""
        rollup = self.replay.rollup if self.replay is not None else self.rollup
        return rollup.first_ms if rollup is not None else None

    @property
    def rows(self) -> int:
        return sum(rollup.rows for rollup in (self.rollup, self.replay and self.replay.rollup) if rollup)

    def seek(self, consumer: AIOKafkaConsumer) -> None:
        """Put the consumer where folding stands (aiokafka drops what it had prefetched for the partition)."""
        consumer.seek(self.tp, self.cursor)
        self._sought = True

    def fold(self, messages: Sequence, projector: EventProjector, closed: list[PartitionRollup]) -> None:
        """Fold a batch with the projector of the current admission epoch (a replay uses its own); a
        replayed range that completes is appended to `closed`. Raises `OffsetGap` when the batch does not
        start at the cursor (nothing is folded then)."""
        first = messages[0].offset
        if first != self.cursor:
            if not (self._sought and first > self.cursor):
                raise OffsetGap(self.partition, self.cursor, first)
            (self.replay.rollup if self.replay is not None else self._current(projector)).skip_absent(first)
        self._sought = False
        if self.replay is not None:
            replayed, messages = self.replay.fold(messages)
            if replayed is None:
                return
            self.replay, self._next, self._fingerprint = None, replayed.end_offset, replayed.fingerprint
            if replayed.events:
                closed.append(replayed)
            if not messages:
                return
        self._current(projector).add(messages, projector)

    def close(self) -> PartitionRollup | None:
        """Hand over the rollup being folded (None when there is none, or while replaying: a replay closes
        only at its end); the next one starts where it ended."""
        rollup = self.rollup
        if rollup is None or self.replay is not None:
            return None
        self.rollup, self._next, self._fingerprint = None, rollup.end_offset, rollup.fingerprint
        return rollup if rollup.events else None

    def skip_through(self, last_offset: int) -> None:
        """Continue after `last_offset` (an operator's skip, recorded by its own flush)."""
        self.rollup, self.replay, self.poison, self._next = None, None, None, last_offset + 1

    def restart(self, log: LogIdentity, cursor: int, fingerprint: Fingerprint | None) -> PartitionRollup | None:
        """Count on in `log` from `cursor` (another log met while consuming, `agents/logs.py`); returns the
        rollup folded so far, to be flushed in the log it was folded in. A replay in progress is dropped:
        its records are gone."""
        self.replay = None
        folded = self.close()
        self.log, self._next, self._fingerprint, self.poison = log, cursor, fingerprint, None
        return folded

    def _current(self, projector: EventProjector) -> PartitionRollup:
        if self.rollup is None:
            self.rollup = PartitionRollup(
                self.tp.topic,
                self.partition,
                self._next,
                epoch=projector.epoch,
                log=self.log,
                previous=self._fingerprint,
            )
        return self.rollup


class Partitions:
    """The partitions this worker owns, by number. `generation` counts completed assignments: batches
    fetched before one completed are stale (every partition was sought again)."""

    def __init__(self) -> None:
        self._states: dict[int, PartitionState] = {}
        self.generation = 0
        self.paused = False  # by backpressure

    def __iter__(self) -> Iterator[PartitionState]:
        return iter(list(self._states.values()))

    def __len__(self) -> int:
        return len(self._states)

    def get(self, partition: int) -> PartitionState | None:
        return self._states.get(partition)

    def assign(self, consumer: AIOKafkaConsumer, resumptions: dict[TopicPartition, Resumption]) -> None:
        """Position every newly assigned partition (no await in between, so `getmany` cannot hand out
        records from a position about to change)."""
        for tp, resumption in resumptions.items():
            state = self._states[tp.partition] = PartitionState(tp, resumption)
            state.seek(consumer)
        if self.paused and resumptions:
            consumer.pause(*resumptions)
        self.generation += 1

    def revoke(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._states.pop(partition, None)

    def close_all(self, ready: list[PartitionRollup]) -> None:
        for state in self:
            if (rollup := state.close()) is not None:
                ready.append(rollup)

    def pause(self, consumer: AIOKafkaConsumer) -> None:
        self.paused = True
        consumer.pause(*consumer.assignment())

    def resume(self, consumer: AIOKafkaConsumer) -> None:
        """Resume what backpressure paused; a poisoned partition stays paused."""
        self.paused = False
        consumer.resume(
            *(tp for tp in consumer.assignment() if (state := self.get(tp.partition)) is None or state.poison is None)
        )

    def unflushed_rows(self) -> int:
        return sum(state.rows for state in self)

    def unflushed_events(self) -> int:
        """Events in the rollups being folded, every partition's together."""
        return sum(state.rollup.events for state in self if state.rollup is not None)

    def behind(self, highwater: Callable[[TopicPartition], int | None], lag: int) -> bool:
        """Whether a partition being folded is more than `lag` records behind its log end (per the last
        fetch). A poisoned one does not count: it is not catching up."""
        return any(
            (highwater(state.tp) or 0) - state.cursor > lag
            for state in self
            if state.rollup is not None and state.poison is None
        )
