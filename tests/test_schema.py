"""The ClickHouse schema: migrations on the real embedded engine, and the cluster DDL from the same code."""

from __future__ import annotations

import clickhouse_connect
import pytest

from tables.migrations import MIGRATIONS, migrate, retention_changes
from tables.schema import TABLES, SchemaOptions, create_statements, quote_ident


@pytest.fixture
def chdb(tmp_path):
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'chdb'}")
    yield client
    client.close()


def schema_snapshot(client, database: str) -> list[tuple]:
    return client.query("SELECT name, engine, create_table_query FROM system.tables WHERE database = {db:String} "
                        "ORDER BY name", parameters={"db": database}).result_rows


def test_migrations_apply_once_and_a_second_run_changes_nothing(chdb):
    opts = SchemaOptions()
    assert [m.version for m in migrate(chdb, opts)] == [m.version for m in MIGRATIONS]
    before = schema_snapshot(chdb, opts.database)
    assert migrate(chdb, opts) == []
    assert schema_snapshot(chdb, opts.database) == before
    assert chdb.query("SELECT count() FROM kern_telemetry.schema_migrations").result_rows == [(len(MIGRATIONS),)]
    names = {row[0] for row in before}
    assert {"runs_minute", "runs_hourly", "runs_daily", "quality_minute", "ingest_flushes", "runs_hourly_mv",
            "runs_daily_mv", "flag_runs_daily", "feature_combos_minute"} <= names


def test_retention_follows_the_settings_and_is_left_alone_when_unchanged(chdb):
    migrate(chdb, SchemaOptions())
    assert retention_changes(chdb, SchemaOptions()) == []
    shorter = SchemaOptions(retention_minute_days=7, retention_day_days=3650)
    assert sorted(retention_changes(chdb, shorter)) == [
        "ALTER TABLE `kern_telemetry`.`quality_minute` MODIFY TTL window_start + INTERVAL 7 DAY",
        "ALTER TABLE `kern_telemetry`.`runs_daily` MODIFY TTL window_start + INTERVAL 3650 DAY",
        "ALTER TABLE `kern_telemetry`.`runs_minute` MODIFY TTL window_start + INTERVAL 7 DAY",
    ]
    migrate(chdb, shorter)
    assert retention_changes(chdb, shorter) == []
    engine = chdb.query("SELECT engine_full FROM system.tables WHERE database = 'kern_telemetry' "
                        "AND name = 'runs_minute'").result_rows[0][0]
    assert "TTL window_start + toIntervalDay(7)" in engine


def test_runs_tables_deduplicate_a_retried_insert_in_the_views_too(chdb):
    migrate(chdb, SchemaOptions())
    row = [1_800_000_000, "agent", "2.4.1", "openai", "OpenAIResponses", "gpt-5.2", "PostgresDb", "none", "none",
           "none", "none", "none", ["has_tools"], 5]
    columns = ["window_start", "kind", "sdk_version", "model_provider", "model_name", "model_id", "db_type",
               "parser_provider", "parser_model_id", "output_provider", "output_model_id", "member_bucket",
               "features", "runs"]
    settings = {"insert_deduplication_token": "t/0/0-10/runs_minute", "insert_deduplicate": 1,
                "deduplicate_blocks_in_dependent_materialized_views": 1}
    for _ in range(3):
        chdb.insert("kern_telemetry.runs_minute", [row], column_names=columns, settings=settings)
    for table in ("runs_minute", "runs_hourly", "runs_daily"):
        assert chdb.query(f"SELECT sum(runs) FROM kern_telemetry.{table}").result_rows == [(5,)]


def test_cluster_schema_is_replicated_and_distributed_on_cluster():
    statements = create_statements(SchemaOptions(cluster="telemetry"))
    assert all(" ON CLUSTER `telemetry`" in statement for statement in statements)
    for table in TABLES:
        local = f"`kern_telemetry`.`{table.name}_local` ON CLUSTER"
        create_local = next(s for s in statements if local in s and "ENGINE = Replicated" in s)
        assert f"Replicated{table.engine}('/clickhouse/tables/{{shard}}/kern_telemetry/{table.name}', " \
               "'{replica}')" in create_local
        distributed = next(s for s in statements if f"`kern_telemetry`.`{table.name}` ON CLUSTER" in s)
        assert f"ENGINE = Distributed(`telemetry`, `kern_telemetry`, `{table.name}_local`, " \
               f"{table.sharding_key})" in distributed
    views = [s for s in statements if "MATERIALIZED VIEW" in s]
    assert len(views) == 2 and all("FROM `kern_telemetry`.`runs_minute_local`" in v for v in views)
    assert not any("non_replicated_deduplication_window" in s for s in statements)


def test_single_node_schema_keeps_a_deduplication_window_on_every_table():
    creates = [s for s in create_statements(SchemaOptions()) if s.startswith("CREATE TABLE")]
    assert len(creates) == len(TABLES)
    assert all("non_replicated_deduplication_window = 10000" in s for s in creates)


def test_identifiers_are_quoted():
    assert quote_ident("a`b") == "`a\\`b`"
