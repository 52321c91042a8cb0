"""The hourly and daily grains, built by the worker from the grain finer than each (the minute table for
an hourly grain, the hourly table for a daily one), checked against it, and settled where they disagree.

Why the worker builds them, and not materialized views. A view writes its part inside the insert that
feeds it: the nine views of the coarse grains made 36 of the 73 parts of a flush of four partitions, each
~4 ms of ClickHouse's CPU that an event's freshness waited for. `build` tops every coarse grain up to its
source over the periods live records can reach, every few seconds, in one insert per grain: per key, the
source's sum less the grain's, where the source holds more. Only one writer may top up (two reading the
same shortfall would both add it), so only the worker that owns partition 0 builds; a grain that holds
more than its source (two builders during a rebalance, or a source that lost a block) is rebuilt.

Why they are also checked over closed periods. A catching-up worker writes into periods older than the
allowed lateness, past what the frequent build covers; and a single-node ClickHouse killed in the middle
of an insert can record a block in a table's deduplication log before the block's part is in place
(ClickHouse writes that record first, and undoes it only when the insert fails, which a SIGKILL does not
let it do): the retry is then dropped as a duplicate of a block that is not there. A process inserting
200-row blocks under tokens (`python -m bench.clickhouse_kills`), SIGKILLed 200 times and retrying its
last blocks each time, lost one block for good 3 times. A minute table's lost block is lost to its
grains too (they are built from it); a grain's own insert is a single statement the next build redoes.

`check` compares each period's total in a coarse grain with its source's; `settle` brings each period
that disagrees to its source (`top_up` where the grain is short, `rebuild` where it holds more). The
worker's audit settles the closed periods of its horizon; `kern-telemetry grains` checks (and with
`--repair` settles) the whole retention.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import NamedTuple

from clickhouse_connect.driver.client import Client

from tables.ddl import SchemaOptions
from tables.schema import COARSE_GRAINS, CoarseGrain

_CLOSING_MARGIN_S = 120  # beyond the allowed lateness: a flush's rows are in ClickHouse well within it


class Disagreement(NamedTuple):
    """A period whose total in a coarse grain is not its source's."""

    grain: CoarseGrain
    period: dt.datetime
    source: int  # the period's total in the finer grain the coarse one is built from
    kept: int  # its total in the coarse grain

    @property
    def short(self) -> bool:
        """The coarse grain holds less than its source: a top-up brings it level. The other way round,
        it holds more (two builders, or a source that lost a block) and is rebuilt."""
        return self.kept < self.source

    @property
    def period_label(self) -> str:
        return f"{self.period:%Y-%m-%d %H:%M}"


