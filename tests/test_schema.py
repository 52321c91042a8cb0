"""The ClickHouse schema: frozen, versioned migrations on the real embedded engine, the cluster DDL from the
same code, and the schema the running code writes."""

from __future__ import annotations

import datetime
from pathlib import Path

import clickhouse_connect
import pytest

from pipeline import dimensions
from pipeline.sink import WRITES
from tables.ddl import SchemaOptions, Table, quote_ident
from tables.migrate import migrate, retention_changes
from tables.migrations import MIGRATIONS, v1_initial, v4_privacy
from tables.schema import COARSE_GRAINS, LAUNCHES_TABLES, RETAINED_TABLES, RUNS_TABLES

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def chdb(tmp_path):
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'chdb'}")
    yield client
    client.close()


def schema_snapshot(client, database: str) -> list[tuple]:
    return client.query(
        "SELECT name, engine, replaceRegexpAll(create_table_query, 'UUID \\'[^\\']+\\'', '') "
        "FROM system.tables WHERE database = {db:String} ORDER BY name",
        parameters={"db": database},
    ).result_rows


def test_migrations_apply_once_and_a_second_run_changes_nothing(chdb):
    opts = SchemaOptions()
    assert [m.version for m in migrate(chdb, opts)] == [m.version for m in MIGRATIONS]
    before = schema_snapshot(chdb, opts.database)
    assert migrate(chdb, opts) == []
    assert schema_snapshot(chdb, opts.database) == before
    assert chdb.query("SELECT count() FROM kern_telemetry.schema_migrations").result_rows == [(len(MIGRATIONS),)]
    names = {row[0] for row in before}
    assert {
        "runs_minute",
        "runs_hourly",
        "runs_daily",
        "quality_minute",
        "ingest_flushes",
        "flag_runs_daily",
        "feature_combos_minute",
        "ingest_ledger",
        "skip_requests",
    } <= names
    assert not {f"{grain.target.name}_mv" for grain in COARSE_GRAINS} & names  # the worker builds them


@pytest.mark.parametrize(
    "variant, opts", [("single", SchemaOptions()), ("cluster", SchemaOptions(cluster="telemetry"))]
)
def test_the_first_release_ddl_never_changes(variant, opts):
    shipped = (GOLDEN / f"schema-v1-{variant}.sql").read_text()
    assert ";\n\n".join(MIGRATIONS[0].statements(opts)) + ";\n" == shipped


def test_upgrading_from_the_first_release_gives_the_schema_of_a_fresh_install(tmp_path):
    old = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'old'}")
    assert [m.version for m in migrate(old, SchemaOptions(), through=1)] == [1]
    old.command(
        "INSERT INTO kern_telemetry.ingest_flushes (topic, partition, start_offset, end_offset, events) "
        "VALUES ('t', 0, 0, 10, 10)"
    )  # a v1 worker's flush
    assert [m.version for m in migrate(old, SchemaOptions())] == [m.version for m in MIGRATIONS[1:]]
    upgraded = schema_snapshot(old, "kern_telemetry")
    assert old.query("SELECT end_offset, skipped FROM kern_telemetry.ingest_flushes").result_rows == [(10, 0)]
    old.close()
    fresh = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'fresh'}")
    migrate(fresh, SchemaOptions())
    assert upgraded == schema_snapshot(fresh, "kern_telemetry")
    fresh.close()


def test_every_column_the_code_writes_exists_after_migrating(chdb):
    migrate(chdb, SchemaOptions())
    for table, columns in WRITES.items():
        stored = {
            name
            for (name,) in chdb.query(
                "SELECT name FROM system.columns WHERE database = 'kern_telemetry' AND table = {t:String}",
                parameters={"t": table},
            ).result_rows
        }
        assert set(columns) <= stored, table


def typed_columns(chdb, table: str) -> list[tuple[str, str]]:
    """A table's (name, type) columns, in their order."""
    rows = chdb.query(
        "SELECT name, type FROM system.columns WHERE database = 'kern_telemetry' "
        "AND table = {t:String} ORDER BY position",
        parameters={"t": table},
    ).result_rows
    return [tuple(row) for row in rows]


def test_every_runs_table_has_the_dimensions_in_their_order_and_types(chdb):
    migrate(chdb, SchemaOptions())
    for table in RUNS_TABLES:
        assert typed_columns(chdb, table.name) == [
            ("window_start", "DateTime('UTC')"),
            *dimensions.COLUMNS,
            ("runs", "UInt64"),
        ], table.name


def test_every_launches_table_has_the_configuration_in_its_order_and_types(chdb):
    migrate(chdb, SchemaOptions())
    for table in LAUNCHES_TABLES:
        assert typed_columns(chdb, table.name) == [
            ("window_start", "DateTime('UTC')"),
            ("sdk_version", "LowCardinality(String)"),
            *dimensions.LAUNCH_COLUMNS,
            ("launches", "UInt64"),
        ], table.name


