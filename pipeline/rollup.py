"""Pending aggregates of one source partition, folded batch by batch between two flushes.

A `PartitionRollup` covers the contiguous offsets [start_offset, end_offset) of one partition: its
runs counts, its quality counts and the dead letters of its invalid events. A flush writes exactly
that range (see `pipeline/sink.py`), so rebuilding the rollup from the same offsets gives the same rows,
which is what makes a replayed flush deduplicate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec

from pipeline.events import Rejection, shape_of_bytes


class DeadLetter(NamedTuple):
    key: bytes
    value: bytes


class PartitionRollup:
    __slots__ = ("topic", "partition", "start_offset", "end_offset", "events", "runs", "quality",
                 "dead_letters", "replay")

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

    @property
    def rows(self) -> int:
        return len(self.runs) + len(self.quality)

    @property
    def token(self) -> str:
        """Deterministic identity of this flush: the same range always gets the same token."""
        return f"{self.topic}/{self.partition}/{self.start_offset}-{self.end_offset}"

    def add(self, messages: Sequence[Any], project: Callable) -> None:
        """Fold consumer records (with .offset, .timestamp, .value) into the rollup. The hot path."""
        runs = self.runs
        quality = self.quality
        for message in messages:
            key = project(message.value, message.timestamp, quality)
            if type(key) is tuple:
                runs[key] += 1
            elif key.dead_letter and not self.replay:
                self.dead_letters.append(dead_letter(key, message, self.topic, self.partition))
        self.events += len(messages)
        self.end_offset = messages[-1].offset + 1


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
