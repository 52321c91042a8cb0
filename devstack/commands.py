"""The dev tooling's commands of `kern-telemetry` (loaded by name by `pipeline/cli.py`): `dev`, the
embedded stack of `make run`, and `produce`, the load generator."""

from __future__ import annotations

import contextlib

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.cli import console
from pipeline.config import Settings


@click.command()
@click.option("--count", "-n", default=100_000, show_default=True, help="Events to produce")
@click.option("--rate", "-r", default=0, show_default=True, help="Events per second (0: as fast as possible)")
@click.option("--invalid-share", default=0.02, show_default=True, help="Share of invalid events")
@click.option("--seed", default=7, show_default=True)
def produce(count: int, rate: int, invalid_share: float, seed: int) -> None:
    """Produce realistic SDK telemetry events (the load generator)."""
    from devstack.loadgen import EventGenerator
    from pipeline.kafka import produce as send

    settings = Settings.load()
    generator = EventGenerator(seed=seed, invalid_share=invalid_share)
    with Progress(TextColumn("producing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.speed} ev/s"),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("produce", total=count)
        ends = send(settings, generator.events(count), rate=rate, progress=lambda n: progress.advance(task, n))
    console.print(f"produced {sum(ends.values()):,} records to {settings.topic} (partition end offsets {ends})")


@click.command()
@click.option("--rate", "-r", default=2_000, show_default=True, help="Load generator events per second")
@click.option("--port", default=9092, show_default=True, help="Broker port (a free one if taken)")
@click.option("--clickhouse-port", default=8123, show_default=True, help="ClickHouse HTTP port (a free one if taken)")
@click.option("--refresh", default=10.0, show_default=True, help="Seconds between dashboard refreshes")
@click.option("--page-port", default=8090, show_default=True, help="Port of the page of live charts (a free one if "
              "taken)")
def dev(rate: int, port: int, clickhouse_port: int, refresh: float, page_port: int) -> None:
    """Everything embedded: Tansu broker, chDB, topics, schema, worker, load generator, dashboard, and a
    page of live charts on loopback.

    chDB runs behind ClickHouse's HTTP interface in its own process, so `kern-telemetry query` (with the
    printed KERN_CLICKHOUSE_DSN) works while this runs."""
    from devstack.broker import EmbeddedBroker
    from devstack.chdb_server import ChdbServerProcess
    from devstack.dashboard import DevDashboard
    from devstack.page import PageServer
    from devstack.processes import ensure_port_free, free_port
    from pipeline.app import create_app, run
    from pipeline.kafka import create_topics

    settings = Settings.load()
    if not settings.embedded_clickhouse:
        raise click.UsageError("dev runs its own embedded ClickHouse: unset KERN_CLICKHOUSE_DSN or use chdb://")
    with contextlib.ExitStack() as running:
        broker = _first_that_starts(EmbeddedBroker(port=port), EmbeddedBroker(port=free_port()))
        running.callback(broker.stop)
        clickhouse = _first_that_starts(*(ChdbServerProcess(settings.clickhouse_dsn.removeprefix("chdb://"), port=p)
                                          for p in (clickhouse_port, free_port())))
        running.callback(clickhouse.stop)
        settings = Settings.load(bootstrap_servers=broker.bootstrap_servers, clickhouse_dsn=clickhouse.url)
        create_topics(settings)
        console.print(f"[bold]embedded stack[/bold]: broker {broker.bootstrap_servers}, ClickHouse {clickhouse.url} "
                      f"(data in {clickhouse.path}), topic {settings.topic}, "
                      f"health http://{settings.web_host}:{settings.web_port}/health\n"
                      f"query it meanwhile: KERN_CLICKHOUSE_DSN={clickhouse.url} kern-telemetry query --report quality")
        app = create_app(settings)
        try:
            ensure_port_free("127.0.0.1", page_port)
        except OSError:
            page_port = free_port()
        page = PageServer(settings, "127.0.0.1", page_port, loop=app.loop, beacon=app.beacon)
        console.print(f"[bold]page[/bold]: {page.url} (every panel, live)")
        app.service(page)
        app.service(DevDashboard(settings, rate=rate, refresh=refresh, console=console, loop=app.loop,
                                 beacon=app.beacon))
        run(app)


def _first_that_starts(*services):
    """The first of `services` whose start() succeeds (e.g. the preferred port, then a free one)."""
    for service in services[:-1]:
        try:
            return service.start()
        except (TimeoutError, RuntimeError, OSError):
            continue
    return services[-1].start()
