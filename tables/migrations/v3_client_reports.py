"""Version 3: what SDK clients report they could not deliver (`client_report` events), summed per reason
and SDK version: `client_drops_minute`, and `client_drops_daily` kept by a materialized view."""

from __future__ import annotations

from tables.ddl import SchemaOptions, Table, materialized_view


def _drops(suffix: str, retention: str) -> Table:
    return Table(
        name=f"client_drops_{suffix}",
        columns=(
            ("window_start", "DateTime('UTC')"),
            ("sdk_version", "LowCardinality(String)"),
            ("reason", "LowCardinality(String)"),
            ("events", "UInt64"),
        ),
        engine="SummingMergeTree",
        partition_by="toYYYYMM(window_start)",
        order_by=("reason", "sdk_version", "window_start"),
        ttl_column="window_start",
        retention=retention,
        sharding_key="cityHash64(reason, sdk_version)",
    )


CLIENT_DROPS_MINUTE = _drops("minute", "minute")
CLIENT_DROPS_DAILY = _drops("daily", "day")


def statements(opts: SchemaOptions) -> list[str]:
    return [
        *CLIENT_DROPS_MINUTE.create(opts),
        *CLIENT_DROPS_DAILY.create(opts),
        materialized_view(
            "client_drops_daily_mv",
            CLIENT_DROPS_DAILY,
            "SELECT toStartOfDay(window_start) AS window_start, sdk_version, reason, sum(events) AS events "
            f"FROM {CLIENT_DROPS_MINUTE.local_target(opts)} GROUP BY window_start, sdk_version, reason",
            opts,
        ),
    ]
