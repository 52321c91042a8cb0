"""The dev tooling's commands of `kern-telemetry` (loaded by name by `pipeline/cli.py`): `dev`, the
embedded stack of `make run`, and `produce`, the load generator (to Kafka, or through an HTTP collector)."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.cli import console
from pipeline.config import Settings


@click.command()
@click.option("--count", "-n", default=100_000, show_default=True, help="Events to produce")
@click.option("--rate", "-r", default=0, show_default=True, help="Events per second (0: as fast as possible)")
@click.option("--invalid-share", default=0.02, show_default=True, help="Share of invalid events")
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--via-collector",
    metavar="URL",
    help="Post the events to the HTTP collector at URL (e.g. "
    "http://127.0.0.1:8081, what `dev` prints) in batches of 100, instead of producing them to Kafka",
)
def produce(count: int, rate: int, invalid_share: float, seed: int, via_collector: str | None) -> None:
    """Produce realistic SDK telemetry events (the load generator)."""
    from devstack.http_load import post
    from devstack.loadgen import EventGenerator
    from pipeline.kafka import produce as send

    settings = Settings.load()
    generator = EventGenerator(seed=seed, invalid_share=invalid_share)
    with Progress(
        TextColumn("posting" if via_collector else "producing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.speed} ev/s"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("produce", total=count)
        if via_collector:
            counts = post(
                via_collector,
                generator.events(count),
                max_event_bytes=settings.max_event_bytes,
                rate=rate,
                progress=lambda n: progress.advance(task, n),
            )
        else:
            ends = send(settings, generator.events(count), rate=rate, progress=lambda n: progress.advance(task, n))
    if via_collector:
        console.print(
            f"posted to {via_collector}: {counts['accepted']:,} accepted, {counts['failed']:,} refused or "
            f"unanswered, {counts['skipped']:,} not sent (empty or larger than KERN_MAX_EVENT_BYTES: an SDK "
            f"client drops those itself)" + (", then told to stop sending" if counts["stopped"] else "")
        )
    else:
        console.print(f"produced {sum(ends.values()):,} records to {settings.topic} (partition end offsets {ends})")


@click.command()
@click.option("--rate", "-r", default=2_000, show_default=True, help="Load generator events per second")
@click.option("--port", default=9092, show_default=True, help="Broker port (a free one if taken)")
@click.option("--clickhouse-port", default=8123, show_default=True, help="ClickHouse HTTP port (a free one if taken)")
@click.option("--refresh", default=10.0, show_default=True, help="Seconds between dashboard refreshes")
@click.option(
    "--page-port", default=8090, show_default=True, help="Port of the page of live charts (a free one if taken)"
)
@click.option(
    "--collector-port", default=8081, show_default=True, help="Port of the HTTP collector (a free one if taken)"
)
def dev(rate: int, port: int, clickhouse_port: int, refresh: float, page_port: int, collector_port: int) -> None:
    """Everything embedded: Tansu broker, chDB, topics, schema, worker, load generator, dashboard, and a
    page of live charts on loopback; an HTTP collector in its own process that `produce --via-collector`
    can post through.

    chDB runs behind ClickHouse's HTTP interface in its own process, so `kern-telemetry query` (with the
    printed KERN_CLICKHOUSE_DSN) works while this runs. The broker keeps its log in memory, so ClickHouse
    starts empty too: a ledger that describes a log the broker no longer has would be a new log to the
    worker, and the previous run's data is moved to `<path>.previous`."""
    from devstack.broker import EmbeddedBroker
    from devstack.chdb_server import ChdbServerProcess
    from devstack.dashboard import DevDashboard
    from devstack.page import PageServer
    from devstack.processes import CollectorProcess, ensure_port_free, free_port
    from pipeline.app import create_app, run, start_with
    from pipeline.kafka import create_topics

    settings = Settings.load()
    if not settings.embedded_clickhouse:
        raise click.UsageError("dev runs its own embedded ClickHouse: unset KERN_CLICKHOUSE_DSN or use chdb://")
    started = time.time()
    data = _fresh(Path(settings.clickhouse_dsn.removeprefix("chdb://")))
    with contextlib.ExitStack() as running:
        broker = _first_that_starts(EmbeddedBroker(port=port), EmbeddedBroker(port=free_port()))
        running.callback(broker.stop)
        clickhouse = _first_that_starts(*(ChdbServerProcess(str(data), port=p) for p in (clickhouse_port, free_port())))
        running.callback(clickhouse.stop)
        settings = Settings.load(
            bootstrap_servers=broker.bootstrap_servers,
            clickhouse_dsn=clickhouse.url,
            hash_secret=settings.hash_secret or _dev_secret(),
        )
        create_topics(settings)
        console.print(
            f"[bold]embedded stack[/bold]: broker {broker.bootstrap_servers}, ClickHouse {clickhouse.url} "
            f"(data in {clickhouse.path}), topic {settings.topic}, "
            f"health http://{settings.web_host}:{settings.web_port}/health\n"
            f"query it meanwhile: KERN_CLICKHOUSE_DSN={clickhouse.url} kern-telemetry query --report quality"
        )
        collector_env = {"KERN_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "KERN_TOPIC": settings.topic}
        collector = _first_that_starts(
            *(
                CollectorProcess(collector_env, Path(".kern").absolute(), web_port=p)
                for p in (collector_port, free_port())
            )
        )
        running.callback(collector.stop)
        console.print(
            f"[bold]collector[/bold]: POST {collector.url}/v1/events (log {collector.log_path}); load "
            f"through it: kern-telemetry produce --via-collector {collector.url}"
        )
        app = create_app(settings)
        try:
            ensure_port_free("127.0.0.1", page_port)
        except OSError:
            page_port = free_port()
        access_log = Path(".kern/page-access.log").absolute()
        page = PageServer(
            settings,
            "127.0.0.1",
            page_port,
            data_since_s=started,
            access_log=access_log,
            loop=app.loop,
            beacon=app.beacon,
        )
        console.print(f"[bold]page[/bold]: {page.url} (every panel, live; access log {access_log})")
        start_with(app, page)
        start_with(
            app, DevDashboard(settings, rate=rate, refresh=refresh, console=console, loop=app.loop, beacon=app.beacon)
        )
        run(app, settings.log_level)


def _fresh(path: Path) -> Path:
    """An empty data directory at `path`; what a previous run left there moves to `<path>.previous`."""
    if path.exists():
        previous = path.with_name(path.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        path.rename(previous)
        console.print(
            f"ClickHouse starts empty with the broker (its log is in memory): the previous run's data is in {previous}"
        )
    return path


def _dev_secret() -> str:
    """The embedded stack's hash secret, made once and kept in .kern/ (a production deployment sets
    KERN_HASH_SECRET, the same for every worker)."""
    import secrets
    from pathlib import Path

    path = Path(".kern/hash-secret")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _first_that_starts(*services):
    """The first of `services` whose start() succeeds (e.g. the preferred port, then a free one)."""
    for service in services[:-1]:
        try:
            return service.start()
        except (TimeoutError, RuntimeError, OSError):
            continue
    return services[-1].start()
