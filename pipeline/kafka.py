"""Every Kafka client of the project, from the settings, in one place: the connection options aiokafka
(worker) and kafka-python (producer side, admin) share, the worker's consumer (with its CRC check) and
dead-letter producer and the letters' grouped send, the HTTP collector's producer, the one producer helper
(load generator, tests, benchmarks), and topic creation."""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import NamedTuple

from pipeline.config import Settings


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(
            str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None
        )
    return context


def _sasl(settings: Settings) -> dict:
    if not settings.kafka_security_protocol.startswith("SASL"):
        return {}
    return {
        "sasl_mechanism": settings.kafka_sasl_mechanism or "PLAIN",
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": settings.kafka_sasl_password.get_secret_value()
        if settings.kafka_sasl_password
        else None,
    }


def client_options(settings: Settings) -> dict:
    """Connection options both aiokafka and kafka-python accept under the same names."""
    options = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "security_protocol": settings.kafka_security_protocol,
        **_sasl(settings),
    }
    if context := _ssl_context(settings):
        options["ssl_context"] = context
    return options


#: The consumer's fetch sizes: a large batch per partition per call (the bench's bare consumer uses them too).
FETCH_OPTIONS = {"fetch_max_bytes": 64 << 20, "max_partition_fetch_bytes": 16 << 20, "fetch_max_wait_ms": 200}


def worker_consumer(settings: Settings):
    """The rollup worker's consumer: manual commits (`ingest_flushes` is the truth), a short session
    (`KERN_KAFKA_SESSION_TIMEOUT_SECONDS`), so a crashed worker's partitions move within seconds, no reset
    of a position out of the log's range (the worker judges the log itself, `agents/logs.py`, instead of
    jumping silently), and bare records."""
    from aiokafka import AIOKafkaConsumer

    _bare_records()
    _hardware_crcs()
    return AIOKafkaConsumer(
        group_id=settings.consumer_group,
        client_id="kern-telemetry-rollup",
        enable_auto_commit=False,
        auto_offset_reset="none",
        max_poll_records=50_000,
        session_timeout_ms=int(settings.kafka_session_timeout_seconds * 1000),
        heartbeat_interval_ms=int(settings.kafka_session_timeout_seconds * 200),
        rebalance_timeout_ms=10_000,
        **FETCH_OPTIONS,
        **client_options(settings),
    )


def _bare_records() -> None:
    """Records as aiokafka's batch decoder makes them (`offset`, `timestamp`, `value`, `key`, `headers`),
    not wrapped each in a `ConsumerRecord` of eleven fields the worker never reads: measured draining
    300,000 events from Tansu, 2.9-3.2 CPU-us per record instead of 4.65 (librdkafka: 2.1-2.35). aiokafka
    is pinned: the tests run the worker on it, so a release that changes this fails them."""
    from aiokafka.consumer.fetcher import PartitionRecords

    PartitionRecords._consumer_record = _batch_record


def _batch_record(partition_records: object, tp: object, record: object) -> object:
    return record


