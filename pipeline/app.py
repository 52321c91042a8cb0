"""The Faust application: the worker process that hosts the rollup agent and its web endpoints.

Faust's own Kafka consumer is switched off (`enable_kafka=False`); the rollup agent consumes in
batches itself (see `agents/rollup.py`). Faust still runs the worker: service supervision, signal
handling (SIGTERM stops the agent gracefully), logging, and the web server for `/health` and `/metrics`,
bound to loopback unless `KERN_WEB_HOST` says otherwise.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from pathlib import Path

import faust
import mode
from faust.app.base import BootStrategy

from agents.rollup import RollupAgent
from pipeline.config import Settings
from pipeline.health import Health
from pipeline.metrics import CONTENT_TYPE


def create_app(settings: Settings) -> faust.App:
    datadir = Path(".kern/faust").absolute()
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.consumer_group,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        web_enabled=settings.web_port != 0,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        datadir=str(datadir),
        autodiscover=False,
    )
    app.boot_strategy = BootStrategy(app, enable_kafka=False)
    health = Health.from_settings(settings)
    start_with(app, RollupAgent(settings, health=health, loop=app.loop, beacon=app.beacon))

    @app.page("/health")
    async def health_view(web, request):
        return web.json(health.report(), status=200 if health.ok else 503)

    @app.page("/metrics")
    async def metrics_view(web, request):
        return web.bytes(health.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    return app


def start_with(app: faust.App, service: mode.Service) -> None:
    """Start `service` once the app has started (its web server first: `/health` answers while the service
    waits for ClickHouse or the broker), and stop it with the app."""
    app.service(service)  # type: ignore[arg-type]  # annotated for a class; faust starts instances too


#: glibc's `mallopt` parameter for the most arenas its allocator keeps (malloc.h).
_M_ARENA_MAX = -8
#: The main arena (the event loop's thread) and one that the other threads (ClickHouse's, the lanes') share.
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas. By default each thread that allocates gets an arena of its own (up to 8
    per CPU), and each arena keeps its own high-water mark: catching up over HTTP with four ClickHouse
    lanes, two arenas kept the worker's peak RSS near 270 MB where unlimited ones reached 282-289 MB in
    the faster of six alternating rounds (6 December, README "Memory while catching up"); one arena cost
    ~15% more CPU. An operator's `MALLOC_ARENA_MAX` wins; where the C library has no `mallopt` (not
    glibc), nothing changes."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def run(app: faust.App, log_level: str) -> None:
    """Run the worker in this process until SIGTERM or SIGINT (then it flushes and exits)."""
    limit_malloc_arenas()  # before the worker starts its threads
    worker(app, log_level).execute_from_commandline()


_LAST_TURNS_S = 0.1


class Worker(faust.Worker):
    """Faust's worker, closing its loop at once when it stops."""

    async def _sentinel_task(self) -> None:
        """The last turns of the loop before it closes, once every service has stopped and every future is
        gathered: mode sleeps a whole second here, which every stop (a deploy, a test) waited for."""
        await asyncio.sleep(_LAST_TURNS_S)


def worker(app: faust.App, log_level: str) -> faust.Worker:
    """Faust's worker without its terminal spinner: to spin on every log record, the spinner put the root
    logger at DEBUG whatever the level asked, so every debug call of aiokafka and of the worker made a
    record for the handlers to drop (3-4% of the event loop, profiled 7 December)."""
    made = Worker(app, loglevel=log_level, quiet=True, redirect_stdouts=False)
    made.spinner = None
    return made
