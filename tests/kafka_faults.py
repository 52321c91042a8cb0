"""A Kafka-protocol proxy in front of Tansu that plays what Tansu cannot: retention and a broker that
answers fetches with nothing; and a record batch whose CRC does not match its bytes (`produce_corrupt_batch`).

Tansu keeps every record of its memory log (it applies no `retention.ms`) and drops the connection on
DeleteRecords (measured: `kafka-python`'s and librdkafka's `delete_records` both end in a reset
connection), so no test could make records expire before a worker consumed them. This proxy forwards
every request to the real broker and edits only two answers, for the request versions the worker's
aiokafka speaks (ListOffsets v0-v5, Fetch v0-v11; anything else passes through untouched):

- `expire_below(topic, partition, offset)`: the log starts at `offset`, as after retention or
  DeleteRecords: ListOffsets for the earliest offset answers it, and a fetch below it answers
  OFFSET_OUT_OF_RANGE without records, as a Kafka broker does;
- `starve(topic, partition)`: fetches of the partition answer no records (with the real high watermark),
  a broker that stalls a consumer while its log grows.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from aiokafka.protocol import fetch, offset
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from devstack.processes import free_port

_FETCH, _LIST_OFFSETS = 1, 2
_EARLIEST = -2
_OFFSET_OUT_OF_RANGE = 1
_MODULES = {
    _FETCH: (fetch, "FetchRequest_v{}", "FetchResponse_v{}"),
    _LIST_OFFSETS: (offset, "OffsetRequest_v{}", "OffsetResponse_v{}"),
}


def _classes(api_key: int, version: int):
    module, request, response = _MODULES[api_key]
    return getattr(module, request.format(version), None), getattr(module, response.format(version), None)


def _fetch_offset(version: int, partition: tuple) -> int:
    """The fetch offset of a request's partition entry: (partition, [leader epoch (v9+)], offset, ...)."""
    return partition[2] if version >= 9 else partition[1]


def _read_frame(sock: socket.socket) -> bytes | None:
    header = _read_exactly(sock, 4)
    if header is None:
        return None
    return _read_exactly(sock, struct.unpack(">i", header)[0])


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def produce_corrupt_batch(bootstrap_servers: str, topic: str, partition: int, values: list[bytes], ms: int) -> int:
    """Send one record batch of `values` whose bytes no longer match its CRC-32C (one bit of its records
    flipped) in a raw Produce request: a producer's client would refuse it, Tansu stores it as it is.
    Returns the batch's first offset."""
    import asyncio

    from aiokafka import TopicPartition
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.produce import ProduceRequest

    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, batch_size=1 << 20)
    for i, value in enumerate(values):
        builder.append(i, timestamp=ms, key=None, value=value, headers=[])
    batch = bytearray(builder.build())
    batch[-1] ^= 1  # in the last record's bytes, which the CRC covers

    async def send() -> int:
        client = AIOKafkaClient(bootstrap_servers=bootstrap_servers)
        await client.bootstrap()
        try:
            await client._metadata_update(client.cluster, [topic])
            leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            request = ProduceRequest(None, -1, 10_000, [(topic, [(partition, bytes(batch))])])
            response = await client.send(leader, request)
        finally:
            await client.close()
        (_, ((_, error_code, first_offset, *_),)), *_ = response.topics
        assert error_code == 0, f"the broker refused the batch: error {error_code}"
        return first_offset

    return asyncio.run(send())


class KafkaFaultProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.log_starts: dict[tuple[str, int], int] = {}
        self.starved: set[tuple[str, int]] = set()
        self.listener: socket.socket | None = None
        self.sockets: list[socket.socket] = []

    def expire_below(self, topic: str, partition: int, offset: int) -> None:
        self.log_starts[(topic, partition)] = offset

    def starve(self, topic: str, partition: int) -> None:
        self.starved.add((topic, partition))

    def start(self) -> KafkaFaultProxy:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            asked: dict[int, tuple] = {}  # correlation id -> what the edited answer needs
            threading.Thread(target=self._requests, args=(client, upstream, asked), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, asked), daemon=True).start()

    def _requests(self, source: socket.socket, sink: socket.socket, asked: dict) -> None:
        with contextlib.suppress(OSError):
            while (frame := _read_frame(source)) is not None:
                api_key, version, correlation = struct.unpack(">hhi", frame[:8])
                if api_key in _MODULES and (classes := _classes(api_key, version))[0] is not None:
                    client_id_length = struct.unpack(">h", frame[8:10])[0]
                    body = frame[10 + max(client_id_length, 0) :]
                    asked[correlation] = (api_key, version, classes[1], classes[0].decode(body))
                sink.sendall(struct.pack(">i", len(frame)) + frame)

    def _responses(self, source: socket.socket, sink: socket.socket, asked: dict) -> None:
        with contextlib.suppress(OSError):
            while (frame := _read_frame(source)) is not None:
                correlation = struct.unpack(">i", frame[:4])[0]
                if (request := asked.pop(correlation, None)) is not None and request[2] is not None:
                    frame = frame[:4] + self._edit(*request, frame[4:])
                sink.sendall(struct.pack(">i", len(frame)) + frame)

    def _edit(self, api_key: int, version: int, response_class, request, body: bytes) -> bytes:
        response = response_class.decode(body)
        if api_key == _LIST_OFFSETS and version == 0:  # offsets as arrays: aiokafka asks v1 and later
            return body
        if api_key == _LIST_OFFSETS:
            earliest = {(topic, p[0]) for topic, partitions in request.topics for p in partitions if p[-1] == _EARLIEST}
            response.topics = [
                (topic, [self._earliest(topic, p) if (topic, p[0]) in earliest else p for p in partitions])
                for topic, partitions in response.topics
            ]
        else:
            offsets = {
                (topic, p[0]): _fetch_offset(version, p) for topic, partitions in request.topics for p in partitions
            }
            response.topics = [
                (topic, [self._fetched(topic, p, offsets.get((topic, p[0]), 0)) for p in partitions])
                for topic, partitions in response.topics
            ]
        return response.encode()

    def _earliest(self, topic: str, answer: tuple) -> tuple:
        """(partition, error, timestamp, offset, ...) with the offset raised to the log start."""
        start = self.log_starts.get((topic, answer[0]))
        return answer if start is None else (*answer[:3], max(answer[3], start), *answer[4:])

    def _fetched(self, topic: str, answer: tuple, fetch_offset: int) -> tuple:
        """(partition, error, high watermark, ..., records): out of range below the log start, empty if starved."""
        start = self.log_starts.get((topic, answer[0]))
        if start is not None and fetch_offset < start:
            return (answer[0], _OFFSET_OUT_OF_RANGE, *answer[2:-1], b"")
        if (topic, answer[0]) in self.starved:
            return (*answer[:-1], b"")
        return answer
