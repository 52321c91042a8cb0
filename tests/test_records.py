"""Records read in place from fetched record batches (`pipeline/native/records.c`, `pipeline/kafka.py`): for
any batches (every codec, keys, null values, headers, log-append time, control batches, a fetch offset inside
a batch, a trailing batch cut by the fetch size) exactly what aiokafka's own iteration yields, field for
field, and where the next fetch starts; bytes that do not add up are refused (aiokafka then reads them), never
read past; the worker's consumer gives them only inside `records_in_place`; the native fold counts over them
what it counts over aiokafka's records."""

from __future__ import annotations

import asyncio
import bisect
import json
import time

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.loadgen import EventGenerator
from pipeline import _fold
from pipeline.admission import Admission, Keys
from pipeline.config import Settings
from pipeline.kafka import Record, _decompress, _read_in_place, fetched_records, records_in_place, worker_consumer
from pipeline.projector import EventProjector
from pipeline.rollup import PartitionRollup

CODECS = (0, 1, 2, 3, 4)  # none, gzip, snappy, lz4, zstd
LOG_APPEND_TIME, CONTROL = 0x08, 0x20
TP = TopicPartition("events", 0)
#: aiokafka's own PartitionRecords, under the subclass the worker's consumer installs
AIOKAFKA = next(c for c in fetcher.PartitionRecords.__mro__ if c.__module__ == "aiokafka.consumer.fetcher")


def batch(base_offset: int, records: list, codec: int = 0, attributes: int = 0, gaps: int = 0) -> bytes:
    """A v2 record batch of `records` ((timestamp, key, value, headers) each), `gaps` offsets apart (as a
    compacted log has them), with extra `attributes` bits (the CRC is left as built: it is checked before)."""
    builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, -1, batch_size=1 << 30)
    for i, (timestamp, key, value, headers) in enumerate(records):
        builder.append(i * (gaps + 1), timestamp=timestamp, key=key, value=value, headers=headers)
    built = bytearray(builder.build())
    built[:8] = base_offset.to_bytes(8, "big")
    built[22] |= attributes
    return bytes(built)


def aiokafka_reads(buffer: bytes, fetch_offset: int) -> tuple[list, int]:
    records = AIOKAFKA(TP, fetcher.MemoryRecords(buffer), [], fetch_offset, None, None, False, 0)
    return [fields(r) for r in records], records.next_fetch_offset


def fields(record) -> tuple:
    return record.offset, record.timestamp, record.key, record.value, list(record.headers)


_RECORDS = st.lists(
    st.tuples(
        st.integers(1_600_000_000_000, 1_800_000_000_000),
        st.none() | st.binary(max_size=12),
        st.none() | st.binary(max_size=200),
        st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=8)), max_size=3),
    ),
    min_size=1,
    max_size=12,
)


@st.composite
def fetches(draw) -> tuple[bytes, int]:
    """Batches one after another as a fetch returns them, and the offset the fetch asked from."""
    parts, offset = [], draw(st.integers(0, 1 << 40))
    first = offset
    for _ in range(draw(st.integers(1, 5))):
        records, gaps = draw(_RECORDS), draw(st.sampled_from((0, 0, 2)))
        attributes = draw(st.sampled_from((0, 0, LOG_APPEND_TIME, CONTROL)))
        parts.append(batch(offset, records, draw(st.sampled_from(CODECS)), attributes, gaps))
        offset += (len(records) - 1) * (gaps + 1) + 1 + draw(st.sampled_from((0, 0, 5)))
    fetched = b"".join(parts)
    if draw(st.booleans()):  # the fetch's size limit cut the last batch
        fetched = fetched[: len(fetched) - draw(st.integers(1, len(parts[-1]) - 1))]
    return fetched, draw(st.integers(first, first + 20))


@settings(max_examples=400, deadline=None)
@given(fetches())
def test_records_read_in_place_are_aiokafkas_field_for_field(fetch) -> None:
    buffer, fetch_offset = fetch
    expected, next_offset = aiokafka_reads(buffer, fetch_offset)
    records = _fold.Records(buffer, fetch_offset, _decompress, Record)
    assert [fields(r) for r in records] == expected
    assert len(records) == len(expected)
    assert records.next_offset == next_offset


@settings(max_examples=400, deadline=None)
@given(fetches(), st.data())
def test_bytes_that_do_not_add_up_are_refused_or_read_as_aiokafka_reads_them(fetch, data) -> None:
    """Any byte of a fetch changed, and the fetch cut anywhere after it: the records are read as aiokafka reads
    them, or refused (ValueError, or the codec's error: aiokafka then reads them, and raises where it does);
    never read past the bytes, and every record made without an error."""
    buffer, fetch_offset = fetch
    changed = bytearray(buffer)
    at = data.draw(st.integers(0, len(changed) - 1))
    changed[at] = data.draw(st.integers(0, 255))
    changed = changed[: data.draw(st.integers(at, len(changed)))]
    records = _read_in_place(bytes(changed), fetch_offset)
    if records is None:
        return
    read = [fields(r) for r in records]  # made without an error (a header's name is checked as it is indexed)
    try:
        expected, next_offset = aiokafka_reads(bytes(changed), fetch_offset)
    except Exception:  # noqa: BLE001 - aiokafka refuses what a compressed batch's change broke
        return
    assert (read, records.next_offset) == (expected, next_offset)


