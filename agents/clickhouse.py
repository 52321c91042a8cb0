"""The one thread that owns the worker's ClickHouse client: clickhouse-connect clients are not
thread-safe and block, so every call runs there, off the event loop. A flush's inserts also run on the
lanes (`Lanes`): more clients, each on a thread of its own while the ClickHouse thread waits."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.clickhouse import connect
from pipeline.config import Settings
from pipeline.sink import ClickHouseSink
from tables.ddl import SchemaOptions
from tables.migrate import migrate


class ClickHouseThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")

    async def call(self, function: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


class Lanes:
    """Sinks of their own clients for the inserts of one flush that nothing orders among themselves (each
    rollup of a batch, of distinct partitions; each sketch table), run at once: a flush then takes about
    its longest lane rather than the sum of its inserts, since ClickHouse spends most of an insert's time
    making its parts (one per table and view). Each sink serves one call at a time. With one sink the calls
    run in the caller's thread, in order."""

    def __init__(self, sinks: Sequence[ClickHouseSink]):
        self._idle: queue.SimpleQueue[ClickHouseSink] = queue.SimpleQueue()
        for sink in sinks:
            self._idle.put(sink)
        self._executor = ThreadPoolExecutor(len(sinks), "clickhouse-lane") if len(sinks) > 1 else None

    def each(self, calls: Sequence[Callable[[ClickHouseSink], None]]) -> None:
        """Each call with a sink, as many at once as there are sinks. Once a call fails no other starts
        (ClickHouse may be away: no need to wait for every timeout), the running ones finish, and the first
        failure is raised."""
        failures: list[Exception] = []

        def run(call: Callable[[ClickHouseSink], None]) -> None:
            if failures:
                return
            sink = self._idle.get()
            try:
                call(sink)
            except Exception as exc:  # noqa: BLE001 - raised below, once every running call has finished
                failures.append(exc)
            finally:
                self._idle.put(sink)

        if self._executor is None or len(calls) < 2:
            for call in calls:
                run(call)
        else:
            list(self._executor.map(run, calls))
        if failures:
            raise failures[0]

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def open_sink(settings: Settings) -> ClickHouseSink:
    """Connect, bring the schema up to date, and return the sink (runs on the ClickHouse thread)."""
    opts = SchemaOptions.from_settings(settings)
    client = connect(settings)
    migrate(client, opts)
    return ClickHouseSink(client, opts)


def open_lanes(settings: Settings, sink: ClickHouseSink) -> Lanes:
    """`sink` and `KERN_CLICKHOUSE_INSERT_LANES` - 1 sinks of their own clients (runs on the ClickHouse thread)."""
    more = settings.clickhouse_insert_lanes - 1
    return Lanes([sink, *(ClickHouseSink(connect(settings), sink.opts) for _ in range(more))])
