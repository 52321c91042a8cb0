"""The hourly and daily grains that ClickHouse's materialized views keep from the minute tables: checked
against the minute tables, and rebuilt from them where they are short.

Why they need checking. The worker's exactly-once protocol (`agents/checkpoint.py`) retries and replays a
flush under the same deduplication tokens, and a view's block is written in the same insert as the
minute table's, under a token derived from the insert's. That holds while ClickHouse itself lives. A
single-node ClickHouse killed in the middle of an insert can record a block in a table's deduplication
log before the block's part is in place (ClickHouse writes that record first, and undoes it only when
the insert fails, which a SIGKILL does not let it do): the retry is then dropped as a duplicate of a block
that is not there, in that table alone. Seen with the embedded engine, which a worker's SIGKILL kills
too: `make chaos` once found runs_hourly a few runs short with every minute table exact. A process
inserting 200-row blocks under tokens into a table with a view (`python -m bench.clickhouse_kills`),
SIGKILLed 200 times and retrying its last blocks each time, lost one block for good 3 times: twice in
the view (the table exact), once in the table (the view holding it). Replicated tables commit a block
and its deduplication record together in Keeper; a ClickHouse server is not killed by a worker's crash.

So a period where the grains disagree says which table lost a block: a short hourly or daily period is
rebuilt from the minute table (`repair`); a short minute period is not, since the coarse grain is the one
that holds the block, and rebuilding it would lose the block there too. A block lost from both, or from
a table without a coarser grain, is beyond this check.

`check` compares each period's total in a coarse grain with the minute grain's, over the periods both
still fully retain; `repair` rebuilds a period from the minute grain (delete it, then insert the view's
own aggregation of it). A repair must not race a write into the same period, so by default only closed
periods are checked: older than the allowed lateness, which no live record can still reach. Nor may it
come before the replay of a flush whose view never saw its block: the replay would add the block to the
rebuilt period again. That is why a worker reports and never repairs, and why a repair is checked again
after: a period a worker wrote into meanwhile (catching up on old records) disagrees again, either way.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from clickhouse_connect.driver.client import Client

from tables.ddl import SchemaOptions
from tables.schema import ROLLUP_VIEWS, RollupView

_CLOSING_MARGIN_S = 120  # beyond the allowed lateness: a flush's rows are in ClickHouse well within it


class Disagreement(NamedTuple):
    """A period whose total in a coarse grain is not the minute grain's."""

    view: RollupView
    period: dt.datetime
    minute: int  # the period's total in the minute grain
    kept: int  # its total in the coarse grain

    @property
    def rebuildable(self) -> bool:
        """The coarse grain is short: its view lost a block the minute grain has. The other way round, the
        minute grain lost the block and the coarse grain is the one that holds it: rebuilding would lose it
        there too."""
        return self.kept < self.minute

    @property
    def period_label(self) -> str:
        return f"{self.period:%Y-%m-%d %H:%M}"


def checkable_since(view: RollupView, opts: SchemaOptions, now: float) -> int:
    """The first period both tables of `view` still hold in full (retention drops rows by window_start)."""
    kept = (opts.retention_days(table.retention) for table in (view.source, view.target) if table.retention)
    days = min((days for days in kept if days), default=0)  # 0 keeps forever
    if not days:
        return 0
    oldest = int(now) - days * 86400
    return -(-oldest // view.period_seconds) * view.period_seconds  # rounded up to a period


def closed_until(view: RollupView, allowed_lateness_s: int, now: float) -> int:
    """The end of the last period no live record can still reach."""
    reachable = int(now) - allowed_lateness_s - _CLOSING_MARGIN_S
    return reachable // view.period_seconds * view.period_seconds


def check(client: Client, opts: SchemaOptions, view: RollupView, since: int, until: int) -> list[Disagreement]:
    """The periods in [since, until) (epoch seconds, on period bounds) where `view` disagrees with its
    minute table: one query, each table's totals per period."""
    measure = view.measure
    result = client.query(
        f"SELECT period, minute, kept FROM ("
        f"SELECT {view.function}(window_start) AS period, sum({measure}) AS minute FROM {view.source.target(opts)} "
        f"WHERE window_start >= {{since:DateTime}} AND window_start < {{until:DateTime}} GROUP BY period"
        f") AS m FULL OUTER JOIN ("
        f"SELECT window_start AS period, sum({measure}) AS kept FROM {view.target.target(opts)} "
        f"WHERE window_start >= {{since:DateTime}} AND window_start < {{until:DateTime}} GROUP BY period"
        f") AS k USING (period) WHERE minute != kept ORDER BY period",
        parameters={"since": since, "until": until},
    )
    return [
        Disagreement(view, period.replace(tzinfo=dt.UTC), int(minute), int(kept))
        for period, minute, kept in result.result_rows
    ]


def check_all(
    client: Client,
    opts: SchemaOptions,
    allowed_lateness_s: int,
    now: float,
    open_periods: bool = False,
    horizon_s: int | None = None,
) -> list[Disagreement]:
    """Every view's disagreements over the periods it can be checked on: closed ones, or all with
    `open_periods` (when no worker is writing); with `horizon_s`, only periods that start within it."""
    found = []
    for view in ROLLUP_VIEWS:
        since = checkable_since(view, opts, now)
        if horizon_s is not None:
            since = max(since, (int(now) - horizon_s) // view.period_seconds * view.period_seconds)
        until = (
            (int(now) // view.period_seconds + 2) * view.period_seconds  # past the current period
            if open_periods
            else closed_until(view, allowed_lateness_s, now)
        )
        found += check(client, opts, view, since, until)
    return found


def worker_horizon_s(topic_retention_hours: int, allowed_lateness_s: int) -> int:
    """How far back a worker checks: a flush writes into periods at most the topic's retention plus the
    allowed lateness old, and a day's period closes a day after it starts; two days more cover both. The
    command line checks the whole retention."""
    return topic_retention_hours * 3600 + allowed_lateness_s + 2 * 86400


def repair(client: Client, opts: SchemaOptions, disagreement: Disagreement) -> None:
    """Rebuild one period of a coarse grain from its minute table, as its view aggregates it."""
    if not disagreement.rebuildable:
        raise ValueError(f"{disagreement.view.target.name} holds more than its minute table: nothing to rebuild from")
    if opts.cluster:
        raise ValueError(
            "repairing a grain on a cluster is not supported: its replicated tables do not lose view blocks"
        )
    view, start = disagreement.view, int(disagreement.period.timestamp())
    target = view.target.target(opts)
    dimensions = ", ".join(view.dimensions)
    bounds = {"start": start, "end": start + view.period_seconds}
    client.command(
        f"ALTER TABLE {target} DELETE WHERE window_start = {{start:DateTime}}",
        parameters=bounds,
        settings={"mutations_sync": 2},
    )
    client.command(
        f"INSERT INTO {target} (window_start, {dimensions}, {view.measure}) "
        f"SELECT {view.function}(m.window_start) AS window_start, {dimensions}, sum(m.{view.measure}) "
        f"FROM {view.source.target(opts)} AS m "
        f"WHERE m.window_start >= {{start:DateTime}} AND m.window_start < {{end:DateTime}} "
        f"GROUP BY window_start, {dimensions}",
        parameters=bounds,
        settings={"insert_deduplicate": 0},  # a rebuilt period may hold the very rows an earlier rebuild wrote
    )
