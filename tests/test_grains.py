"""The hourly and daily grains checked against the minute grain, and rebuilt from it (`pipeline/grains.py`).

What is simulated is what a single-node ClickHouse killed in the middle of an insert leaves: a block in a
minute table that its view never put into the coarse grain, or the other way round. The experiment that
showed both (not a test: it is ClickHouse's behaviour, and rare): a process inserting 200-row blocks under
tokens into a table with a materialized view was SIGKILLed 200 times, each time followed by a retry
of its last blocks under the same tokens; the view ended one block short twice (the table exact), the
table once (the view holding the block).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from conftest import roll, stored_runs

from pipeline import grains
from tables.ddl import SchemaOptions
from tables.migrate import migrate
from tables.schema import ROLLUP_VIEWS

pytestmark = pytest.mark.integration

_RUNS_COLUMNS = ["window_start", "kind", "sdk_version", "model_provider", "model_id", "features", "runs"]
HOUR = 3600


def _runs(start: int, minutes: int, seed: int) -> list[list]:
    return [
        [datetime.fromtimestamp(start + 60 * i, UTC), "agent", "2.1.0", provider, model, features, (i * seed) % 7 + 1]
        for i in range(minutes)
        for provider, model, features in (("openai", "gpt-4o", ["tools"]), ("anthropic", "claude", []))
    ]


def _without_its_view(client, view: str, insert) -> None:
    """Insert while `view` is detached: the minute table gets the block, the view's grain never does."""
    client.command(f"DETACH TABLE kern_telemetry.{view}")
    try:
        insert()
    finally:
        client.command(f"ATTACH TABLE kern_telemetry.{view}")


@pytest.fixture
def damaged(stack_factory):
    """A shared ClickHouse holding three closed days of runs and client drops, in which one block of
    runs_minute never reached runs_hourly and one block of client_drops_minute never reached
    client_drops_daily."""
    stack = stack_factory(shared_clickhouse=True, KERN_AUDIT_SECONDS="0.5")
    day = int(time.time()) // 86400 * 86400 - 3 * 86400
    with stack.clickhouse() as client:
        migrate(client, SchemaOptions())
        client.insert("kern_telemetry.runs_minute", _runs(day, 3 * 24 * 60, 3), column_names=_RUNS_COLUMNS)
        _without_its_view(
            client,
            "runs_hourly_mv",
            lambda: client.insert(
                "kern_telemetry.runs_minute", _runs(day + 5 * HOUR, 30, 5), column_names=_RUNS_COLUMNS
            ),
        )
        drops = [[datetime.fromtimestamp(day + 86400 + 60 * i, UTC), "2.1.0", "queue_full", 2] for i in range(10)]
        client.insert(
            "kern_telemetry.client_drops_minute",
            drops,
            column_names=["window_start", "sdk_version", "reason", "events"],
        )
        _without_its_view(
            client,
            "client_drops_daily_mv",
            lambda: client.insert(
                "kern_telemetry.client_drops_minute",
                drops[:4],
                column_names=["window_start", "sdk_version", "reason", "events"],
            ),
        )
    return stack, day


def _disagreements(stack, open_periods: bool = False) -> list[grains.Disagreement]:
    with stack.clickhouse() as client:
        return grains.check_all(client, SchemaOptions(), 3600, time.time(), open_periods)


def test_the_check_names_each_period_whose_view_lost_a_block_and_nothing_else(damaged):
    stack, day = damaged
    found = {(d.view.target.name, int(d.period.timestamp()), d.minute - d.kept) for d in _disagreements(stack)}
    lost_runs = sum(row[-1] for row in _runs(day + 5 * HOUR, 30, 5))
    assert found == {("runs_hourly", day + 5 * HOUR, lost_runs), ("client_drops_daily", day + 86400, 4 * 2)}


def test_a_repair_rebuilds_the_period_as_its_view_would_have_and_a_second_repair_changes_nothing(damaged):
    stack, _ = damaged
    with stack.clickhouse() as client:
        found = grains.check_all(client, SchemaOptions(), 3600, time.time())
        assert len(found) == 2
        for _ in range(2):  # the second rebuild inserts the very rows the first did: none may be deduplicated
            for disagreement in found:
                grains.repair(client, SchemaOptions(), disagreement)
            minute = stored_runs(client, "runs_minute")
            assert stored_runs(client, "runs_hourly") == roll(minute, HOUR)
            assert stored_runs(client, "runs_daily") == roll(minute, 86400)
            drops = client.query("SELECT sum(events) FROM kern_telemetry.client_drops_daily").result_rows
            assert drops == [(14 * 2,)]
    assert _disagreements(stack) == []


