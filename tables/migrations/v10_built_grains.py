"""Version 10: the hourly and daily grains are built by the worker (`pipeline/grains.py`), not by views.

A materialized view writes its part in the insert that feeds it: the nine views of the coarse grains made
36 of the 73 parts of a flush of four partitions, each ~4 ms of ClickHouse's CPU inside the flush, which
is what an event's freshness waits for. The worker now tops each coarse grain up to its finer one every
few seconds, off the flush's path, in one insert per grain (`pipeline/grains.py`). The tables stay as
they are; only the views go.
"""

from __future__ import annotations

from tables.ddl import SchemaOptions, drop_view

#: The views earlier versions created, one per coarse grain (`<table>_mv`).
_VIEWS = (
    "runs_hourly_mv",
    "runs_daily_mv",
    "client_drops_daily_mv",
    "launches_hourly_mv",
    "launches_daily_mv",
    "team_runs_hourly_mv",
    "team_runs_daily_mv",
    "workflow_runs_hourly_mv",
    "workflow_runs_daily_mv",
)


def statements(opts: SchemaOptions) -> list[str]:
    return [drop_view(name, opts) for name in _VIEWS]
