"""The Faust application: the worker process that hosts the rollup agent and its web endpoints.

Faust's own Kafka consumer is switched off (`enable_kafka=False`); the rollup agent consumes in
batches itself (see `agents/rollup.py`). Faust still runs the worker: service supervision, signal
handling (SIGTERM stops the agent gracefully), logging, and the web server for `/health` and `/metrics`,
bound to loopback unless `KERN_WEB_HOST` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import faust
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
    app.rollup_agent = RollupAgent(settings, health=health, loop=app.loop, beacon=app.beacon)
    app.service(app.rollup_agent)

    @app.page("/health")
    async def health_view(web, request):
        return web.json(health.report(), status=200 if health.ok else 503)

    @app.page("/metrics")
    async def metrics_view(web, request):
        return web.bytes(health.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    return app


def run(app: faust.App) -> None:
    """Run the worker in this process until SIGTERM or SIGINT (then it flushes and exits)."""
    settings = app.rollup_agent.settings
    faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False).execute_from_commandline()
