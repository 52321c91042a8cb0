"""The one thread that owns the worker's ClickHouse client: clickhouse-connect clients are not
thread-safe and block, so every call runs there, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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


def open_sink(settings: Settings) -> ClickHouseSink:
    """Connect, bring the schema up to date, and return the sink (runs on the ClickHouse thread)."""
    opts = SchemaOptions.from_settings(settings)
    client = connect(settings)
    migrate(client, opts)
    return ClickHouseSink(client, opts)