def test_a_minute_table_that_lost_a_block_is_reported_and_never_rebuilt_over_the_grain_that_holds_it(damaged):
    """The minute table's block lost and the views' kept (ClickHouse killed between them): rebuilding the
    coarse grains from the minute table would lose the block there too."""
    stack, day = damaged
    start, end = day + 10 * HOUR, day + 10 * HOUR + 20 * 60
    with stack.clickhouse() as client:
        client.insert("kern_telemetry.runs_minute", _runs(start, 20, 7), column_names=_RUNS_COLUMNS)
        client.command(
            "ALTER TABLE kern_telemetry.runs_minute DELETE WHERE window_start >= {start:DateTime} "
            "AND window_start < {end:DateTime}",
            parameters={"start": start, "end": end},
            settings={"mutations_sync": 2},
        )
        hourly_before = stored_runs(client, "runs_hourly")
        lost = [d for d in _disagreements(stack) if not d.rebuildable]
        assert {(d.view.target.name, int(d.period.timestamp())) for d in lost} == {
            ("runs_hourly", start),
            ("runs_daily", day),
        }
        with pytest.raises(ValueError, match="holds more than its minute table"):
            grains.repair(client, SchemaOptions(), lost[0])

    repaired = stack.command("grains", "--repair")
    assert repaired.returncode == 1
    assert "rebuilt 2 period(s)" in repaired.stdout and "2 period(s) of a minute table" in repaired.stderr
    with stack.clickhouse() as client:
        hourly = stored_runs(client, "runs_hourly")
    assert {key: n for key, n in hourly.items() if key[0] == start} == {
        key: n for key, n in hourly_before.items() if key[0] == start
    }
    assert [d.rebuildable for d in _disagreements(stack)] == [False, False]


def test_periods_live_records_can_still_reach_are_checked_only_when_asked(stack_factory):
    stack = stack_factory(shared_clickhouse=True)
    hour = int(time.time()) // HOUR * HOUR
    with stack.clickhouse() as client:
        migrate(client, SchemaOptions())
        _without_its_view(
            client,
            "runs_hourly_mv",
            lambda: client.insert("kern_telemetry.runs_minute", _runs(hour, 1, 1), column_names=_RUNS_COLUMNS),
        )
    assert _disagreements(stack) == []  # the current hour is open: a worker may be writing into it
    assert [(d.view.target.name, int(d.period.timestamp())) for d in _disagreements(stack, open_periods=True)] == [
        ("runs_hourly", hour)
    ]


def test_a_worker_reports_a_disagreement_it_saw_twice_and_the_cli_repairs_it(damaged):
    stack, day = damaged
    worker = stack.worker()
    report = worker.wait_health(lambda r: "grains" in r["degraded"], 60, "grains degraded")
    period = datetime.fromtimestamp(day + 5 * HOUR, UTC).strftime("%Y-%m-%d %H:%M")
    assert f"runs_hourly {period}" in report["degraded"]["grains"]
    assert "kern-telemetry grains" in report["degraded"]["grains"] and "--repair" in report["degraded"]["grains"]
    metrics = worker.metrics()
    assert 'kern_grain_disagreements{table="runs_hourly"} 1.0' in metrics
    assert 'kern_grain_disagreements{table="client_drops_daily"} 1.0' in metrics
    assert 'kern_grain_disagreements{table="runs_daily"} 0.0' in metrics

    checked = stack.command("grains")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "runs_hourly" in checked.stdout and period in checked.stdout and "--repair" in checked.stderr

    repaired = stack.command("grains", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "rebuilt 2 period(s)" in repaired.stdout

    worker.wait_health(lambda r: "grains" not in r["degraded"], 60, "grains recovered")
    assert stack.command("grains").returncode == 0


def test_the_checked_periods_are_those_both_tables_retain_in_full_and_no_live_record_reaches():
    hourly = next(view for view in ROLLUP_VIEWS if view.target.name == "runs_hourly")
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
    assert sorted(view.target.name for view in ROLLUP_VIEWS) == [
        "client_drops_daily",
        "launches_daily",
        "launches_hourly",
        "runs_daily",
        "runs_hourly",
        "team_runs_daily",
        "team_runs_hourly",
        "workflow_runs_daily",
        "workflow_runs_hourly",
    ]
