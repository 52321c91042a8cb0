CREATE DATABASE IF NOT EXISTS `kern_telemetry` ON CLUSTER `telemetry`;

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`runs_minute_local` ON CLUSTER `telemetry` (
  `window_start` DateTime('UTC'),
  `kind` LowCardinality(String),
  `sdk_version` LowCardinality(String),
  `model_provider` LowCardinality(String),
  `model_name` LowCardinality(String),
  `model_id` LowCardinality(String),
  `db_type` LowCardinality(String),
  `parser_provider` LowCardinality(String),
  `parser_model_id` LowCardinality(String),
  `output_provider` LowCardinality(String),
  `output_model_id` LowCardinality(String),
  `member_bucket` LowCardinality(String),
  `features` Array(LowCardinality(String)),
  `runs` UInt64
) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/kern_telemetry/runs_minute', '{replica}')
PARTITION BY toYYYYMM(window_start)
PRIMARY KEY (kind, model_provider, model_id, window_start)
ORDER BY (kind, model_provider, model_id, window_start, sdk_version, model_name, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features)
TTL window_start + INTERVAL 30 DAY;

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`runs_minute` ON CLUSTER `telemetry` AS `kern_telemetry`.`runs_minute_local` ENGINE = Distributed(`telemetry`, `kern_telemetry`, `runs_minute_local`, cityHash64(kind, model_provider, model_id));

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`runs_hourly_local` ON CLUSTER `telemetry` (
  `window_start` DateTime('UTC'),
  `kind` LowCardinality(String),
  `sdk_version` LowCardinality(String),
  `model_provider` LowCardinality(String),
  `model_name` LowCardinality(String),
  `model_id` LowCardinality(String),
  `db_type` LowCardinality(String),
  `parser_provider` LowCardinality(String),
  `parser_model_id` LowCardinality(String),
  `output_provider` LowCardinality(String),
  `output_model_id` LowCardinality(String),
  `member_bucket` LowCardinality(String),
  `features` Array(LowCardinality(String)),
  `runs` UInt64
) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/kern_telemetry/runs_hourly', '{replica}')
PARTITION BY toYYYYMM(window_start)
PRIMARY KEY (kind, model_provider, model_id, window_start)
ORDER BY (kind, model_provider, model_id, window_start, sdk_version, model_name, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features)
TTL window_start + INTERVAL 400 DAY;

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`runs_hourly` ON CLUSTER `telemetry` AS `kern_telemetry`.`runs_hourly_local` ENGINE = Distributed(`telemetry`, `kern_telemetry`, `runs_hourly_local`, cityHash64(kind, model_provider, model_id));

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`runs_daily_local` ON CLUSTER `telemetry` (
  `window_start` DateTime('UTC'),
  `kind` LowCardinality(String),
  `sdk_version` LowCardinality(String),
  `model_provider` LowCardinality(String),
  `model_name` LowCardinality(String),
  `model_id` LowCardinality(String),
  `db_type` LowCardinality(String),
  `parser_provider` LowCardinality(String),
  `parser_model_id` LowCardinality(String),
  `output_provider` LowCardinality(String),
  `output_model_id` LowCardinality(String),
  `member_bucket` LowCardinality(String),
  `features` Array(LowCardinality(String)),
  `runs` UInt64
) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/kern_telemetry/runs_daily', '{replica}')
PARTITION BY toYYYYMM(window_start)
PRIMARY KEY (kind, model_provider, model_id, window_start)
ORDER BY (kind, model_provider, model_id, window_start, sdk_version, model_name, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features);

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`runs_daily` ON CLUSTER `telemetry` AS `kern_telemetry`.`runs_daily_local` ENGINE = Distributed(`telemetry`, `kern_telemetry`, `runs_daily_local`, cityHash64(kind, model_provider, model_id));

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`quality_minute_local` ON CLUSTER `telemetry` (
  `window_start` DateTime('UTC'),
  `kind` LowCardinality(String),
  `reason` LowCardinality(String),
  `events` UInt64
) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/kern_telemetry/quality_minute', '{replica}')
PARTITION BY toYYYYMM(window_start)
ORDER BY (reason, kind, window_start)
TTL window_start + INTERVAL 30 DAY;

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`quality_minute` ON CLUSTER `telemetry` AS `kern_telemetry`.`quality_minute_local` ENGINE = Distributed(`telemetry`, `kern_telemetry`, `quality_minute_local`, cityHash64(reason, kind));

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`ingest_flushes_local` ON CLUSTER `telemetry` (
  `topic` String,
  `partition` UInt32,
  `start_offset` UInt64,
  `end_offset` UInt64,
  `events` UInt64,
  `flushed_at` DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/kern_telemetry/ingest_flushes', '{replica}')
ORDER BY (topic, partition);

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`ingest_flushes` ON CLUSTER `telemetry` AS `kern_telemetry`.`ingest_flushes_local` ENGINE = Distributed(`telemetry`, `kern_telemetry`, `ingest_flushes_local`, partition);

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`schema_migrations_local` ON CLUSTER `telemetry` (
  `version` UInt32,
  `name` String,
  `applied_at` DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/kern_telemetry/schema_migrations', '{replica}')
ORDER BY (version);

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`schema_migrations` ON CLUSTER `telemetry` AS `kern_telemetry`.`schema_migrations_local` ENGINE = Distributed(`telemetry`, `kern_telemetry`, `schema_migrations_local`, version);

CREATE MATERIALIZED VIEW IF NOT EXISTS `kern_telemetry`.`runs_hourly_mv` ON CLUSTER `telemetry` TO `kern_telemetry`.`runs_hourly_local` AS SELECT toStartOfHour(window_start) AS window_start, kind, sdk_version, model_provider, model_name, model_id, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features, sum(runs) AS runs FROM `kern_telemetry`.`runs_minute_local` GROUP BY window_start, kind, sdk_version, model_provider, model_name, model_id, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features;

CREATE MATERIALIZED VIEW IF NOT EXISTS `kern_telemetry`.`runs_daily_mv` ON CLUSTER `telemetry` TO `kern_telemetry`.`runs_daily_local` AS SELECT toStartOfDay(window_start) AS window_start, kind, sdk_version, model_provider, model_name, model_id, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features, sum(runs) AS runs FROM `kern_telemetry`.`runs_minute_local` GROUP BY window_start, kind, sdk_version, model_provider, model_name, model_id, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features;

CREATE VIEW IF NOT EXISTS `kern_telemetry`.`flag_runs_minute` ON CLUSTER `telemetry` AS SELECT window_start, kind, model_provider, model_id, arrayJoin(features) AS flag, sum(runs) AS runs FROM `kern_telemetry`.`runs_minute` GROUP BY window_start, kind, model_provider, model_id, flag;

CREATE VIEW IF NOT EXISTS `kern_telemetry`.`feature_combos_minute` ON CLUSTER `telemetry` AS SELECT window_start, kind, model_provider, model_id, features, sum(runs) AS runs FROM `kern_telemetry`.`runs_minute` GROUP BY window_start, kind, model_provider, model_id, features;

CREATE VIEW IF NOT EXISTS `kern_telemetry`.`flag_runs_hourly` ON CLUSTER `telemetry` AS SELECT window_start, kind, model_provider, model_id, arrayJoin(features) AS flag, sum(runs) AS runs FROM `kern_telemetry`.`runs_hourly` GROUP BY window_start, kind, model_provider, model_id, flag;

CREATE VIEW IF NOT EXISTS `kern_telemetry`.`feature_combos_hourly` ON CLUSTER `telemetry` AS SELECT window_start, kind, model_provider, model_id, features, sum(runs) AS runs FROM `kern_telemetry`.`runs_hourly` GROUP BY window_start, kind, model_provider, model_id, features;

CREATE VIEW IF NOT EXISTS `kern_telemetry`.`flag_runs_daily` ON CLUSTER `telemetry` AS SELECT window_start, kind, model_provider, model_id, arrayJoin(features) AS flag, sum(runs) AS runs FROM `kern_telemetry`.`runs_daily` GROUP BY window_start, kind, model_provider, model_id, flag;

CREATE VIEW IF NOT EXISTS `kern_telemetry`.`feature_combos_daily` ON CLUSTER `telemetry` AS SELECT window_start, kind, model_provider, model_id, features, sum(runs) AS runs FROM `kern_telemetry`.`runs_daily` GROUP BY window_start, kind, model_provider, model_id, features;
