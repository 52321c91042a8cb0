"""Which record batch of a partition cannot be decoded, read from the broker's raw bytes.

When aiokafka cannot decode a fetched batch (a codec this build lacks, a corrupt batch) `getmany` raises
for the whole fetch and names no partition. Once the agent knows which partition raised, this module asks
the broker for that partition's raw batches from where folding stands and walks them with aiokafka's own
record classes: the first batch that fails to decode is the poison, with its exact offsets, codec and
error, and the decodable records before it are counted, so the agent can fold exactly those.
"""

from __future__ import annotations

from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException

from agents.leader import fetch_raw

_CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


class UndecodableBatch(NamedTuple):
    first_offset: int
    last_offset: int
    records_before: int  # decodable records from the position the search started at up to first_offset
    codec: str
    error: str

    def describe(self) -> str:
        return (
            f"undecodable record batch at offsets {self.first_offset}-{self.last_offset} ({self.codec}): {self.error}"
        )


async def find_undecodable_batch(
    consumer: AIOKafkaConsumer, tp: TopicPartition, position: int, max_bytes: int
) -> UndecodableBatch | None:
    """The first batch at or after `position` that aiokafka cannot decode, within `max_bytes` of raw
    batches (the consumer's own partition fetch size, so what its fetch saw is covered); None when
    every batch read decodes (the failure was elsewhere, or gone)."""
    fetched = await fetch_raw(consumer, tp, position, max_bytes)
    return None if fetched is None or fetched.records is None else _first_undecodable(fetched.records, position)


def _first_undecodable(records, position: int) -> UndecodableBatch | None:
    """Walk the batches as aiokafka's fetcher does (CRC check, control batches skipped, records before
    `position` skipped) until one fails."""
    before = 0
    try:
        while records.has_next():
            batch = records.next_batch()
            if batch is None or batch.next_offset <= position:
                continue
            try:
                if not batch.validate_crc():
                    raise CorruptRecordException("invalid CRC")
                if batch.is_control_batch:
                    continue
                before += sum(1 for record in batch if record.offset >= position)
            except Exception as exc:  # noqa: BLE001 - whatever stops aiokafka's fetcher stops here
                return UndecodableBatch(
                    batch.base_offset,
                    batch.next_offset - 1,
                    before,
                    _CODECS.get(batch.compression_type, str(batch.compression_type)),
                    f"{type(exc).__name__}: {exc}".strip(),
                )
    except CorruptRecordException:  # a batch header itself is broken: nothing after it can be read
        return None
    return None
