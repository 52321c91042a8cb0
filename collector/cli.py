"""`kern-telemetry collect` (loaded by name by `pipeline/cli.py`; aiohttp and aiokafka load only when it runs)."""

from __future__ import annotations

import click


@click.command()
def collect() -> None:
    """The HTTP collector: SDKs POST event batches to /v1/events, it produces them to the events topic.
    Configuration: KERN_COLLECTOR_* and the Kafka KERN_* variables (see README, "The HTTP collector")."""
    from collector.app import run
    from collector.settings import CollectorSettings
    from pipeline.config import Settings

    run(CollectorSettings.load(), Settings.load())
