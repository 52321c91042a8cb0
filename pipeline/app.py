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
    health = Health()
    app.rollup_agent = RollupAgent(settings, health=health, loop=app.loop, beacon=app.beacon)
    app.service(app.rollup_agent)

    @app.page("/health")
    async def health_view(web, request):
        report = health.report()
        return web.json(report, status=200 if health.ok else 503)

    @app.page("/metrics")
    async def metrics_view(web, request):
        return web.text(health.prometheus(), content_type="text/plain; version=0.0.4")

    app.health = health
    return app
