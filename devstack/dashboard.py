"""The `dev` command's dashboard: runs the load generator and prints the aggregates as they land."""

from __future__ import annotations

import asyncio
import threading

import mode
from rich.console import Console

from devstack.loadgen import EventGenerator
from pipeline.cli import result_table
from pipeline.clickhouse import connect
from pipeline.config import Settings
from pipeline.kafka import produce
from pipeline.reports import REPORTS, report_sql

DASHBOARD_REPORTS = ("last-minutes", "feature-combos-by-model", "quality")


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
            for name in DASHBOARD_REPORTS:
                result = await asyncio.to_thread(client.query, report_sql(name, self.settings.clickhouse_database))
                self.console.print(result_table(REPORTS[name][0], result.column_names, result.result_rows))

    async def on_stop(self) -> None:
        self._stop_producing.set()