def _hardware_crcs() -> None:
    """Each fetched partition's record batches checked at once with the CPU's CRC-32C instruction
    (`pipeline/native/crc.c`); aiokafka's own check, a software CRC that took 5-6% of the worker's event
    loop, runs only on a partition that check does not vouch for, so a corrupt batch fails where it did.
    Within `records_in_place`, a vouched partition's records are read in place (`_fold.Records`)."""
    from aiokafka.consumer import fetcher

    from pipeline import _crc

    if not _crc.HARDWARE or getattr(fetcher.PartitionRecords, "hardware_crcs", False):
        return

    class CheckedRecords(fetcher.MemoryRecords):
        """aiokafka's records of one fetched partition, their bytes, and whether their CRCs were all found
        intact."""

        def __init__(self, buffer: bytes):
            super().__init__(buffer)
            self.buffer = buffer
            self.intact = _crc.intact(buffer)

    class CheckedPartitionRecords(fetcher.PartitionRecords):
        hardware_crcs = True
        next_fetch_offset: int  # aiokafka's: where the partition's next fetch starts

        def __init__(self, tp, records, aborted, offset, keys, values, check_crcs, isolation):
            self._vouched = getattr(records, "intact", False)
            super().__init__(tp, records, aborted, offset, keys, values, check_crcs and not self._vouched, isolation)

        def _unpack_records(self):
            """Run at the first `getmany` that asks for this partition's records."""
            in_place = _IN_PLACE.get() and self._vouched and self._isolation_level == fetcher.READ_UNCOMMITTED
            records = _read_in_place(self._records.buffer, self.next_fetch_offset) if in_place else None
            if records is None:
                yield from super()._unpack_records()
                return
            self.next_fetch_offset = records.next_offset
            if len(records):
                yield records

    fetcher.MemoryRecords = CheckedRecords
    fetcher.PartitionRecords = CheckedPartitionRecords


class Record(NamedTuple):
    """A record read in place (`_fold.Records`), made when it is asked for: aiokafka's record fields."""

    offset: int
    timestamp: int
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes | None]]


_IN_PLACE: ContextVar[bool] = ContextVar("records_in_place", default=False)


@contextlib.contextmanager
def records_in_place() -> Iterator[None]:
    """Within it, the worker consumer's `getmany` gives each partition's records as one `_fold.Records`, read
    from the fetched batches' bytes: no Python object per record (aiokafka made one for each, ~12% of the
    worker's event loop with their iteration and release); the native fold reads values and timestamps in
    place, and a record is made only when asked for (`fetched_records`). Outside it (the quarantine's
    drains), aiokafka's records."""
    token = _IN_PLACE.set(True)
    try:
        yield
    finally:
        _IN_PLACE.reset(token)


def fetched_records(records: list) -> Sequence:
    """A partition's records as `getmany` gave them: the `_fold.Records` read in place, else aiokafka's list."""
    from pipeline import _fold

    return records[0] if len(records) == 1 and type(records[0]) is _fold.Records else records


def _read_in_place(buffer: bytes, fetch_offset: int):
    """The partition's records read in place; None when aiokafka must read them (an older message format,
    bytes that do not add up, a codec that fails): it then raises where it always has."""
    from pipeline import _fold

    try:
        return _fold.Records(buffer, fetch_offset, _decompress, Record)
    except Exception:  # noqa: BLE001 - aiokafka reads the same bytes and reports what is wrong with them
        return None


def _decompress(codec: int, data: bytes) -> bytes:
    """A compressed batch's records, by aiokafka's own codecs (1 gzip, 2 snappy, 3 lz4, 4 zstd)."""
    from aiokafka import codec as codecs

    return (codecs.gzip_decode, codecs.snappy_decode, codecs.lz4_decode, codecs.zstd_decode)[codec - 1](data)


def dead_letter_producer(settings: Settings):
    """The worker's producer of dead letters. No lingering: a flush sends its batch's letters at once and
    waits for their acks before its intent, so a linger only delays every flush (at 20,000 events/s,
    20 ms of linger made that step 59 ms on average, against 20 ms without, 6 December)."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(client_id="kern-telemetry-dlq", acks="all", linger_ms=0, **client_options(settings))


async def send_grouped(producer, topic: str, groups: Sequence[tuple[int, Sequence[tuple[bytes, bytes]]]]) -> None:
    """Send each group of (key, value) records to one partition, its number modulo the topic's partitions,
    in record batches rather than a `send` per record, and wait for every ack. A `send` per record (metadata
    awaited, the key hashed by a Python murmur2, an append, a debug record) cost 12-17 CPU-us per record;
    the worker's dead letters, grouped by their source partition, cost 4-6 (7 December)."""
    partitions = len(await producer.partitions_for(topic))
    sends = []
    for group, records in groups:
        partition, batch = group % partitions, producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start the next
                sends.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)  # an empty batch takes a record of any size
        sends.append(await producer.send_batch(batch, topic, partition=partition))
    for sent in sends:
        await sent


