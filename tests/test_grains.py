"""The hourly and daily grains the worker builds from the grains finer than them, checked against them,
and settled where they disagree (`pipeline/grains.py`).

What is simulated is what the frequent build cannot see: periods older than the allowed lateness that a
catching-up worker wrote into (the grain is short), and a grain holding more than its source (two builders
during a rebalance, or a source that lost a block in a ClickHouse killed in the middle of an insert).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from conftest import roll, stored_runs

from pipeline import grains
from pipeline.health import Health
from tables.ddl import SchemaOptions
from tables.migrate import migrate
from tables.schema import COARSE_GRAINS

pytestmark = pytest.mark.integration

_RUNS_COLUMNS = ["window_start", "kind", "sdk_version", "model_provider", "model_id", "features", "runs"]
HOUR = 3600


def _runs(start: int, minutes: int, seed: int) -> list[list]:
    return [
        [datetime.fromtimestamp(start + 60 * i, UTC), "agent", "2.1.0", provider, model, features, (i * seed) % 7 + 1]
        for i in range(minutes)
        for provider, model, features in (("openai", "gpt-4o", ["tools"]), ("anthropic", "claude", []))
    ]


def _drops(start: int, minutes: int) -> list[list]:
    return [[datetime.fromtimestamp(start + 60 * i, UTC), "2.1.0", "queue_full", 2] for i in range(minutes)]


_DROPS_COLUMNS = ["window_start", "sdk_version", "reason", "events"]


def _grains(client) -> tuple[dict, ...]:
    """The runs of the minute, hourly and daily grains, and the client drops of the minute and daily ones."""
    drops = "SELECT window_start, sum(events) FROM kern_telemetry.client_drops_{} GROUP BY ALL"
    return (
        *(stored_runs(client, f"runs_{grain}") for grain in ("minute", "hourly", "daily")),
        *(dict(client.query(drops.format(grain)).result_rows) for grain in ("minute", "daily")),
    )


def _built(client) -> bool:
    minute, hourly, daily, drops, drops_daily = _grains(client)
    by_day: dict = {}
    for window, events in drops.items():
        day = window.replace(hour=0, minute=0)
        by_day[day] = by_day.get(day, 0) + events
    return hourly == roll(minute, HOUR) and daily == roll(minute, 86400) and drops_daily == by_day


@pytest.fixture
def damaged(stack_factory):
    """A shared ClickHouse holding three closed days of runs and client drops, built, then damaged: a block
    of runs_minute that a catching-up worker wrote after the build (runs_hourly short), and one of
    client_drops_daily that its source does not hold (the grain ahead)."""
    stack = stack_factory(shared_clickhouse=True, KERN_AUDIT_SECONDS="0.5")
    day = int(time.time()) // 86400 * 86400 - 4 * 86400  # the last of the three ends a day ago: closed at any hour
    with stack.clickhouse() as client:
        migrate(client, SchemaOptions())
        client.insert("kern_telemetry.runs_minute", _runs(day, 3 * 24 * 60, 3), column_names=_RUNS_COLUMNS)
        client.insert("kern_telemetry.client_drops_minute", _drops(day + 86400, 10), column_names=_DROPS_COLUMNS)
        assert grains.check_all(client, SchemaOptions(), 3600, time.time(), settling=True) == []
        assert _built(client)
        client.insert("kern_telemetry.runs_minute", _runs(day + 5 * HOUR, 30, 5), column_names=_RUNS_COLUMNS)
        client.insert("kern_telemetry.client_drops_daily", _drops(day + 86400, 1), column_names=_DROPS_COLUMNS)
    return stack, day


def _disagreements(stack, open_periods: bool = False) -> list[grains.Disagreement]:
    with stack.clickhouse() as client:
        return grains.check_all(client, SchemaOptions(), 3600, time.time(), open_periods)


def test_the_check_names_each_period_that_disagrees_with_its_source_and_nothing_else(damaged):
    stack, day = damaged
    found = {(d.grain.target.name, int(d.period.timestamp()), d.source - d.kept) for d in _disagreements(stack)}
    lost_runs = sum(row[-1] for row in _runs(day + 5 * HOUR, 30, 5))
    assert found == {
        ("runs_hourly", day + 5 * HOUR, lost_runs),  # short: its daily grain agrees with it, short too
        ("client_drops_daily", day + 86400, -2),  # holds more than its source
    }
    assert [d.short for d in _disagreements(stack)] == [True, False]


def test_settling_tops_a_short_period_up_rebuilds_one_that_holds_more_and_settling_again_changes_nothing(damaged):
    stack, _ = damaged
    with stack.clickhouse() as client:
        for _ in range(2):
            assert grains.check_all(client, SchemaOptions(), 3600, time.time(), settling=True) == []
            assert _built(client)
            rows = client.query("SELECT count() FROM kern_telemetry.runs_hourly").result_rows
        assert client.query("SELECT count() FROM kern_telemetry.runs_hourly").result_rows == rows
    assert _disagreements(stack) == []


def test_a_build_tops_each_grain_up_over_the_periods_live_records_reach_in_one_insert_per_grain(stack_factory):
    stack = stack_factory(shared_clickhouse=True)
    hour = int(time.time()) // HOUR * HOUR
    with stack.clickhouse() as client:
        migrate(client, SchemaOptions())
        old = _runs(hour - 3 * 86400, 30, 2)  # closed: the build leaves it to the audit's settling
        client.insert("kern_telemetry.runs_minute", old, column_names=_RUNS_COLUMNS)
        for seed in (1, 2):  # a second build adds what came since the first, and only that
            client.insert("kern_telemetry.runs_minute", _runs(hour, 1, seed), column_names=_RUNS_COLUMNS)
            client.insert("kern_telemetry.client_drops_minute", _drops(hour, seed), column_names=_DROPS_COLUMNS)
            grains.build(client, SchemaOptions(), 3600, time.time())
            minute, hourly, daily, drops, drops_daily = _grains(client)
            live = {key: n for key, n in minute.items() if key[0] >= hour}
            assert hourly == roll(live, HOUR) and daily == roll(live, 86400)
            assert sum(drops_daily.values()) == sum(drops.values()) == {1: 2, 2: 6}[seed]
        blocks = "SELECT table, max(max_block_number) FROM system.parts WHERE database = 'kern_telemetry' GROUP BY ALL"
        written = client.query(blocks).result_rows  # a merge keeps its parts' highest block number
        grains.build(client, SchemaOptions(), 3600, time.time())  # nothing new: no insert writes a block
        assert client.query(blocks).result_rows == written
    # the closed period is short in the hourly grain; the daily one agrees with the hourly one it is built from
    assert [(d.grain.target.name, int(d.period.timestamp())) for d in _disagreements(stack)] == [
        ("runs_hourly", hour - 3 * 86400)
    ]


def test_periods_live_records_can_still_reach_are_checked_only_when_asked(stack_factory):
    stack = stack_factory(shared_clickhouse=True)
    hour = int(time.time()) // HOUR * HOUR
    with stack.clickhouse() as client:
        migrate(client, SchemaOptions())
        client.insert("kern_telemetry.runs_minute", _runs(hour, 1, 1), column_names=_RUNS_COLUMNS)
    assert _disagreements(stack) == []  # the current hour is open: a worker may be writing into it
    assert [(d.grain.target.name, int(d.period.timestamp())) for d in _disagreements(stack, open_periods=True)] == [
        ("runs_hourly", hour)  # the daily grain is built from the hourly one, which holds nothing yet either
    ]


def test_the_worker_settles_the_closed_periods_its_build_does_not_reach(damaged):
    stack, _ = damaged
    worker = stack.worker()
    deadline = time.monotonic() + 60
    while _disagreements(stack) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _disagreements(stack) == [], (worker.health(), worker.log_path.read_text()[-3000:])
    with stack.clickhouse() as client:
        assert _built(client)
    assert "grains" not in (worker.health() or {}).get("degraded", {})
    assert 'kern_grain_disagreements{table="runs_hourly"} 0.0' in worker.metrics()


def test_the_cli_lists_the_periods_that_disagree_and_settles_them(damaged):
    stack, day = damaged
    period = datetime.fromtimestamp(day + 5 * HOUR, UTC).strftime("%Y-%m-%d %H:%M")
    checked = stack.command("grains")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "runs_hourly" in checked.stdout and period in checked.stdout and "--repair" in checked.stderr
    assert "client_drops_daily" in checked.stdout

    repaired = stack.command("grains", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "settled 2 period(s)" in repaired.stdout
    assert stack.command("grains").returncode == 0
    with stack.clickhouse() as client:
        assert _built(client)


def test_health_degrades_on_a_period_the_builder_could_not_settle_in_two_audits_and_on_a_failed_build():
    health = Health()
    tables = [grain.target.name for grain in COARSE_GRAINS]
    health.grains_checked(tables, [("runs_hourly", "2026-12-01 05:00")])
    assert health.ok  # a worker may have written into it meanwhile
    health.grains_checked(tables, [("runs_hourly", "2026-12-01 05:00")])
    assert "runs_hourly 2026-12-01 05:00" in health.degraded["grains"] and "--repair" in health.degraded["grains"]
    assert health.metrics.values()("kern_grain_disagreements", {"table": "runs_hourly"}) == 1
    health.grains_checked(tables, [])
    assert health.ok and health.metrics.values()("kern_grain_disagreements", {"table": "runs_hourly"}) == 0

    health.grains_built(RuntimeError("Table kern_telemetry.runs_daily does not exist"))
    assert "does not exist" in health.degraded["grains unbuilt"]
    health.grains_built(None)
    assert health.ok


def test_the_checked_periods_are_those_both_tables_retain_in_full_and_no_live_record_reaches():
    hourly = next(grain for grain in COARSE_GRAINS if grain.target.name == "runs_hourly")
    now = 1_765_000_000 + 1234  # not on an hour
    opts = SchemaOptions(retention_minute_days=30, retention_hour_days=400)
    since = grains.checkable_since(hourly, opts, now)
    assert since % HOUR == 0 and now - 30 * 86400 <= since < now - 30 * 86400 + HOUR
    assert grains.checkable_since(hourly, SchemaOptions(retention_minute_days=0, retention_hour_days=0), now) == 0
    assert (
        grains.checkable_since(hourly, SchemaOptions(retention_minute_days=0, retention_hour_days=7), now)
        >= now - 7 * 86400
    )
    until = grains.closed_until(hourly, 3600, now)
    assert until % HOUR == 0 and until <= now - 3600 - 120 < until + HOUR
    assert [(grain.source.name, grain.target.name) for grain in COARSE_GRAINS] == [
        ("runs_minute", "runs_hourly"),  # finest first: a daily grain reads the hourly one a pass just built
        ("runs_hourly", "runs_daily"),
        ("launches_minute", "launches_hourly"),
        ("launches_hourly", "launches_daily"),
        ("team_runs_minute", "team_runs_hourly"),
        ("team_runs_hourly", "team_runs_daily"),
        ("workflow_runs_minute", "workflow_runs_hourly"),
        ("workflow_runs_hourly", "workflow_runs_daily"),
        ("client_drops_minute", "client_drops_daily"),
    ]
