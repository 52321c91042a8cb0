"""The `dev` command's terminal dashboard: runs the load generator and prints a few panels (the last two
minutes) as they land. The page (`devstack/page.py`) charts them all."""

from __future__ import annotations

import asyncio
import threading

import mode
from rich.console import Console

from devstack.loadgen import EventGenerator
from pipeline.clickhouse import connect
from pipeline.config import Settings
from pipeline.kafka import produce
from pipeline.panels import BY_NAME
from pipeline.render import table

PRINTED_PANELS = ("runs-per-kind", "feature-combos", "quality")
PRINTED_RANGE_S = 120


class DevDashboard(mode.Service):
    def __init__(self, settings: Settings, rate: int, refresh: float, console: Console, **kwargs):
        super().__init__(**kwargs)
        self.settings = settings
        self.rate = rate
        self.refresh = refresh
        self.console = console
        self._stop_producing = threading.Event()

    @mode.Service.task
    async def _produce(self) -> None:
        endless = iter(EventGenerator(invalid_share=0.02).event, None)
        await asyncio.to_thread(produce, self.settings, endless, rate=self.rate, stop=self._stop_producing)

    @mode.Service.task
    async def _show(self) -> None:
        client = await asyncio.to_thread(connect, self.settings)
        while not self.should_stop:
            await self.sleep(self.refresh)
            for panel in (BY_NAME[name] for name in PRINTED_PANELS):
                sql = panel.plain(self.settings.clickhouse_database, PRINTED_RANGE_S)
                result = await asyncio.to_thread(client.query, sql)
                self.console.print(table(panel.title, result.column_names, result.result_rows))

    async def on_stop(self) -> None:
        self._stop_producing.set()
