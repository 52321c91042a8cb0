"""aiokafka's responses assembled straight from the socket's chunks in the worker's process
(`pipeline/kafka.py` `_frames_from_chunks`): any responses split anywhere come out whole and in order, the
end of the connection ends the reading as asyncio's reader ended it, and the worker's consumer and producer
run on it against the broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka import conn as aiokafka_conn
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import Settings
from pipeline.kafka import fetched_records, records_in_place, worker_consumer


def frame_protocol():
    async def made():
        worker_consumer(Settings(bootstrap_servers="127.0.0.1:9"))  # installs it; connects only on start
        loop = asyncio.get_running_loop()
        return aiokafka_conn.AIOKafkaProtocol(loop.create_future(), asyncio.StreamReader(), loop=loop)

    return made


def framed(responses: list[bytes]) -> bytes:
    return b"".join(len(r).to_bytes(4, "big") + r for r in responses)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=600), max_size=8), st.lists(st.integers(1, 700), max_size=40))
def test_responses_split_anywhere_come_out_whole_and_in_order(responses, cuts) -> None:
    async def run() -> None:
        protocol = await frame_protocol()()
        stream, at = framed(responses), 0
        for cut in cuts:
            protocol.data_received(stream[at : at + cut])
            at += cut
        protocol.data_received(stream[at:])
        assert [await protocol.frame() for _ in responses] == responses
        protocol.connection_lost(None)
        with pytest.raises(asyncio.IncompleteReadError):
            await protocol.frame()

    asyncio.run(run())


def test_a_reader_waits_for_the_rest_and_an_impossible_size_ends_the_connection() -> None:
    async def run() -> None:
        protocol = await frame_protocol()()
        waiting = asyncio.ensure_future(protocol.frame())
        protocol.data_received(framed([b"x" * 1000])[:600])
        await asyncio.sleep(0)
        assert not waiting.done()
        protocol.data_received(framed([b"x" * 1000])[600:] + framed([b"second"]) + (-5).to_bytes(4, "big", signed=True))
        assert await waiting == b"x" * 1000
        assert await protocol.frame() == b"second"
        with pytest.raises(EOFError, match="-5 bytes"):
            await protocol.frame()

    asyncio.run(run())


def test_the_worker_consumer_and_a_producer_run_on_it_against_the_broker(broker) -> None:
    """Records of several fetches (some larger than a socket's chunk) produced and consumed in place."""
    topic = f"frames.{uuid.uuid4().hex[:8]}"
    values = [b"%06d" % i + b"x" * (i % 3000) for i in range(3_000)]

    async def run() -> list[bytes]:
        consumer = worker_consumer(Settings(bootstrap_servers=broker.bootstrap_servers, consumer_group=topic))
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, max_request_size=16 << 20)
        await producer.start()
        try:
            for value in values:
                await producer.send(topic, value, partition=0)
            await producer.flush()
            await consumer.start()
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.seek_to_beginning()
            got: list[bytes] = []
            for _ in range(300):
                with records_in_place():
                    batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    got += [record.value for record in fetched_records(records)]
                if len(got) >= len(values):
                    break
            client_protocols = {type(c._protocol) for c in consumer._client._conns.values()}
            assert client_protocols == {aiokafka_conn.AIOKafkaProtocol}
            assert aiokafka_conn.AIOKafkaProtocol.__name__ == "FrameProtocol"
            return got
        finally:
            await consumer.stop()
            await producer.stop()

    assert asyncio.run(run()) == values
