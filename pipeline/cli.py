"""`kern-telemetry`: run a worker, migrate, skip undecodable records, query; `dev` and `produce` (the
embedded stack and the load generator) live in `devstack/commands.py` and load only when they run."""

from __future__ import annotations

import importlib
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from typing import ClassVar

import click
from rich.console import Console

from pipeline.config import Settings

console = Console()


class _Commands(click.Group):
    """The runtime's commands, and the dev tooling's, imported by name when one of them runs, so that the
    runtime never imports the dev tooling."""

    LAZY: ClassVar = {
        "dev": "devstack.commands:dev",
        "produce": "devstack.commands:produce",
        "collect": "collector.cli:collect",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY:
            module, attribute = self.LAZY[name].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Kern telemetry rollup pipeline. Configuration: KERN_* environment variables or .env (see README)."""


@main.command()
def migrate() -> None:
    """Create or upgrade the ClickHouse schema (idempotent)."""
    from pipeline.clickhouse import connect
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
    click.get_current_context().invoke(migrate)


@main.command()
@click.option("--partition", "-p", type=click.IntRange(min=0), required=True, help="Source partition")
@click.option(
    "--through-offset",
    type=click.IntRange(min=0),
    required=True,
    help="Last offset to skip (inclusive): the worker's /health names it for an undecodable batch",
)
@click.option("--reason", required=True, help="Why these records are given up (kept with the skip)")
@click.option("--topic", help="Source topic (default: KERN_TOPIC)")
def skip(partition: int, through_offset: int, reason: str, topic: str | None) -> None:
    """Give up records that cannot be decoded, so a paused partition resumes.

    The worker that owns the partition applies the request: it flushes what it counted before the skipped
    range, records the range in the ledger (ingest_flushes and ingest_ledger, `skipped` in quality_minute,
    one dead letter with the reason), and continues after it. A crash or a rebalance never consumes the
    range again. Losing nothing is the default: without this command the partition stays paused."""
    from pipeline.clickhouse import connect
    from pipeline.sink import ClickHouseSink
    from tables.ddl import SchemaOptions

    settings = Settings.load()
    topic = topic or settings.topic
    if not reason.strip() or len(reason) > 500:
        raise click.BadParameter("give a reason of at most 500 characters", param_hint="--reason")
    sink = ClickHouseSink(connect(settings), SchemaOptions.from_settings(settings))
    last = sink.last_flush(topic, partition)
    if last is not None and through_offset < last.end_offset:
        raise click.ClickException(
            f"{topic} partition {partition} is recorded up to offset {last.end_offset - 1}; "
            f"offset {through_offset} is behind it: nothing to skip"
        )
    sink.request_skip(topic, partition, through_offset, reason.strip())
    console.print(
        f"requested: skip {topic} partition {partition} through offset {through_offset}. The worker that "
        "owns the partition applies it within seconds if it is paused there; its /health then shows the "
        "partition resumed, and ingest_ledger the skipped offsets."
    )


@main.command()
@click.option(
    "--repair", is_flag=True, help="Settle each period that disagrees: top a short one up, rebuild one that holds more"
)
@click.option(
    "--open-periods",
    is_flag=True,
    help="Also periods live records can still reach (younger than the allowed lateness): only while no worker "
    "runs, or a repair adds what the worker's builder adds too",
)
def grains(repair: bool, open_periods: bool) -> None:
    """Check the hourly and daily grains against the grains they are built from.

    Each period's total in runs_hourly, launches_hourly, team_runs_hourly and workflow_runs_hourly must be
    its minute table's, in runs_daily and the other daily tables the hourly table's, in client_drops_daily
    the minute table's. The worker that owns partition 0 builds them every few seconds and settles the
    closed periods of its horizon (pipeline/grains.py); this checks the whole retention. Exits 1 while a
    period disagrees."""
    from rich.table import Table

    from pipeline import grains as coarse
    from pipeline.clickhouse import connect
    from tables.ddl import SchemaOptions

    settings = Settings.load()
    client, opts = connect(settings), SchemaOptions.from_settings(settings)
    arguments = (client, opts, settings.allowed_lateness_seconds, time.time(), open_periods)
    found = coarse.check_all(*arguments)
    if not found:
        console.print("every checked period of the hourly and daily grains agrees with the grain it is built from")
        return
    table = Table("table", "period (UTC)", "built from", "its total", "kept", title="periods that disagree")
    for disagreement in found:
        grain = disagreement.grain
        table.add_row(
            grain.target.name,
            disagreement.period_label,
            grain.source.name,
            f"{disagreement.source:,}",
            f"{disagreement.kept:,}",
        )
    console.print(table)
    if not repair:
        raise click.ClickException(f"{len(found)} period(s) disagree; --repair settles them")
    left = coarse.check_all(*arguments, settling=True)
    if left:
        raise click.ClickException(
            f"{len(left)} period(s) still disagree: a worker wrote into them meanwhile? Run the command again "
            "once the workers are caught up"
        )
    console.print(f"settled {len(found)} period(s) from the grains they are built from")


@main.command()
@click.option(
    "--acknowledge",
    metavar="REASON",
    help="Accept the differences found (in two checks a second apart), saying what you found; the check counts "
    "them from then on",
)
def ledger(acknowledge: str | None) -> None:
    """Check each partition's ledger against its latest intent's running total.

    Every intent records the offsets its log's ledger accounts for through its range (ingest_flushes'
    ledger_total); ingest_ledger's sum for that log generation, plus what was acknowledged, must be the
    latest intent's total. A single-node ClickHouse killed in the middle of an insert can lose an intent's
    ledger block for good (pipeline/ledger.py): the ledger then misses offsets. Workers report such a
    partition on /health (`ledger`). Nothing rebuilds the ledger: the earlier intents are merged away, so
    nothing says which range the block covered. Exits 1 while one disagrees."""
    from rich.table import Table

    from pipeline import ledger as ledger_checks
    from pipeline.clickhouse import connect
    from tables.ddl import SchemaOptions

    settings = Settings.load()
    client, opts = connect(settings), SchemaOptions.from_settings(settings)
    found = ledger_checks.check(client, opts)
    if not found:
        console.print("every partition's ledger adds up to its latest intent's running total")
        return
    columns = ("topic", "partition", "log generation", "intents' total", "ledger", "acknowledged", "missing")
    table = Table(*columns, title="ledgers that disagree")
    for d in found:
        counts = (d.recorded, d.ledger, d.acknowledged, d.missing)
        table.add_row(d.topic, str(d.partition), str(d.generation), *(f"{n:,}" for n in counts))
    console.print(table)
    if acknowledge is None:
        raise click.ClickException(
            f"{len(found)} partition(s) disagree (a negative `missing` is offsets the ledger holds twice); "
            "--acknowledge REASON accepts the differences once you know why"
        )
    time.sleep(1)  # a difference seen a second apart is no insert in flight
    again = {(d.topic, d.partition, d.generation, d.missing) for d in ledger_checks.check(client, opts)}
    confirmed = [d for d in found if (d.topic, d.partition, d.generation, d.missing) in again]
    ledger_checks.acknowledge(client, opts, confirmed, acknowledge)
    console.print(f"acknowledged {len(confirmed)} partition(s)' differences: {acknowledge}")
    if len(confirmed) < len(found):
        raise click.ClickException(
            f"{len(found) - len(confirmed)} partition(s) changed between the two checks: run it again once the "
            "workers are caught up"
        )


@main.command()
def worker() -> None:
    """Run a rollup worker (scale out by running more; Kafka partitions are the unit)."""
    from pipeline.app import create_app, run

    settings = Settings.load()
    if problem := settings.hash_secret_problem():
        raise click.UsageError(problem)
    run(create_app(settings), settings.log_level)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    """A duration with its unit (`90s`, `15m`, `6h`, `7d`) in seconds; `--since` also takes `today`."""
    if value is None or (param.name == "since" and value.strip() == "today"):
        return value and value.strip()
    match = re.fullmatch(r"([1-9][0-9]*)([smhd])", value.strip())
    if not match:
        raise click.BadParameter(f"{value!r}: give a duration with its unit, such as 90s, 15m, 6h or 7d")
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def _utc(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A time in ISO 8601 (`2025-05-12`, `2025-05-12T08:00`), UTC unless it names its zone, in epoch seconds."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: give a time in ISO 8601, such as 2025-05-12 or 2025-05-12T08:00"
        ) from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


@main.command()
@click.argument("sql", required=False)
@click.option("--report", "-r", help="A panel (see --list)")
@click.option("--list", "list_reports", is_flag=True, help="List the panels, the filters and breakdowns each takes")
@click.option(
    "--since",
    default="1h",
    show_default=True,
    callback=_duration,
    help="Time range up to now: 90s, 15m, 6h, 7d, or today (since midnight UTC)",
)
@click.option("--from", "start", callback=_utc, help="Start of a range instead (UTC, ISO 8601: 2025-05-12T08:00)")
@click.option("--to", "end", callback=_utc, help="End of that range (default: now)")
@click.option(
    "--interval",
    callback=_duration,
    help="Time-series bucket: whole minutes, hours or days (default: the finest giving at most 120 points)",
)
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="FILTER=VALUE[,VALUE]",
    help="Filter: kind, provider, model (gpt-4o or 'openai gpt-4o'), sdk (2.4 or 2.4.1), flag (all of: "
    "tools,memory); repeat for more. Values of one filter: any of them, flags: all of them",
)
@click.option("--by", help="Breakdown of the series: kind, provider, model, sdk (panels whose series is one)")
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="csv and json print plain data (UTC times in ISO 8601), to pipe into other tools",
)
@click.option("--chart", is_flag=True, help="Draw the panel in the terminal instead of printing its rows")
def query(
    sql: str | None,
    report: str | None,
    list_reports: bool,
    since: int | str,
    start: int | None,
    end: int | None,
    interval: int | None,
    where: tuple[str, ...],
    by: str | None,
    output: str,
    chart: bool,
) -> None:
    """Run a panel or SQL against the configured ClickHouse. SQL may use the panels' placeholders: {db},
    {from}, {to}, {bucket}, {time_range}, {day_range}, and sources such as {runs}, which --where filters
    (README, "Panels")."""
    from pipeline import render
    from pipeline.clickhouse import connect
    from pipeline.panels import BY_NAME, PANELS, TIME_SERIES, Selection, Window, interval_problem, sources_filters
    from pipeline.panels import statement as plain_statement
    from tables.ddl import SchemaOptions

    if list_reports or not (sql or report):
        for listed in PANELS:
            takes = ", ".join(listed.filters) or "no filter"
            takes += f"; --by {', '.join(listed.breakdowns)}" if listed.breakdowns else ""
            console.print(f"[bold]{listed.name}[/bold]: {listed.title} ({listed.chart}; {takes}). {listed.description}")
        return
    if report and report not in BY_NAME:
        raise click.BadParameter(f"unknown panel {report!r}; try --list", param_hint="--report")
    if chart and not report:
        raise click.UsageError("--chart draws a panel: name it with --report")
    ctx = click.get_current_context()
    if start is None and end is not None:
        raise click.UsageError("--to ends a range that --from starts")
    if start is not None and ctx.get_parameter_source("since") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("give --since or --from, not both")
    panel = BY_NAME[report] if report else None
    sql = sql or ""  # a panel's otherwise
    if interval is not None:
        if problem := interval_problem(interval):
            raise click.BadParameter(f"{interval} s: {problem}", param_hint="--interval")
        if panel.chart != TIME_SERIES if panel else "{bucket}" not in sql:
            raise click.UsageError(f"--interval sets a time series' bucket: {report or 'this SQL'} has none")
    try:
        selection = Selection.parse((_pair(text) for text in where), by)
        if start is not None:
            window = Window.between(start, end or int(time.time()), interval)
        elif isinstance(since, str):  # today
            window = Window.today(interval)
        else:
            window = Window.last(since, interval)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = Settings.load()
    if panel:
        if refusals := panel.refusals(selection):
            raise click.UsageError(f"{panel.name} is " + "; ".join(refusals) + " (see --list)")
        for note in panel.notes(selection, window, SchemaOptions.from_settings(settings)):
            click.echo(f"note: {note}", err=True)
        query_statement = panel.statement(settings.clickhouse_database, window, selection)
    else:
        missing = [name for name in selection.filters if name not in sources_filters(sql)]
        if missing:
            raise click.UsageError(
                f"--where {', '.join(missing)}: filters apply to the SQL's sources ({{runs}}, "
                "{sessions}, ...), and none of its sources can be filtered so"
            )
        if by and "{by}" not in sql:
            raise click.UsageError("--by sets the SQL's {by}: it has none")
        try:
            query_statement = plain_statement(sql, settings.clickhouse_database, window, selection, by=by)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    try:
        client = connect(settings)
    except Exception as exc:
        if settings.embedded_clickhouse:
            raise click.ClickException(
                f"cannot open the embedded ClickHouse at {settings.safe_dsn}: {exc}. chDB allows one process "
                "per path; stop the worker (or `dev`) using it first."
            ) from exc
        raise
    result = client.query(query_statement.sql, parameters=query_statement.parameters)
    columns, rows = result.column_names, result.result_rows
    if not columns:  # no rows came back, and with them no column names: ask for the names
        described = client.query(f"DESCRIBE TABLE ({query_statement.sql})", parameters=query_statement.parameters)
        columns = tuple(row[0] for row in described.result_rows)
    if chart and panel:  # --chart needs --report
        size = shutil.get_terminal_size()
        click.echo(render.chart(panel, rows, size.columns, max(15, size.lines - 4), color=sys.stdout.isatty()))
    elif output == "csv":
        click.echo(render.to_csv(columns, rows), nl=False)
    elif output == "json":
        click.echo(render.to_json(columns, rows))
    else:
        console.print(render.table(panel.title if panel else None, columns, rows))


def _pair(text: str) -> tuple[str, str]:
    name, equals, values = text.partition("=")
    if not equals or not name.strip() or not values.strip():
        raise click.BadParameter(f"{text!r}: give FILTER=VALUE[,VALUE], such as provider=openai", param_hint="--where")
    return name.strip(), values


if __name__ == "__main__":
    main()
