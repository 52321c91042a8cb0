"""Pending aggregates of one source partition, folded batch by batch between two flushes.

A `PartitionRollup` covers the contiguous offsets [start_offset, end_offset) of one partition: its
runs counts, its quality counts, the sessions and candidate values its events carried (a `Tally`), the
dead letters of its invalid events, and the ledger's account of the range (counted, dead-lettered, late,
skipped). It is projected with one admission epoch, recorded with its flush. A flush writes exactly that
range (`agents/checkpoint.py`), so rebuilding the rollup from the same offsets gives the same rows, which is what makes a replayed flush
deduplicate. A batch that does not start where the rollup ends is refused (`OffsetGap`): counting records
after a hole would let a flush claim offsets that were never counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from kern_telemetry_client.contract import CLIENT_REPORT, OS

from pipeline.dead_letters import DeadLetter, dead_letter, skipped_range
from pipeline.dimensions import NAMES
from pipeline.projector import EventProjector, Tally
from pipeline.rejections import Reason, Rejection


_RUN_DIMENSIONS = len(NAMES)


class OffsetGap(Exception):
    """A batch that does not start at the rollup's end offset."""

    def __init__(self, partition: int, expected: int, first: int):
        super().__init__(f"partition {partition}: batch starts at offset {first}, the rollup ends at {expected}")
        self.partition, self.expected, self.first = partition, expected, first


class PartitionRollup(Tally):
    __slots__ = ("topic", "partition", "start_offset", "end_offset", "events", "dead_letters", "replay",
                 "dead_lettered", "late", "skipped", "epoch")

    def __init__(self, topic: str, partition: int, start_offset: int, replay: bool = False, epoch: int = 0):
        super().__init__()
        self.topic = topic
        self.partition = partition
        self.start_offset = start_offset
        self.end_offset = start_offset
        self.events = 0
        self.dead_letters: list[DeadLetter] = []
        self.replay = replay  # rebuilt from an already recorded range: its dead letters were sent
        self.dead_lettered = 0
        self.late = 0
        self.skipped = 0  # offsets an operator skipped (a skip rollup holds nothing else)
        self.epoch = epoch  # the admission epoch its rows were projected with

    @classmethod
    def skip(cls, topic: str, partition: int, start_offset: int, end_offset: int, window_start: int, reason: str,
             replay: bool = False) -> PartitionRollup:
        """The flush of a range an operator decided to skip: counted by offsets in the quality table
        (`skipped`, in the window of the request) and described by one dead letter, never read."""
        rollup = cls(topic, partition, start_offset, replay)
        rollup.end_offset = end_offset
        rollup.skipped = end_offset - start_offset
        rollup.quality[(window_start, "unknown", Reason.SKIPPED)] = rollup.skipped
        if not replay:
            rollup.dead_letters.append(skipped_range(topic, partition, start_offset, end_offset - 1, reason))
        return rollup

    @property
    def runs(self) -> dict[tuple, int]:
        """(window_start, dims) -> events counted with those dims."""
        return {key: len(sessions) for key, sessions in self.sessions.items()}

    @property
    def rows(self) -> int:
        return len(self.sessions) + len(self.quality)

    def run_counts(self) -> Counter:
        """(window_start, dims) -> usage events: `runs` without the client reports, and launches without
        their configuration."""
        counts: Counter = Counter()
        for (window, dims), sessions in self.sessions.items():
            if dims[0] != CLIENT_REPORT:
                counts[(window, dims[:_RUN_DIMENSIONS])] += len(sessions)
        return counts

    def launches(self) -> Counter:
        """(window_start, sdk_version, *configuration) -> AgentOS launches (a launch's dims end with its
        configuration, `dimensions.LAUNCH_DIMENSIONS`)."""
        launches: Counter = Counter()
        for (window, dims), sessions in self.sessions.items():
            if dims[0] == OS:
                launches[(window, dims[1], *dims[_RUN_DIMENSIONS])] += len(sessions)
        return launches

    def client_drops(self) -> Counter:
        """(window_start, sdk_version, reason) -> events the clients' reports in this range say they dropped
        (a report's dims are `(client_report, sdk_version, ((reason, count), ...))`)."""
        drops: Counter = Counter()
        for (window, dims), reports in self.sessions.items():
            if dims[0] == CLIENT_REPORT:
                for reason, count in dims[2]:
                    drops[(window, dims[1], reason)] += count * len(reports)
        return drops

    @property
    def counted(self) -> int:
        return self.events - self.dead_lettered - self.late

    def add(self, messages: Sequence[Any], projector: EventProjector) -> None:
        """Fold consumer records (with .offset, .timestamp, .value) into the rollup, with the projector
        of its admission epoch. The hot path."""
        if messages[0].offset != self.end_offset:
            raise OffsetGap(self.partition, self.end_offset, messages[0].offset)
        if projector.epoch != self.epoch:
            raise ValueError(f"a rollup of admission epoch {self.epoch} cannot fold with epoch {projector.epoch}")
        project = projector.project
        for message in messages:
            try:
                project(message.value, message.timestamp, self)
            except Rejection as rejection:
                if not rejection.dead_letter:
                    self.late += 1
                    continue
                self.dead_lettered += 1
                if not self.replay:
                    self.dead_letters.append(dead_letter(rejection, message, self.topic, self.partition,
                                                         projector.admits_flag))
        self.events += len(messages)
        self.end_offset = messages[-1].offset + 1

    def skip_absent(self, offset: int) -> None:
        """Move the end over offsets the log does not have (compacted, transaction markers, deleted by
        retention): only when a fetch right after a seek to the end returned `offset` first."""
        if offset < self.end_offset:
            raise OffsetGap(self.partition, self.end_offset, offset)
        self.end_offset = offset