def test_retention_follows_the_settings_and_is_left_alone_when_unchanged(chdb):
    migrate(chdb, SchemaOptions())
    assert retention_changes(chdb, SchemaOptions()) == []
    shorter = SchemaOptions(retention_minute_days=7, retention_day_days=3650)
    assert sorted(retention_changes(chdb, shorter)) == [
        "ALTER TABLE `kern_telemetry`.`client_drops_daily` MODIFY TTL window_start + INTERVAL 3650 DAY",
        "ALTER TABLE `kern_telemetry`.`client_drops_minute` MODIFY TTL window_start + INTERVAL 7 DAY",
        "ALTER TABLE `kern_telemetry`.`launches_daily` MODIFY TTL window_start + INTERVAL 3650 DAY",
        "ALTER TABLE `kern_telemetry`.`launches_minute` MODIFY TTL window_start + INTERVAL 7 DAY",
        "ALTER TABLE `kern_telemetry`.`quality_minute` MODIFY TTL window_start + INTERVAL 7 DAY",
        "ALTER TABLE `kern_telemetry`.`runs_daily` MODIFY TTL window_start + INTERVAL 3650 DAY",
        "ALTER TABLE `kern_telemetry`.`runs_minute` MODIFY TTL window_start + INTERVAL 7 DAY",
        "ALTER TABLE `kern_telemetry`.`team_runs_daily` MODIFY TTL window_start + INTERVAL 3650 DAY",
        "ALTER TABLE `kern_telemetry`.`team_runs_minute` MODIFY TTL window_start + INTERVAL 7 DAY",
        "ALTER TABLE `kern_telemetry`.`workflow_runs_daily` MODIFY TTL window_start + INTERVAL 3650 DAY",
        "ALTER TABLE `kern_telemetry`.`workflow_runs_minute` MODIFY TTL window_start + INTERVAL 7 DAY",
    ]
    migrate(chdb, shorter)
    assert retention_changes(chdb, shorter) == []
    engine = chdb.query(
        "SELECT engine_full FROM system.tables WHERE database = 'kern_telemetry' AND name = 'runs_minute'"
    ).result_rows[0][0]
    assert "TTL window_start + toIntervalDay(7)" in engine


def test_the_runs_table_deduplicates_a_retried_insert(chdb):
    migrate(chdb, SchemaOptions())
    row = [
        1_800_000_000,
        "agent",
        "2.4.1",
        "openai",
        "OpenAIResponses",
        "gpt-5.2",
        "PostgresDb",
        "none",
        "none",
        "none",
        "none",
        "none",
        ["has_tools"],
        5,
    ]
    columns = [
        "window_start",
        "kind",
        "sdk_version",
        "model_provider",
        "model_name",
        "model_id",
        "db_type",
        "parser_provider",
        "parser_model_id",
        "output_provider",
        "output_model_id",
        "member_bucket",
        "features",
        "runs",
    ]
    settings = {
        "insert_deduplication_token": "t/0/0-10/runs_minute",
        "insert_deduplicate": 1,
        "deduplicate_blocks_in_dependent_materialized_views": 1,
    }
    for _ in range(3):
        chdb.insert("kern_telemetry.runs_minute", [row], column_names=columns, settings=settings)
    assert chdb.query("SELECT sum(runs) FROM kern_telemetry.runs_minute").result_rows == [(5,)]


def test_the_ledger_sums_flush_intents_once_each_per_partition(chdb):
    migrate(chdb, SchemaOptions())
    settings = {"insert_deduplicate": 1, "deduplicate_blocks_in_dependent_materialized_views": 1}
    columns = [
        "topic",
        "partition",
        "start_offset",
        "end_offset",
        "events",
        "counted",
        "dead_lettered",
        "late",
        "skipped",
    ]
    flushes = [("t", 0, 0, 10, 10, 7, 2, 1, 0), ("t", 0, 10, 15, 0, 0, 0, 0, 5), ("t", 1, 0, 4, 4, 4, 0, 0, 0)]
    for _ in range(2):  # a retried intent counts once
        for row in flushes:
            token = f"{row[0]}/{row[1]}/{row[2]}-{row[3]}/ingest_flushes"
            chdb.insert(
                "kern_telemetry.ingest_flushes",
                [row],
                column_names=columns,
                settings={**settings, "insert_deduplication_token": token},
            )
    ledger = chdb.query(
        "SELECT partition, sum(events), sum(counted), sum(dead_lettered), sum(late), sum(skipped) "
        "FROM kern_telemetry.ingest_ledger GROUP BY partition ORDER BY partition"
    ).result_rows
    assert ledger == [(0, 10, 7, 2, 1, 5), (1, 4, 4, 0, 0, 0)]


