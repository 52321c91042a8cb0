"""Which log a partition's ledger describes, and what the worker does when the broker holds another one.

The ledger (`ingest_flushes`) describes each partition's log up to the end of its last range. The broker
may hold another log under the same topic and partition:

- a topic deleted and recreated, a cluster rebuilt, restored or replaced (the embedded broker of
  `make run`, started empty): a **new log**, whose offsets start again at 0;
- a log **truncated** by an unclean leader election: its end falls below offsets it had;
- **expired** records: retention removed them before they were consumed (a worker down, or slower,
  longer than the topic's retention).

**How a log is recognised.** By the broker's topic id where it gives one (Kafka 2.8 and later, Tansu): a
recreated topic has a new one, a truncated log keeps it. And by the fingerprint of the last record the
ledger counted (its offset, and a CRC of its timestamp and value, recorded with every flush): another
record at that offset is another log (record timestamps tell apart two logs of identical payloads, such
as two runs of a seeded load generator). The check runs when a partition is assigned, whenever the broker
says the consumer's position is out of the log's range, and, for the topic id, before every flush
(`RollupAgent.confirm_logs`: a topic recreated under a running worker whose position lies inside the new
log fails no fetch).

| topic id | the fingerprinted record | verdict |
|---|---|---|
| differs | any | new log |
| same or unknown | the same | the same log |
| same or unknown | before the log start (retention passed it) | the same log (expired up to the log start if the ledger ends before it) |
| same | the log ends before it | truncated |
| unknown | the log ends before it | new log: a broker without topic ids that lost its log was replaced; an unclean election truncates on clusters recent enough to give topic ids |
| same | another record | diverged: truncated at or before it, then refilled past it |
| unknown | another record | new log |

**What the worker does** (`Verdict`):
- new log: a new **generation** `g + 1` counted from offset 0, its offsets [0, log start) recorded as
  expired, under deduplication tokens that name the generation (`agents/checkpoint.py`), so they never
  collide with the old log's;
- truncated: generation `g + 1` counted from the new log end (where the broker appends next); what the
  ledger counted past it stays counted (those events happened);
- diverged: as truncated, from the fingerprinted offset: records of the refilled log before it cannot be
  told from those counted (the broker's leader epochs would tell the exact point, through
  OffsetsForLeaderEpoch, which Tansu lacks), and the health report says so;
- in both, the records the worker knew existed past its ledger's end (`log_end_seen`) and never consumed
  are recorded as **lost** in generation `g`;
- expired: [ledger end, log start) recorded as expired; counting resumes at the log start.

Each generation's ranges are contiguous from where it starts (0 for a new log, the truncation point for a
truncated one) and every offset in them is counted, dead-lettered, late, skipped, expired or lost. Every
case but the same log degrades `/health` naming the partition, the offsets and what the worker did, counts
`kern_log_changes_total{change}` and logs an ERROR line (`Health.log_changed`).
"""  # noqa: E501 - the decision table above is Markdown, whose rows cannot wrap

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.leader import TopicIds, fetch_raw
from pipeline.config import Settings
from pipeline.health import Health
from pipeline.rollup import Fingerprint, LogIdentity

log = logging.getLogger(__name__)

SAME, NEW_LOG, TRUNCATED, DIVERGED, EXPIRED = "", "new log", "truncated", "diverged", "expired"
_FETCH_BYTES = 1 << 20  # enough for the batch holding one record (a broker returns at least one batch)
_TOPIC_ID_TIMEOUT_S = 10.0
_TOPIC_ID_FRESH_S = 2.0  # one assignment of many partitions asks once


class Recorded(NamedTuple):
    """What the ledger (or, while consuming, the partition's state) says of the log."""

    log: LogIdentity
    end: int  # the next offset to count
    fingerprint: Fingerprint | None  # of the last record counted, when there is one
    log_end_seen: int = 0  # the highest log end the worker had seen


class Facts(NamedTuple):
    """What the broker says of the partition's log now."""

    topic_id: str  # '' when the broker gives none
    start: int  # log start offset
    end: int  # log end offset (high watermark)
    fingerprint: int | None  # CRC of the record at the recorded fingerprint's offset; None: no record there


class Verdict(NamedTuple):
    change: str  # SAME, NEW_LOG, TRUNCATED, DIVERGED or EXPIRED
    log: LogIdentity  # the log counting goes on in
    cursor: int  # the next offset counted in `log`
    expired_from: int | None = None  # [expired_from, cursor) of `log` expired before it was consumed
    lost: tuple[int, int] | None = None  # [start, end) of the recorded log, gone before it was consumed

    def describe(self, recorded: Recorded) -> str:
        parts = {
            NEW_LOG: f"the broker holds a new log (topic id {self.log.topic_id or 'unknown'}, was "
            f"{recorded.log.topic_id or 'unknown'}): counted from offset 0 as log generation "
            f"{self.log.generation}",
            TRUNCATED: f"the log was truncated below the ledger's end {recorded.end}: counted from offset "
            f"{self.cursor} as log generation {self.log.generation}",
            DIVERGED: f"the log holds another record at offset {self.cursor} than the one counted (truncated, "
            f"then refilled): counted from there as log generation {self.log.generation}; records "
            "of the refilled log before it may be uncounted",
            EXPIRED: "retention removed records before they were consumed",
        }.get(self.change, "")
        gone = (
            [f"offsets {self.expired_from}-{self.cursor - 1} recorded as expired"]
            if self.expired_from is not None
            else []
        )
        if self.lost is not None:
            gone.append(
                f"offsets {self.lost[0]}-{self.lost[1] - 1} of log generation {recorded.log.generation} "
                "recorded as lost (known, never consumed, gone)"
            )
        return "; ".join([parts, *gone])


