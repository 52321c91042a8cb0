CREATE DATABASE IF NOT EXISTS `kern_telemetry`;

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`runs_minute` (
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
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(window_start)
PRIMARY KEY (kind, model_provider, model_id, window_start)
ORDER BY (kind, model_provider, model_id, window_start, sdk_version, model_name, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features)
TTL window_start + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`runs_hourly` (
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
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(window_start)
PRIMARY KEY (kind, model_provider, model_id, window_start)
ORDER BY (kind, model_provider, model_id, window_start, sdk_version, model_name, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features)
TTL window_start + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`runs_daily` (
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
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(window_start)
PRIMARY KEY (kind, model_provider, model_id, window_start)
ORDER BY (kind, model_provider, model_id, window_start, sdk_version, model_name, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`quality_minute` (
  `window_start` DateTime('UTC'),
  `kind` LowCardinality(String),
  `reason` LowCardinality(String),
  `events` UInt64
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (reason, kind, window_start)
TTL window_start + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`ingest_flushes` (
  `topic` String,
  `partition` UInt32,
  `start_offset` UInt64,
  `end_offset` UInt64,
  `events` UInt64,
  `flushed_at` DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree()
ORDER BY (topic, partition)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS `kern_telemetry`.`schema_migrations` (
  `version` UInt32,
  `name` String,
  `applied_at` DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree()
ORDER BY (version)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS `kern_telemetry`.`runs_hourly_mv` TO `kern_telemetry`.`runs_hourly` AS SELECT toStartOfHour(window_start) AS window_start, kind, sdk_version, model_provider, model_name, model_id, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features, sum(runs) AS runs FROM `kern_telemetry`.`runs_minute` GROUP BY window_start, kind, sdk_version, model_provider, model_name, model_id, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features;

CREATE MATERIALIZED VIEW IF NOT EXISTS `kern_telemetry`.`runs_daily_mv` TO `kern_telemetry`.`runs_daily` AS SELECT toStartOfDay(window_start) AS window_start, kind, sdk_version, model_provider, model_name, model_id, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features, sum(runs) AS runs FROM `kern_telemetry`.`runs_minute` GROUP BY window_start, kind, sdk_version, model_provider, model_name, model_id, db_type, parser_provider, parser_model_id, output_provider, output_model_id, member_bucket, features;

CREATE VIEW IF NOT EXISTS `kern_telemetry`.`flag_runs_minute` AS SELECT window_start, kind, model_provider, model_id, arrayJoin(features) AS flag, sum(runs) AS runs FROM `kern_telemetry`.`runs_minute` GROUP BY window_start, kind, model_provider, model_id, flag;

CREATE VIEW IF NOT EXISTS `kern_telemetry`.`feature_combos_minute` AS SELECT window_start, kind, model_provider, model_id, features, sum(runs) AS runs FROM `kern_telemetry`.`runs_minute` GROUP BY window_start, kind, model_provider, model_id, features;

CREATE VIEW IF NOT EXISTS `kern_telemetry`.`flag_runs_hourly` AS SELECT window_start, kind, model_provider, model_id, arrayJoin(features) AS flag, sum(runs) AS runs FROM `kern_telemetry`.`runs_hourly` GROUP BY window_start, kind, model_provider, model_id, flag;

CREATE VIEW IF NOT EXISTS `kern_telemetry`.`feature_combos_hourly` AS SELECT window_start, kind, model_provider, model_id, features, sum(runs) AS runs FROM `kern_telemetry`.`runs_hourly` GROUP BY window_start, kind, model_provider, model_id, features;

CREATE VIEW IF NOT EXISTS `kern_telemetry`.`flag_runs_daily` AS SELECT window_start, kind, model_provider, model_id, arrayJoin(features) AS flag, sum(runs) AS runs FROM `kern_telemetry`.`runs_daily` GROUP BY window_start, kind, model_provider, model_id, flag;

CREATE VIEW IF NOT EXISTS `kern_telemetry`.`feature_combos_daily` AS SELECT window_start, kind, model_provider, model_id, features, sum(runs) AS runs FROM `kern_telemetry`.`runs_daily` GROUP BY window_start, kind, model_provider, model_id, features;
