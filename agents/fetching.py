"""Fetching batches from the worker's Kafka consumer, and what a failed fetch costs.

aiokafka's `getmany` raises for a whole fetch when one batch cannot be decoded, after moving the positions
of the partitions it had already drained: their records are gone. So after any failed fetch every
partition is sought back to its cursor and drained one at a time; a partition whose own fetch fails goes
to quarantine (`agents/quarantine.py`), the others go on. A position out of the log's range (the
consumer never resets it by itself) goes to the agent, which judges the partition's log again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError

from agents.partitions import Partitions
from agents.quarantine import Quarantine
from agents.retry import first_line
from pipeline.health import Health
from pipeline.kafka import records_in_place

_ISOLATION_WAIT_MS = 1000  # per partition, when finding which one a failed fetch came from
_FETCHER_TURNS = 4


class Fetcher:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        partitions: Partitions,
        quarantine: Quarantine,
        health: Health,
        out_of_range: Callable[[TopicPartition], Awaitable[None]],
    ):
        self.consumer = consumer
        self.partitions = partitions
        self.quarantine = quarantine
        self.health = health
        self.out_of_range = out_of_range

    async def fetch(self) -> dict:
        """The next batches (each partition's records read in place, `pipeline.kafka.records_in_place`; a list
        of aiokafka's after a failed fetch: `fetched_records` gives either). Empty when an assignment
        completed after `getmany` returned them: every partition was sought again, so they are stale
        (aiokafka itself drops what an assignment made stale before it returns)."""
        try:
            with records_in_place():
                batches = await self.consumer.getmany(timeout_ms=100)
        except OffsetOutOfRangeError as exc:
            await self._judge_logs(exc)
            return {}
        except NoOffsetForPartitionError:  # looked for a position before the assignment's seeks: seek again
            for state in self.partitions:
                state.seek(self.consumer)
            return {}
        except Exception as exc:  # noqa: BLE001 - a batch aiokafka could not decode, or a fetch error
            generation = self.partitions.generation
            batches = await self._after_error(exc)
        else:
            if not batches:
                return batches
            generation = self.partitions.generation
            await _let_the_fetcher_run()
        return batches if generation == self.partitions.generation else {}

    async def _after_error(self, error: Exception) -> dict:
        """Seek every partition back to its cursor, then drain them one at a time; a partition whose own
        fetch raises is examined and, with a bad batch found, paused before it."""
        self.health.metrics.fetch_errors.inc()
        for state in self.partitions:
            state.seek(self.consumer)
        batches, poisoned = {}, False
        for state in self.partitions:
            if state.poison is not None or self.partitions.paused:
                continue
            try:
                batches.update(await self.consumer.getmany(state.tp, timeout_ms=_ISOLATION_WAIT_MS))
            except OffsetOutOfRangeError as exc:
                await self._judge_logs(exc)
            except Exception as exc:  # noqa: BLE001 - this partition's own fetch failed
                if records := await self.quarantine.examine(state, exc):
                    batches[state.tp] = records
                poisoned = poisoned or state.poison is not None
        if not poisoned:
            self.health.degrade("kafka", f"fetch failed: {type(error).__name__}: {first_line(error)}")
            await asyncio.sleep(1)
        return batches

    async def _judge_logs(self, error: OffsetOutOfRangeError) -> None:
        for tp in error.args[0] if error.args and isinstance(error.args[0], dict) else ():
            try:
                await self.out_of_range(tp)
            except Exception as exc:  # noqa: BLE001 - the broker did not answer: the next fetch asks again
                self.health.degrade(
                    "kafka",
                    f"partition {tp.partition} out of range, its log not readable: "
                    f"{type(exc).__name__}: {first_line(exc)}",
                )
                await asyncio.sleep(1)


async def _let_the_fetcher_run() -> None:
    """Give aiokafka's fetch task the few event-loop turns it needs (wake-up, task start, send) to ask
    the broker for the partitions `getmany` just emptied, so the broker prepares the next batch while
    this one is folded. Folding first left the broker idle for ~10% of a backlog drain."""
    for _ in range(_FETCHER_TURNS):
        await asyncio.sleep(0)


class RebalanceListener(ConsumerRebalanceListener):
    """aiokafka's rebalance callbacks, forwarded to the agent."""

    def __init__(self, on_revoked, on_assigned):
        self._on_revoked, self._on_assigned = on_revoked, on_assigned

    async def on_partitions_revoked(self, revoked):
        await self._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned):
        await self._on_assigned(set(assigned))
