"""Pending aggregates of one source partition, folded batch by batch between two flushes.

A `PartitionRollup` covers the contiguous offsets [start_offset, end_offset) of one partition: its
runs counts, its quality counts, the dead letters of its invalid events, and the ledger's account of the
range (counted, dead-lettered, late, skipped). A flush writes exactly that range (see `pipeline/sink.py`),
so rebuilding the rollup from the same offsets gives the same rows, which is what makes a replayed flush
deduplicate. A batch that does not start where the rollup ends is refused (`OffsetGap`): counting records
after a hole would let a flush claim offsets that were never counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec

from pipeline.events import Reason, Rejection, shape_of_bytes


class DeadLetter(NamedTuple):
    key: bytes
    value: bytes


class OffsetGap(Exception):
    """A batch that does not start at the rollup's end offset."""

    def __init__(self, partition: int, expected: int, first: int):
        super().__init__(f"partition {partition}: batch starts at offset {first}, the rollup ends at {expected}")
        self.partition, self.expected, self.first = partition, expected, first


class PartitionRollup:
    __slots__ = ("topic", "partition", "start_offset", "end_offset", "events", "runs", "quality",
                 "dead_letters", "replay", "dead_lettered", "late", "skipped")

    def __init__(self, topic: str, partition: int, start_offset: int, replay: bool = False):
        self.topic = topic
        self.partition = partition
        self.start_offset = start_offset
        self.end_offset = start_offset
        self.events = 0
        self.runs: dict[tuple, int] = defaultdict(int)  # (window_start, dims) -> runs
        self.quality: dict[tuple, int] = {}  # (window_start, kind, reason) -> events
        self.dead_letters: list[DeadLetter] = []
        self.replay = replay  # rebuilt from an already recorded range: its dead letters were sent
        self.dead_lettered = 0
        self.late = 0
        self.skipped = 0  # offsets an operator skipped (a skip rollup holds nothing else)

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
            record = {"reason": Reason.SKIPPED.value, "path": "$", "detail": reason, "kind": "unknown",
                      "source": {"topic": topic, "partition": partition, "offset": start_offset,
                                 "through_offset": end_offset - 1},
                      "size": None, "shape": None}
            rollup.dead_letters.append(DeadLetter(f"{topic}/{partition}/{start_offset}-{end_offset - 1}".encode(),
                                                  msgspec.json.encode(record)))
        return rollup

    @property
    def rows(self) -> int:
        return len(self.runs) + len(self.quality)

    @property
    def counted(self) -> int:
        return self.events - self.dead_lettered - self.late

    @property
    def token(self) -> str:
        """Deterministic identity of this flush: the same range always gets the same token."""
        return f"{self.topic}/{self.partition}/{self.start_offset}-{self.end_offset}"

    def add(self, messages: Sequence[Any], project: Callable) -> None:
        """Fold consumer records (with .offset, .timestamp, .value) into the rollup. The hot path."""
        if messages[0].offset != self.end_offset:
            raise OffsetGap(self.partition, self.end_offset, messages[0].offset)
        runs = self.runs
        quality = self.quality
        for message in messages:
            key = project(message.value, message.timestamp, quality)
            if type(key) is tuple:
                runs[key] += 1
            elif key.dead_letter:
                self.dead_lettered += 1
                if not self.replay:
                    self.dead_letters.append(dead_letter(key, message, self.topic, self.partition))
            else:
                self.late += 1
        self.events += len(messages)
        self.end_offset = messages[-1].offset + 1

    def skip_absent(self, offset: int) -> None:
        """Move the end over offsets the log does not have (compacted, transaction markers, deleted by
        retention): only when a fetch right after a seek to the end returned `offset` first."""
        if offset < self.end_offset:
            raise OffsetGap(self.partition, self.end_offset, offset)
        self.end_offset = offset


def dead_letter(rejection: Rejection, message: Any, topic: str, partition: int) -> DeadLetter:
    """The DLQ record of an invalid event: why, where, and its shape, never its values. Keyed by the
    source position so a consumer of the DLQ can drop the duplicates a crash may leave."""
    raw = message.value
    record = {
        "reason": rejection.reason.value,
        "path": rejection.path,
        "detail": rejection.detail,
        "kind": rejection.kind,
        "source": {"topic": topic, "partition": partition, "offset": message.offset,
                   "timestamp_ms": message.timestamp},
        "size": None if raw is None else len(raw),
        "shape": shape_of_bytes(raw) if raw is not None and len(raw) <= 1 << 20 else None,
    }
    return DeadLetter(f"{topic}/{partition}/{message.offset}".encode(), msgspec.json.encode(record))
