"""`kern-telemetry`: run the worker, migrate, produce load, query, or run everything embedded (`dev`)."""

from __future__ import annotations

import contextlib
import threading
import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipeline.config import Settings

console = Console()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Kern telemetry rollup pipeline. Configuration: KERN_* environment variables or .env (see README)."""


@main.command()
def migrate() -> None:
    """Create or upgrade the ClickHouse schema (idempotent)."""
    from pipeline.sink import connect
    from tables.ddl import SchemaOptions
    from tables.migrate import migrate as run_migrations

    settings = Settings.load()
    applied = run_migrations(connect(settings), SchemaOptions.from_settings(settings))
    names = ", ".join(f"{m.version} ({m.name})" for m in applied) or "none: the schema is current"
    console.print(f"ClickHouse {settings.safe_dsn}, database {settings.clickhouse_database}: applied {names}")


@main.command()
def init() -> None:
    """Create the Kafka topics and migrate ClickHouse (the docker-compose init job)."""
    from pipeline.kafka import create_topics

    settings = Settings.load()
    created = create_topics(settings)
    console.print(f"topics created: {', '.join(created) or 'none (they exist)'}")
    migrate.callback()


@main.command()
@click.option("--partition", "-p", type=click.IntRange(min=0), required=True, help="Source partition")
@click.option("--through-offset", type=click.IntRange(min=0), required=True,
              help="Last offset to skip (inclusive): the worker's /health names it for an undecodable batch")
@click.option("--reason", required=True, help="Why these records are given up (kept with the skip)")
@click.option("--topic", help="Source topic (default: KERN_TOPIC)")
def skip(partition: int, through_offset: int, reason: str, topic: str | None) -> None:
    """Give up records that cannot be decoded, so a paused partition resumes.

    The worker that owns the partition applies the request: it flushes what it counted before the skipped
    range, records the range in the ledger (ingest_flushes and ingest_ledger, `skipped` in quality_minute,
    one dead letter with the reason), and continues after it. A crash or a rebalance never consumes the
    range again. Losing nothing is the default: without this command the partition stays paused."""
    from pipeline.sink import ClickHouseSink, connect

    settings = Settings.load()
    topic = topic or settings.topic
    if not reason.strip() or len(reason) > 500:
        raise click.BadParameter("give a reason of at most 500 characters", param_hint="--reason")
    sink = ClickHouseSink(connect(settings), settings.clickhouse_database, distributed=bool(settings.clickhouse_cluster))
    last = sink.last_flush(topic, partition)
    if last is not None and through_offset < last.end_offset:
        raise click.ClickException(f"{topic} partition {partition} is recorded up to offset {last.end_offset - 1}; "
                                   f"offset {through_offset} is behind it: nothing to skip")
    sink.request_skip(topic, partition, through_offset, reason.strip())
    console.print(f"requested: skip {topic} partition {partition} through offset {through_offset}. The worker that "
                  "owns the partition applies it within seconds if it is paused there; its /health then shows the "
                  "partition resumed, and ingest_ledger the skipped offsets.")


@main.command()
def worker() -> None:
    """Run a rollup worker (scale out by running more; Kafka partitions are the unit)."""
    _run_worker(Settings.load())


def _run_worker(settings: Settings, with_dashboard: dict | None = None) -> None:
    import faust

    from pipeline.app import create_app

    app = create_app(settings)
    if with_dashboard is not None:
        from pipeline.dashboard import DevDashboard

        app.service(DevDashboard(settings, app.rollup_agent, console=console, **with_dashboard))
    faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False).execute_from_commandline()


@main.command()
@click.option("--count", "-n", default=100_000, show_default=True, help="Events to produce")
@click.option("--rate", "-r", default=0, show_default=True, help="Events per second (0: as fast as possible)")
@click.option("--invalid-share", default=0.02, show_default=True, help="Share of invalid events")
@click.option("--seed", default=7, show_default=True)
def produce(count: int, rate: int, invalid_share: float, seed: int) -> None:
    """Produce realistic SDK telemetry events (the load generator)."""
    from pipeline.loadgen import EventGenerator

    settings = Settings.load()
    generator = EventGenerator(seed=seed, invalid_share=invalid_share)
    with Progress(TextColumn("producing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.speed} ev/s"),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("produce", total=count)
        sent = produce_events(settings, generator.events(count), rate, lambda n: progress.advance(task, n))
    console.print(f"produced {sent:,} events to {settings.topic}")


def produce_events(settings: Settings, events, rate: int = 0, on_progress=None, stop: threading.Event | None = None) -> int:
    """Send events with kafka-python, optionally paced to `rate` per second; returns the count sent."""
    from kafka import KafkaProducer

    from pipeline.kafka import client_options

    producer = KafkaProducer(linger_ms=20, batch_size=512 * 1024, max_request_size=4 << 20,
                             acks=1, **client_options(settings))
    started = time.monotonic()
    sent = 0
    try:
        for value in events:
            producer.send(settings.topic, value)
            sent += 1
            if sent % 1000 == 0:
                if on_progress:
                    on_progress(1000)
                if stop is not None and stop.is_set():
                    break
                if rate:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        producer.flush()
        if on_progress and sent % 1000:
            on_progress(sent % 1000)
    finally:
        producer.close()
    return sent


@main.command()
@click.argument("sql", required=False)
@click.option("--report", "-r", help="A named report (see --list)")
@click.option("--list", "list_reports", is_flag=True, help="List the named reports")
def query(sql: str | None, report: str | None, list_reports: bool) -> None:
    """Run SQL or a named report against the configured ClickHouse. `{db}` in SQL is the database."""
    from pipeline.reports import REPORTS, report_sql
    from pipeline.sink import connect

    if list_reports or not (sql or report):
        for name, (title, _) in REPORTS.items():
            console.print(f"[bold]{name}[/bold]: {title}")
        return
    settings = Settings.load()
    if report and report not in REPORTS:
        raise click.BadParameter(f"unknown report {report!r}; try --list", param_hint="--report")
    statement = report_sql(report, settings.clickhouse_database) if report else sql.replace("{db}", settings.clickhouse_database)
    try:
        client = connect(settings)
    except Exception as exc:
        if settings.embedded_clickhouse:
            raise click.ClickException(
                f"cannot open the embedded ClickHouse at {settings.safe_dsn}: {exc}. chDB allows one process "
                "per path; stop the worker (or `dev`) using it first.") from exc
        raise
    result = client.query(statement)
    console.print(result_table(REPORTS[report][0] if report else None, result.column_names, result.result_rows))


def result_table(title: str | None, columns, rows) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    return table


@main.command()
@click.option("--rate", "-r", default=2_000, show_default=True, help="Load generator events per second")
@click.option("--port", default=9092, show_default=True, help="Broker port (a free one if taken)")
@click.option("--clickhouse-port", default=8123, show_default=True, help="ClickHouse HTTP port (a free one if taken)")
@click.option("--refresh", default=10.0, show_default=True, help="Seconds between dashboard refreshes")
def dev(rate: int, port: int, clickhouse_port: int, refresh: float) -> None:
    """Everything embedded: Tansu broker, chDB, topics, schema, worker, load generator, dashboard.

    chDB runs behind ClickHouse's HTTP interface in its own process, so `kern-telemetry query` (with the
    printed KERN_CLICKHOUSE_DSN) works while this runs."""
    from pipeline.chdb_server import ChdbServerProcess
    from pipeline.devstack import EmbeddedBroker, free_port
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
        _run_worker(settings, with_dashboard={"rate": rate, "refresh": refresh})


def _first_that_starts(*services):
    """The first of `services` whose start() succeeds (e.g. the preferred port, then a free one)."""
    for service in services[:-1]:
        try:
            return service.start()
        except (TimeoutError, RuntimeError, OSError):
            continue
    return services[-1].start()


if __name__ == "__main__":
    main()
