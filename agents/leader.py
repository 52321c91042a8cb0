"""What the consumer API does not tell, asked of the broker directly: a partition's raw record batches
from an offset, with the leader's high watermark and log start (`agents/poison.py` looks for the batch it
cannot decode, `agents/logs.py` for a recorded record), and a topic's id (`agents/logs.py`)."""

from __future__ import annotations

import threading
import uuid
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from pipeline.config import Settings
from pipeline.kafka import client_options

_READ_UNCOMMITTED = 0  # what the agent's consumer reads
_MAX_WAIT_MS = 500  # a broker may answer a fetch that may not wait (0) with nothing at all (Tansu does)
_NO_ID = str(uuid.UUID(int=0))  # what a broker without topic ids answers


class RawFetch(NamedTuple):
    error_code: int  # 0, or Kafka's error code (1: the offset is out of the log's range)
    high_watermark: int
    log_start: int  # -1 when the broker does not say (Fetch before v5)
    records: MemoryRecords | None


async def fetch_raw(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, max_bytes: int) -> RawFetch | None:
    """One fetch of `tp` from `offset` on the consumer's own connections (same brokers, TLS and SASL);
    None when the partition has no leader now."""
    client = consumer._client
    node_id = client.cluster.leader_for_partition(tp)
    if node_id is None or node_id < 0:
        return None
    request = FetchRequest(
        _MAX_WAIT_MS, 1, max_bytes, _READ_UNCOMMITTED, [(tp.topic, [(tp.partition, offset, max_bytes)])]
    )
    response = await client.send(node_id, request)
    for _, partitions in response.topics:
        for partition, error_code, high_watermark, *rest in partitions:
            if partition == tp.partition:
                # v4: lso, aborted, records; v5-v10: lso, log start, aborted, records; v11: ..., replica, records
                log_start = rest[1] if len(rest) >= 4 else -1
                return RawFetch(
                    error_code, high_watermark, log_start, MemoryRecords(rest[-1]) if error_code == 0 else None
                )
    return None


class TopicIds:
    """The broker's id of a topic ('' when the broker gives none or the topic does not exist), through one
    kafka-python admin client kept open (aiokafka's Metadata stops before topic ids). Blocking, one call at
    a time: run it in a thread."""

    def __init__(self, settings: Settings, timeout_s: float):
        self.settings = settings
        self.timeout_s = timeout_s
        self._admin: Any = None  # kafka-python's (no type hints), opened on the first call
        self._lock = threading.Lock()

    def __call__(self, topic: str) -> str:
        from kafka.admin import KafkaAdminClient

        with self._lock:
            if self._admin is None:
                self._admin = KafkaAdminClient(
                    client_id="kern-telemetry-logs",
                    request_timeout_ms=int(self.timeout_s * 1000),
                    **client_options(self.settings),
                )
            try:
                described = self._admin.describe_topics([topic])
            except Exception:
                self._close()
                raise
        found = next(
            (str(d.get("topic_id") or "") for d in described if d.get("name") == topic and not d.get("error_code")), ""
        )
        return "" if found == _NO_ID else found

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._admin is not None:
            admin, self._admin = self._admin, None
            admin.close()
