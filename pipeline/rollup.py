"""Pending aggregates of one source partition, folded batch by batch between two flushes.

A `PartitionRollup` covers the contiguous offsets [start_offset, end_offset) of one partition's log (one
`LogIdentity`: a partition may meet a new log under the same name, `agents/logs.py`): its runs counts,
its quality counts, the sessions and candidate values its events carried (a `Tally`), the dead letters of
its invalid events, and the ledger's account of the range (counted, dead-lettered, late, skipped, expired,
lost). It is projected with one admission epoch, recorded with its flush, with the fingerprint of its last
record (how a later worker recognises the log). A flush writes exactly that range (`agents/checkpoint.py`),
so rebuilding the rollup from the same offsets gives the same rows, which is what makes a replayed flush
deduplicate. A batch that does not start where the rollup ends is refused (`OffsetGap`): counting records
after a hole would let a flush claim offsets that were never counted.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

from kern_telemetry_client.contract import CLIENT_REPORT

from pipeline.dead_letters import DeadLetter, dead_letter, gone_range
from pipeline.dimensions import NAMES
from pipeline.projector import EventProjector, Tally
from pipeline.rejections import GONE, Reason

_RUN_DIMENSIONS = len(NAMES)


class LogIdentity(NamedTuple):
    """Which log of a partition: `generation` counts the logs the ledger has met under the same topic and
    partition (0 for the first); `topic_id` is the broker's id of the topic ('' when it gives none)."""

    generation: int = 0
    topic_id: str = ""


class Fingerprint(NamedTuple):
    """A record's identity within its log: its offset and a CRC of its timestamp and value."""

    offset: int
    crc: int

    @classmethod
    def of(cls, record: Any) -> Fingerprint:
        value = record.value or b""
        return cls(record.offset, zlib.crc32(value, zlib.crc32(str(record.timestamp).encode())))


class OffsetGap(Exception):
    """A batch that does not start at the rollup's end offset."""

    def __init__(self, partition: int, expected: int, first: int):
        super().__init__(f"partition {partition}: batch starts at offset {first}, the rollup ends at {expected}")
        self.partition, self.expected, self.first = partition, expected, first


class PartitionRollup(Tally):
    __slots__ = (
        "dead_lettered",
        "dead_letters",
        "end_offset",
        "epoch",
        "events",
        "expired",
        "first_ms",
        "flushed_at",
        "landed",
        "last",
        "late",
        "log",
        "lost",
        "partition",
        "previous",
        "replay",
        "skipped",
        "start_offset",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        start_offset: int,
        replay: bool = False,
        epoch: int = 0,
        log: LogIdentity = LogIdentity(),
        previous: Fingerprint | None = None,
    ):
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
        # offsets without records to count (`rejections.GONE`; such a rollup holds nothing else)
        self.skipped = self.expired = self.lost = 0
        self.epoch = epoch  # the admission epoch its rows were projected with
        self.log = log
        self.last: Any = None  # the last record folded
        self.previous = previous  # the fingerprint of the last record before the range
        self.flushed_at: float | None = None  # the time its intent records (a gone range's quality window)
        self.landed: set[str] = set()  # the tables its flush has written (`agents/checkpoint.py`)
        self.first_ms: int | None = None  # the Kafka timestamp of its first record (freshness)

    @classmethod
    def gone(
        cls,
        reason: Reason,
        topic: str,
        partition: int,
        start_offset: int,
        end_offset: int,
        at_s: float,
        window_seconds: int,
        detail: str = "",
        log: LogIdentity = LogIdentity(),
        previous: Fingerprint | None = None,
        replay: bool = False,
    ) -> PartitionRollup:
        """The flush of a range of offsets without records to count (`rejections.GONE`): skipped by an
        operator, expired, or lost. Counted by offsets in the ledger and in the quality table (in the window
        of `at_s`, recorded with the intent, so that a rewrite is identical) and described by one dead
        letter."""
        if reason not in GONE:
            raise ValueError(f"{reason} is not an outcome of a range")
        rollup = cls(topic, partition, start_offset, replay, log=log, previous=previous)
        rollup.end_offset = end_offset
        setattr(rollup, reason.value, end_offset - start_offset)
        rollup.flushed_at = at_s
        at = int(at_s)
        rollup.quality[(at - at % window_seconds, "unknown", reason)] = end_offset - start_offset
        if not replay:
            rollup.dead_letters.append(gone_range(reason, topic, partition, start_offset, end_offset - 1, detail))
        return rollup

    @property
    def offsets_gone(self) -> int:
        return self.skipped + self.expired + self.lost

    @property
    def accounted(self) -> int:
        """What the range adds to its log's ledger total (`ledger.ACCOUNTED`)."""
        return self.events + self.offsets_gone

    @property
    def fingerprint(self) -> Fingerprint | None:
        """Of the last record folded, else of the last record before the range."""
        return Fingerprint.of(self.last) if self.last is not None else self.previous

    @property
    def runs(self) -> dict[tuple, int]:
        """(window_start, dims) -> events counted with those dims."""
        return {key: len(sessions) for key, sessions in self.sessions.items()}

    @property
    def rows(self) -> int:
        return len(self.sessions) + len(self.quality)

    def run_counts(self) -> Counter:
        """(window_start, dims) -> usage events: `runs` without the client reports, and without the
        patterns of the kinds that have one."""
        counts: Counter = Counter()
        for (window, dims), sessions in self.sessions.items():
            if dims[0] != CLIENT_REPORT:
                counts[(window, dims[:_RUN_DIMENSIONS])] += len(sessions)
        return counts

    def patterns(self, kind: str) -> Counter:
        """(window_start, sdk_version, *pattern) -> events of `kind` (a kind with a pattern,
        `dimensions.PATTERNS`: its events' dims end with it)."""
        counts: Counter = Counter()
        for (window, dims), sessions in self.sessions.items():
            if dims[0] == kind:
                counts[(window, dims[1], *dims[_RUN_DIMENSIONS])] += len(sessions)
        return counts

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

    def add(self, messages: Sequence, projector: EventProjector) -> None:
        """Fold consumer records (with .offset, .timestamp, .value) into the rollup, with the projector
        of its admission epoch. The hot path."""
        if messages[0].offset != self.end_offset:
            raise OffsetGap(self.partition, self.end_offset, messages[0].offset)
        if projector.epoch != self.epoch:
            raise ValueError(f"a rollup of admission epoch {self.epoch} cannot fold with epoch {projector.epoch}")
        for message, rejection in projector.fold(messages, self):
            if not rejection.dead_letter:
                self.late += 1
                continue
            self.dead_lettered += 1
            if not self.replay:
                self.dead_letters.append(
                    dead_letter(rejection, message, self.topic, self.partition, projector.admits_flag)
                )
        if self.first_ms is None:
            self.first_ms = messages[0].timestamp
        self.events += len(messages)
        self.last = messages[-1]
        self.end_offset = self.last.offset + 1

    def skip_absent(self, offset: int) -> None:
        """Move the end over offsets the log does not have (compacted, transaction markers, deleted by
        retention): only when a fetch right after a seek to the end returned `offset` first."""
        if offset < self.end_offset:
            raise OffsetGap(self.partition, self.end_offset, offset)
        self.end_offset = offset
