"""The CRC-32C of fetched record batches by the CPU's instruction (`pipeline/native/crc.c`) and how the
worker's consumer uses it (`pipeline/kafka.py`): aiokafka's own check runs only on a fetched partition the
instruction does not vouch for, so a corrupt batch fails where it always did (`tests/test_poison.py` runs
one through a worker)."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from pipeline import _crc
from pipeline.config import Settings
from pipeline.kafka import worker_consumer

CODECS = (0, 1, 2, 3, 4)  # none, gzip, snappy, lz4, zstd


def batch(codec: int, first: int, count: int = 30) -> bytes:
    builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, -1, batch_size=1 << 20)
    for i in range(count):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=None, value=b"event %d " % (first + i) * 7, headers=[])
    built = bytearray(builder.build())
    built[:8] = first.to_bytes(8, "big")  # the base offset is not covered by the CRC
    return bytes(built)


BATCHES = [batch(codec, 30 * i) for i, codec in enumerate(CODECS)]
FETCHED = b"".join(BATCHES)


def test_this_machine_has_the_instruction():
    assert _crc.HARDWARE  # every machine of this project (x86-64 with SSE4.2); elsewhere aiokafka checks


@given(st.binary(max_size=300))
def test_the_instruction_computes_aiokafkas_crc32c(data):
    assert _crc.crc32c(data) == calc_crc32c(data)


def test_a_fetch_of_intact_batches_of_every_codec_is_vouched_for_even_cut_at_its_size_limit():
    assert _crc.intact(FETCHED)
    assert _crc.intact(FETCHED + batch(0, 150)[:100])  # a partial batch, which aiokafka does not read either
    assert _crc.intact(b"")


def test_any_flipped_bit_a_batch_covers_or_an_older_format_is_left_to_aiokafka():
    starts = [0]
    for built in BATCHES:
        starts.append(starts[-1] + len(built))
    for start, end in itertools.pairwise(starts):
        for at in (start + 17, start + 21, start + 40, (start + end) // 2, end - 1):  # CRC, attributes, records
            flipped = bytearray(FETCHED)
            flipped[at] ^= 0x10
            assert not _crc.intact(bytes(flipped)), (start, at)
    legacy = LegacyRecordBatchBuilder(1, 0, batch_size=1 << 20)
    legacy.append(0, timestamp=1_700_000_000_000, key=None, value=b"v1 record")
    assert not _crc.intact(bytes(legacy.build()))
    assert not _crc.intact(bytearray(FETCHED))  # not bytes: aiokafka checks


def test_the_consumer_checks_in_software_only_a_partition_the_instruction_does_not_vouch_for():
    from aiokafka.consumer import fetcher

    async def made() -> None:  # making the worker's consumer installs the check (it connects only on start)
        worker_consumer(Settings(bootstrap_servers="127.0.0.1:9"))

    asyncio.run(made())
    tp = TopicPartition("events", 0)

    def records(buffer: bytes):
        return fetcher.PartitionRecords(tp, fetcher.MemoryRecords(buffer), [], 0, None, None, True, 0)

    intact = records(FETCHED)
    assert intact._check_crcs is False
    assert [r.offset for r in intact] == list(range(150))

    corrupt = bytearray(FETCHED)
    corrupt[len(BATCHES[0]) + len(BATCHES[1]) - 1] ^= 1  # the second batch's last byte
    checked = records(bytes(corrupt))
    assert checked._check_crcs is True
    seen = []
    with pytest.raises(CorruptRecordException):
        seen.extend(r.offset for r in checked)
    assert seen == list(range(30))