def test_cluster_schema_is_replicated_and_distributed_on_cluster():
    opts = SchemaOptions(cluster="telemetry")
    statements = [s for m in MIGRATIONS for s in m.statements(opts)]
    assert all(" ON CLUSTER `telemetry`" in statement for statement in statements)
    for table in (*v1_initial.TABLES, *RETAINED_TABLES):
        local = f"`kern_telemetry`.`{table.name}_local` ON CLUSTER"
        create_local = next(s for s in statements if local in s and "ENGINE = Replicated" in s)
        assert (
            f"Replicated{table.engine}('/clickhouse/tables/{{shard}}/kern_telemetry/{table.name}', "
            "'{replica}')" in create_local
        )
        distributed = next(s for s in statements if f"`kern_telemetry`.`{table.name}` ON CLUSTER" in s)
        assert (
            f"ENGINE = Distributed(`telemetry`, `kern_telemetry`, `{table.name}_local`, "
            f"{table.sharding_key})" in distributed
        )
    views = [s for s in statements if "MATERIALIZED VIEW" in s]
    assert len(views) == 16 and all("_local" in v.split(" AS ", 1)[1] for v in views)
    assert not any("non_replicated_deduplication_window" in s for s in statements)
    added = [s for s in statements if "ADD COLUMN" in s]

    def both(name):
        return [f"ALTER TABLE `kern_telemetry`.`{name}_local`", f"ALTER TABLE `kern_telemetry`.`{name}`"]

    flushes, ledger = (both(name) for name in ("ingest_flushes", "ingest_ledger"))
    v7 = [
        table
        for name in ("session_sightings", "value_sightings", "sessions_daily", "value_candidates")
        for table in both(name)
    ]
    assert [s.split(" ON CLUSTER")[0] for s in added] == flushes * 3 + ledger * 2 + v7 + flushes  # v2, v4, v6, v7, v9
    for null in (v4_privacy.VALUE_SIGHTINGS, v4_privacy.SESSION_SIGHTINGS):  # no Replicated Null: Null on each node
        assert any(f"`{null.name}_local` ON CLUSTER" in s and s.endswith("ENGINE = Null") for s in statements)
        assert any(f"Distributed(`telemetry`, `kern_telemetry`, `{null.name}_local`" in s for s in statements)


def test_one_view_writes_both_daily_sketches_of_a_batch_in_one_part(chdb):
    migrate(chdb, SchemaOptions())
    columns = ["day", *dimensions.SKETCH, "session_hashes", "installation_hashes"]

    def write(rows: list[list]) -> int:
        """Insert a batch's sketch rows; the parts it added to sessions_daily."""
        parts = "SELECT count() FROM system.parts WHERE database = 'kern_telemetry' AND table = 'sessions_daily'"
        before = chdb.query(parts).result_rows[0][0]
        chdb.insert("kern_telemetry.session_sightings", rows, column_names=columns)
        return chdb.query(parts).result_rows[0][0] - before

    day = datetime.date(2026, 12, 7)
    batch = [
        [day, "agent", "openai", "gpt-5.2", ["has_tools"], [1, 2, 3], [10, 11]],
        [day, "agent", "openai", "gpt-5.2", [], [3, 4], []],  # no installation (an older SDK)
        [day, "os", "none", "none", [], [], [12]],  # launches without a session
    ]
    assert write(batch) == 1
    assert write([[day, "agent", "openai", "gpt-5.2", ["has_tools"], [2, 5], [11, 13]]]) == 1
    assert chdb.query(
        "SELECT kind, flag, uniqCombined64Merge(sessions), uniqCombined64Merge(installations) "
        "FROM kern_telemetry.sessions_daily GROUP BY kind, flag ORDER BY kind, flag"
    ).result_rows == [("agent", "", 5, 3), ("agent", "has_tools", 4, 3), ("os", "", 0, 1)]
    views = chdb.query(
        "SELECT name, as_select FROM system.tables WHERE database = 'kern_telemetry' AND engine = 'MaterializedView'"
    ).result_rows
    assert [name for name, select in views if "session_sightings" in select] == ["sessions_daily_sketches_mv"]
    assert not [name for name, select in views if "session_hashes" in select and "value_sightings" in select]


def test_a_random_sharding_key_is_refused():
    with pytest.raises(ValueError, match="deduplication"):
        Table("t", (("a", "String"),), "MergeTree", ("a",), sharding_key="rand()")


def test_single_node_schema_keeps_a_deduplication_window_on_every_table():
    creates = [
        s
        for m in MIGRATIONS
        for s in m.statements(SchemaOptions())
        if s.startswith("CREATE TABLE") and not s.endswith("ENGINE = Null")
    ]
    assert len(creates) == len(v1_initial.TABLES) + 18
    assert all("non_replicated_deduplication_window = 10000" in s for s in creates)


def test_identifiers_are_quoted():
    assert quote_ident("a`b") == "`a\\`b`"