def judge(recorded: Recorded, facts: Facts) -> Verdict:
    """The decision table of the module docstring."""
    same_id = bool(recorded.log.topic_id and facts.topic_id)
    fingerprint = recorded.fingerprint
    if same_id and recorded.log.topic_id != facts.topic_id:
        change = NEW_LOG
    elif fingerprint is not None and facts.start <= fingerprint.offset < facts.end:
        change = SAME if facts.fingerprint == fingerprint.crc else DIVERGED if same_id else NEW_LOG
    elif recorded.end > facts.end:
        change = TRUNCATED if same_id else NEW_LOG
    else:
        change = SAME
    generation = recorded.log.generation
    if change == SAME:
        log_now, cursor = LogIdentity(generation, facts.topic_id or recorded.log.topic_id), recorded.end
    else:
        log_now = LogIdentity(generation + 1, facts.topic_id)
        if change == NEW_LOG:
            cursor = 0
        elif change == TRUNCATED:
            cursor = facts.end
        else:  # diverged: the first offset known to hold another record
            assert fingerprint is not None  # only a fingerprinted record can differ
            cursor = fingerprint.offset
    lost = (recorded.end, recorded.log_end_seen) if change != SAME and recorded.log_end_seen > recorded.end else None
    expired_from = cursor if facts.start > cursor else None
    if expired_from is not None:
        cursor = facts.start
        change = change or EXPIRED
    return Verdict(change, log_now, cursor, expired_from, lost)


class Logs:
    """Asks the broker about a partition's log and judges it against what was recorded."""

    def __init__(self, settings: Settings, consumer: AIOKafkaConsumer, health: Health):
        self.consumer = consumer
        self.health = health
        self._ask = TopicIds(settings, _TOPIC_ID_TIMEOUT_S)
        self._topic_ids: dict[str, tuple[str, float]] = {}

    async def judge(self, tp: TopicPartition, recorded: Recorded) -> Verdict:
        """The verdict on `tp`'s log, reported to the health (degraded, metric, ERROR line) unless it is
        the same log. Raises when the broker does not answer (the caller retries)."""
        verdict = judge(recorded, await self.facts(tp, recorded.fingerprint))
        if verdict.change != SAME:
            self.health.log_changed(tp.partition, verdict.change, verdict.describe(recorded))
        return verdict

    async def facts(self, tp: TopicPartition, fingerprint: Fingerprint | None) -> Facts:
        identity = await self.topic_id(tp.topic)
        consumer = self.consumer
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        crc = fetched = None
        # The end from a fetch too: Tansu answers ListOffsets with its last batch's base offset + 1.
        if fingerprint is not None and fingerprint.offset >= start:
            fetched = await fetch_raw(consumer, tp, fingerprint.offset, _FETCH_BYTES)
            if fetched is not None and fetched.error_code == 0:
                crc = _crc_at(fetched.records, fingerprint.offset)
        if crc is None:
            fetched = await fetch_raw(consumer, tp, start, _FETCH_BYTES)
        if fetched is not None and fetched.error_code == 0:
            end = max(end, fetched.high_watermark)
        return Facts(identity, start, end, crc)

    async def topic_id(self, topic: str, max_age_s: float = _TOPIC_ID_FRESH_S) -> str:
        """The broker's id of `topic`, asked again when the last answer is older than `max_age_s`."""
        known, at = self._topic_ids.get(topic, ("", -math.inf))
        if time.monotonic() - at < max_age_s:
            return known
        identity = await asyncio.wait_for(asyncio.to_thread(self._ask, topic), _TOPIC_ID_TIMEOUT_S + 5)
        self._topic_ids[topic] = (identity, time.monotonic())
        return identity

    def close(self) -> None:
        self._ask.close()


def _crc_at(records, offset: int) -> int | None:
    """The fingerprint CRC of the record at `offset` in raw batches (None when there is none: compacted,
    or a transaction marker)."""
    while records.has_next():
        batch = records.next_batch()
        if batch is None or batch.next_offset <= offset or batch.is_control_batch:
            continue
        for record in batch:
            if record.offset == offset:
                return Fingerprint.of(record).crc
            if record.offset > offset:
                return None
    return None