def checkable_since(grain: CoarseGrain, opts: SchemaOptions, now: float) -> int:
    """The first period both tables of `grain` still hold in full (retention drops rows by window_start)."""
    kept = (opts.retention_days(table.retention) for table in (grain.source, grain.target) if table.retention)
    days = min((days for days in kept if days), default=0)  # 0 keeps forever
    if not days:
        return 0
    oldest = int(now) - days * 86400
    return -(-oldest // grain.period_seconds) * grain.period_seconds  # rounded up to a period


def closed_until(grain: CoarseGrain, allowed_lateness_s: int, now: float) -> int:
    """The end of the last period no live record can still reach."""
    reachable = int(now) - allowed_lateness_s - _CLOSING_MARGIN_S
    return reachable // grain.period_seconds * grain.period_seconds


def open_until(grain: CoarseGrain, now: float) -> int:
    """Past the current period (a record's window may be a little ahead of this clock)."""
    return (int(now) // grain.period_seconds + 2) * grain.period_seconds


def check(client: Client, opts: SchemaOptions, grain: CoarseGrain, since: int, until: int) -> list[Disagreement]:
    """The periods in [since, until) (epoch seconds, on period bounds) where `grain` disagrees with its
    source: one query, each table's totals per period."""
    measure = grain.measure
    result = client.query(
        f"SELECT period, source, kept FROM ("
        f"SELECT {grain.function}(window_start) AS period, sum({measure}) AS source FROM {grain.source.target(opts)} "
        f"WHERE window_start >= {{since:DateTime}} AND window_start < {{until:DateTime}} GROUP BY period"
        f") AS s FULL OUTER JOIN ("
        f"SELECT window_start AS period, sum({measure}) AS kept FROM {grain.target.target(opts)} "
        f"WHERE window_start >= {{since:DateTime}} AND window_start < {{until:DateTime}} GROUP BY period"
        f") AS k USING (period) WHERE source != kept ORDER BY period",
        parameters={"since": since, "until": until},
    )
    return [
        Disagreement(grain, period.replace(tzinfo=dt.UTC), int(source), int(kept))
        for period, source, kept in result.result_rows
    ]


def top_up(client: Client, opts: SchemaOptions, grain: CoarseGrain, since: int, until: int) -> None:
    """Add to `grain`, per period in [since, until) and key, what its source holds beyond it: one insert
    (none when nothing is short). What the source holds less of is left as it is (`rebuild`). One GROUP BY
    over both tables' rows (the source's counts, less the grain's) rather than one per table and a join:
    half ClickHouse's CPU for a build of ~25,000 minute rows (0.11 against 0.05-0.06 s for runs_hourly)."""
    dimensions = ", ".join(grain.dimensions)
    between = "window_start >= {since:DateTime} AND window_start < {until:DateTime}"
    client.command(
        f"INSERT INTO {grain.target.target(opts)} (window_start, {dimensions}, {grain.measure}) "
        f"SELECT window_start, {dimensions}, toUInt64(sum(total)) AS shortfall FROM ("
        f"SELECT {grain.function}(window_start) AS window_start, {dimensions}, toInt64({grain.measure}) AS total "
        f"FROM {grain.source.target(opts)} WHERE {between} UNION ALL "
        f"SELECT window_start, {dimensions}, -toInt64({grain.measure}) "
        f"FROM {grain.target.target(opts)} WHERE {between}"
        f") GROUP BY window_start, {dimensions} HAVING sum(total) > 0",
        parameters={"since": since, "until": until},
        settings=_write_settings(opts),
    )


def rebuild(client: Client, opts: SchemaOptions, disagreement: Disagreement) -> None:
    """Rebuild one period of a coarse grain from its source (for one that holds more than its source)."""
    if opts.cluster:
        raise ValueError(
            "rebuilding a grain on a cluster is not supported: delete the period from its local tables ON "
            "CLUSTER, and the next build writes it again"
        )
    grain, start = disagreement.grain, int(disagreement.period.timestamp())
    client.command(
        f"ALTER TABLE {grain.target.target(opts)} DELETE WHERE window_start = {{start:DateTime}}",
        parameters={"start": start},
        settings={"mutations_sync": 2},
    )
    top_up(client, opts, grain, start, start + grain.period_seconds)


def settle(client: Client, opts: SchemaOptions, grain: CoarseGrain, since: int, until: int) -> list[Disagreement]:
    """Bring each period of `grain` in [since, until) that disagrees with its source to it; returns the
    periods that still disagree after (a worker wrote into them meanwhile, or a rebuild is not possible)."""
    found = check(client, opts, grain, since, until)
    if not found:
        return []
    for disagreement in found:
        start = int(disagreement.period.timestamp())
        if disagreement.short:
            top_up(client, opts, grain, start, start + grain.period_seconds)
        elif not opts.cluster:
            rebuild(client, opts, disagreement)
    return check(client, opts, grain, since, until)


def build(client: Client, opts: SchemaOptions, allowed_lateness_s: int, now: float) -> None:
    """Top every coarse grain up to its source over the periods live records can reach, finest first (a
    daily grain reads the hourly one this pass has just built). The worker's frequent pass."""
    for grain in COARSE_GRAINS:
        top_up(client, opts, grain, closed_until(grain, allowed_lateness_s, now), open_until(grain, now))


def _ranges(
    opts: SchemaOptions, allowed_lateness_s: int, now: float, open_periods: bool, horizon_s: int | None
) -> Iterator[tuple[CoarseGrain, int, int]]:
    """Each grain, finest first, with the periods it can be checked on: closed ones, or all with
    `open_periods` (when no worker is writing); with `horizon_s`, only periods that start within it."""
    for grain in COARSE_GRAINS:
        since = checkable_since(grain, opts, now)
        if horizon_s is not None:
            since = max(since, (int(now) - horizon_s) // grain.period_seconds * grain.period_seconds)
        until = open_until(grain, now) if open_periods else closed_until(grain, allowed_lateness_s, now)
        yield grain, since, until


def check_all(
    client: Client,
    opts: SchemaOptions,
    allowed_lateness_s: int,
    now: float,
    open_periods: bool = False,
    horizon_s: int | None = None,
    settling: bool = False,
) -> list[Disagreement]:
    """Every grain's disagreements over the periods it can be checked on (`_ranges`); with `settling`,
    each grain is settled first (`settle`) and what still disagrees is returned."""
    step = settle if settling else check
    return [
        found
        for grain, since, until in _ranges(opts, allowed_lateness_s, now, open_periods, horizon_s)
        for found in step(client, opts, grain, since, until)
    ]


def worker_horizon_s(topic_retention_hours: int, allowed_lateness_s: int) -> int:
    """How far back a worker settles: a flush writes into periods at most the topic's retention plus the
    allowed lateness old, and a day's period closes a day after it starts; two days more cover both. The
    command line checks the whole retention."""
    return topic_retention_hours * 3600 + allowed_lateness_s + 2 * 86400


def _write_settings(opts: SchemaOptions) -> dict[str, int]:
    """A top-up is a delta: two equal ones in a row are both due (no deduplication); on a cluster it must
    have landed before the next one reads the grain (a Distributed table forwards in the background)."""
    return {"insert_deduplicate": 0, **({"distributed_foreground_insert": 1} if opts.cluster else {})}
