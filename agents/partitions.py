"""The state of one assigned partition, and its transitions.

A partition is, at any time, in one of these states (a revoked partition has no state at all):

- **replaying**: assigned with a recorded flush [start, end); its records are re-consumed into an
  identical rollup that closes exactly at `end` (see `pipeline/sink.py`);
- **folding**: records after the last recorded flush are folded into `rollup`; a closed rollup may be
  flushing meanwhile (the agent's ready list), and the next one starts where it ended;
- **paused by backpressure**: too many unflushed rows (the agent pauses and resumes every partition);
- **poisoned**: a record batch at `cursor` cannot be decoded; paused until an operator skips it.

`cursor` is where the next batch must start: the end of the rollup being folded, or where the last
closed one ended. Every seek goes to the cursor, and a batch that starts anywhere else is refused (it
would leave a hole in a flushed range), except right after a seek, when a later first offset means the
log has nothing in between (compaction, transaction markers, retention).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.poison import UndecodableBatch
from pipeline.rollup import OffsetGap, PartitionRollup


class PartitionState:
    __slots__ = ("tp", "rollup", "replay_end", "poison", "_next", "_sought")

    def __init__(self, tp: TopicPartition, cursor: int):
        self.tp = tp
        self.rollup: PartitionRollup | None = None  # being folded
        self.replay_end: int | None = None  # end offset of the recorded range being replayed
        self.poison: UndecodableBatch | None = None
        self._next = cursor  # where the next rollup starts
        self._sought = False  # the next batch is the first after a seek to the cursor

    @property
    def partition(self) -> int:
        return self.tp.partition

    @property
    def cursor(self) -> int:
        return self.rollup.end_offset if self.rollup is not None else self._next

    @property
    def replaying(self) -> bool:
        return self.replay_end is not None

    def seek(self, consumer: AIOKafkaConsumer) -> None:
        """Put the consumer where folding stands (aiokafka drops what it had prefetched for the partition)."""
        consumer.seek(self.tp, self.cursor)
        self._sought = True

    def replay(self, start: int, end: int) -> None:
        self.rollup = PartitionRollup(self.tp.topic, self.partition, start, replay=True)
        self.replay_end = end

    def fold(self, messages: list, project: Callable, closed: list[PartitionRollup]) -> None:
        """Fold a batch; a replayed range that completes is appended to `closed`. Raises `OffsetGap`
        when the batch does not start at the cursor (nothing is folded then)."""
        first = messages[0].offset
        if first != self.cursor:
            if not (self._sought and first > self.cursor):
                raise OffsetGap(self.partition, self.cursor, first)
            self._current().skip_absent(first)
        self._sought = False
        if self.replay_end is not None:
            cut = bisect.bisect_left(messages, self.replay_end, key=_offset)
            if cut:
                self.rollup.add(messages[:cut], project)
            if self.rollup.end_offset >= self.replay_end or cut < len(messages):
                self.replay_end = self.rollup.end_offset  # complete (or records past it are gone)
                if (rollup := self.close()) is not None:
                    closed.append(rollup)
            messages = messages[cut:]
            if not messages:
                return
        self._current().add(messages, project)

    def close(self) -> PartitionRollup | None:
        """Hand over the rollup being folded (None when empty); the next one starts where it ended. A
        replay is only closed at its end (by `fold`): flushing part of it under its token would make
        ClickHouse drop the rest as a duplicate later."""
        rollup = self.rollup
        if rollup is None or (self.replay_end is not None and rollup.end_offset < self.replay_end):
            return None
        self.rollup, self.replay_end, self._next = None, None, rollup.end_offset
        return rollup if rollup.events else None

    def skip_through(self, last_offset: int) -> None:
        """Continue after `last_offset` (an operator's skip, recorded by its own flush)."""
        self.rollup, self.replay_end, self.poison, self._next = None, None, None, last_offset + 1

    def _current(self) -> PartitionRollup:
        if self.rollup is None:
            self.rollup = PartitionRollup(self.tp.topic, self.partition, self._next)
        return self.rollup


def _offset(message: Any) -> int:
    return message.offset