def collector_producer(settings: Settings, max_batch_bytes: int, ack_timeout_s: float):
    """The HTTP collector's producer: record batches of up to `max_batch_bytes` (it never splits a request's
    events across two: `collector/publisher.py`), acks=all; a batch not acknowledged within `ack_timeout_s`
    fails. Not idempotent: Tansu, the embedded broker, refuses aiokafka's InitProducerId."""
    from aiokafka import AIOKafkaProducer

    size = max_batch_bytes + (64 << 10)  # room for the records' own headers
    return AIOKafkaProducer(
        client_id="kern-telemetry-collector",
        acks="all",
        linger_ms=0,
        max_batch_size=size,
        max_request_size=size,
        request_timeout_ms=int(ack_timeout_s * 1000),
        **client_options(settings),
    )


_PACE_EVERY = 500  # records between two checks of the pace


def produce(
    settings: Settings,
    values: Iterable[bytes | None],
    *,
    rate: float = 0,
    partition: int | None = None,
    timestamps_ms: Sequence[int] | None = None,
    compression: str | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
    delivered: Callable[[int, int, float], None] | None = None,
) -> dict[int, int]:
    """Send records to the events topic with kafka-python. None is a tombstone; `rate` paces the sends to
    that many records per second; `partition` pins them (else the partitioner spreads them); `stop` ends
    the sending early; `progress(n)` reports sends; `delivered(partition, offset, sent_at)` is called for
    each record the broker acknowledged. Returns each partition's end offset (last acknowledged offset + 1,
    from the delivery reports: Tansu's ListOffsets answers the last batch's base offset + 1)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        linger_ms=20,
        batch_size=512 << 10,
        max_request_size=16 << 20,
        acks=1,
        compression_type=compression,
        **client_options(settings),
    )
    ends: dict[int, int] = {}
    errors: list[Exception] = []

    def acknowledged(sent_at: float, metadata) -> None:  # kafka-python passes the bound args first
        if metadata.offset >= ends.get(metadata.partition, 0):
            ends[metadata.partition] = metadata.offset + 1
        if delivered is not None:
            delivered(metadata.partition, metadata.offset, sent_at)

    started = time.monotonic()
    sent = 0
    try:
        for value in values:
            future = producer.send(
                settings.topic,
                value,
                key=b"tombstone" if value is None else None,
                partition=partition,
                timestamp_ms=timestamps_ms[sent] if timestamps_ms else None,
            )
            future.add_callback(acknowledged, time.time()).add_errback(errors.append)
            sent += 1
            if sent % _PACE_EVERY == 0:
                if progress is not None:
                    progress(_PACE_EVERY)
                if stop is not None and stop.is_set():
                    break
                if rate and (ahead := sent / rate - (time.monotonic() - started)) > 0:
                    time.sleep(ahead)
        producer.flush()
        if progress is not None and sent % _PACE_EVERY:
            progress(sent % _PACE_EVERY)
    finally:
        producer.close()
    if errors:
        raise errors[0]
    return ends


def create_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the events topic and its DLQ if missing, with the configured short retention (the raw
    events are the only place identifiers exist); returns the names created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(
        client_id="kern-telemetry-admin", request_timeout_ms=int(timeout_s * 1000), **client_options(settings)
    )
    try:
        existing = set(admin.list_topics())
        retention = {"retention.ms": str(settings.topic_retention_hours * 3_600_000)}
        wanted = [
            NewTopic(name, settings.topic_partitions, settings.topic_replication, topic_configs=retention)
            for name in (settings.topic, settings.dlq_topic)
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker or the init job won the race
                admin.create_topics(wanted, timeout_ms=int(timeout_s * 1000))
        return [topic.name for topic in wanted]
    finally:
        admin.close()