def test_an_older_message_format_or_a_failing_codec_is_left_to_aiokafka() -> None:
    legacy = LegacyRecordBatchBuilder(1, 0, batch_size=1 << 20)
    legacy.append(0, timestamp=1_700_000_000_000, key=None, value=b"v1 record")
    assert _read_in_place(bytes(legacy.build()), 0) is None
    unknown_codec = batch(0, [(1_700_000_000_000, None, b"x", [])], attributes=0x05)
    assert _read_in_place(unknown_codec, 0) is None
    lz4 = batch(0, [(1_700_000_000_000, None, b"x" * 100, [])], codec=3)
    assert _read_in_place(lz4[:61] + b"\x00" * (len(lz4) - 61), 0) is None  # not lz4 any more
    with pytest.raises(TypeError):
        _fold.Records(bytearray(lz4), 0, _decompress, Record)


def test_records_index_and_slice_as_a_list_does() -> None:
    rows = [(1_700_000_000_000 + i, None, b"event %d" % i, []) for i in range(10)]
    records = _fold.Records(batch(100, rows[:4]) + batch(104, rows[4:], codec=4), 102, _decompress, Record)
    listed = list(records)
    assert [r.offset for r in listed] == list(range(102, 110))
    assert records[-1] == listed[-1] and records[0] == listed[0]
    for start, stop in ((0, 3), (2, 8), (5, 5), (-3, None), (None, -2), (6, 100)):
        part = records[start:stop]
        assert type(part) is _fold.Records and list(part) == listed[start:stop]
        assert part.next_offset == records.next_offset
    assert bisect.bisect_left(records, 105, key=lambda r: r.offset) == 3
    with pytest.raises(IndexError):
        records[8]
    with pytest.raises(TypeError):
        records[::2]


def test_the_worker_consumer_reads_in_place_only_inside_records_in_place() -> None:
    async def made() -> None:  # making the worker's consumer installs the reading (it connects only on start)
        worker_consumer(Settings(bootstrap_servers="127.0.0.1:9"))

    asyncio.run(made())
    rows = [(1_700_000_000_000 + i, b"k", b"event %d" % i, [("h", b"1")]) for i in range(30)]
    fetched = b"".join(batch(30 * i, rows, codec) for i, codec in enumerate(CODECS))

    def drained(in_place: bool) -> list:
        partition = fetcher.PartitionRecords(TP, fetcher.MemoryRecords(fetched), [], 0, None, None, True, 0)
        if not in_place:
            return list(partition)
        with records_in_place():
            got = list(partition)
        assert partition.next_fetch_offset == 150
        return got

    (records,) = drained(True)
    assert type(records) is _fold.Records and fetched_records([records]) is records
    assert [fields(r) for r in records] == [fields(r) for r in drained(False)] == aiokafka_reads(fetched, 0)[0]
    corrupt = bytearray(fetched)
    corrupt[100] ^= 1  # a CRC the instruction does not vouch for: aiokafka's records, and its check
    partition = fetcher.PartitionRecords(TP, fetcher.MemoryRecords(bytes(corrupt)), [], 0, None, None, True, 0)
    with records_in_place(), pytest.raises(Exception, match="CRC"):
        list(partition)


def test_the_native_fold_counts_over_records_in_place_what_it_counts_over_aiokafkas() -> None:
    """The bench's mix (invalid events, client reports, private values, timestamps), one rollup folded from
    records read in place, one from aiokafka's records of the same fetches, in the same batches."""
    now_ms = int(time.time()) * 1000
    values = list(EventGenerator(seed=11, profiles=50).events(3_000))
    batches = [  # a fetch starts at the batch that holds its offset
        batch(i, [(now_ms, None, value, []) for value in values[i : i + 500]], codec=(0, 3)[i // 500 % 2])
        for i in range(0, len(values), 500)
    ]
    folded = []
    for in_place in (True, False):
        projector = EventProjector(
            60, 300, 60, 65_536, Admission(), k=3, max_new_values=4, keys=Keys(b"records"), native=True
        )
        rollup = PartitionRollup("events", 0, 0)
        for start in range(0, len(values), 1_000):
            fetched = b"".join(batches[start // 500 :])
            if in_place:
                records = _fold.Records(fetched, start, _decompress, Record)[:1_000]
            else:
                records = list(AIOKAFKA(TP, fetcher.MemoryRecords(fetched), [], start, None, None, False, 0))[:1_000]
            rollup.add(records, projector)
        folded.append(
            (
                {key: list(hashes) for key, hashes in rollup.sessions.items()},
                rollup.installations,
                dict(rollup.quality),
                [(letter.key, json.loads(letter.value)) for letter in rollup.dead_letters],
                rollup.events,
                rollup.late,
                rollup.fingerprint,
                projector.native_events,
            )
        )
    assert folded[0] == folded[1]
    assert folded[0][7] > 2_500  # most through the native fold (50 configurations: few signatures to learn)
