"""The builder of the hourly and daily grains (`pipeline/grains.py`): the one writer of those tables in a
consumer group, the worker that owns partition 0.

It has a ClickHouse client and a thread of its own, so that a build never waits for a flush (which holds
the ClickHouse thread for its whole write) nor a flush for a build. Every pass, the frequent build and the
audit's settling, runs on that one thread, one at a time; when partition 0 is revoked, the revocation
waits for a pass in progress, so that the partition's next owner never builds beside it (two builders
would both add the same shortfall)."""

from __future__ import annotations

import time
from collections.abc import Callable

from clickhouse_connect.driver.client import Client

from agents.clickhouse import ClickHouseThread
from pipeline import grains
from pipeline.clickhouse import connect
from pipeline.config import Settings
from pipeline.health import Health
from tables.ddl import SchemaOptions

BUILDER_PARTITION = 0


class GrainBuilder:
    def __init__(self, settings: Settings, opts: SchemaOptions, health: Health, builds: Callable[[], bool]):
        self.settings = settings
        self.opts = opts
        self.health = health
        self._builds = builds  # whether this worker owns BUILDER_PARTITION now
        self._thread = ClickHouseThread()
        self._client: Client | None = None

    async def build(self) -> None:
        """Top every coarse grain up to its source over the periods live records reach; a failure degrades
        `grains unbuilt` until a build succeeds."""
        if not self._builds():
            self.health.grains_built(None)  # not this worker's to build (any more): nothing it failed at
            return
        try:
            await self._thread.call(self._build)
        except Exception as exc:  # noqa: BLE001 - reported, and the next pass tries again
            self.health.grains_built(exc)
        else:
            self.health.grains_built(None)

    async def settle(self, horizon_s: int) -> list[grains.Disagreement]:
        """The audit's pass: settle the closed periods within `horizon_s`; what still disagrees (raises
        what ClickHouse raised). Nothing on a worker that does not build."""
        return await self._thread.call(self._settle, horizon_s) if self._builds() else []

    async def drain(self) -> None:
        """Return once the pass in progress, if any, has ended."""
        await self._thread.call(lambda: None)

    def shutdown(self) -> None:
        self._thread.shutdown()

    def _build(self) -> None:
        if self._builds():  # still, once the thread takes the pass
            grains.build(self._connected(), self.opts, self.settings.allowed_lateness_seconds, time.time())

    def _settle(self, horizon_s: int) -> list[grains.Disagreement]:
        if not self._builds():
            return []
        lateness = self.settings.allowed_lateness_seconds
        return grains.check_all(self._connected(), self.opts, lateness, time.time(), False, horizon_s, settling=True)

    def _connected(self) -> Client:
        if self._client is None:
            self._client = connect(self.settings)
        return self._client
