"""Named analyst queries: `kern-telemetry query --report NAME`, the dev dashboard, and the README."""

from __future__ import annotations

REPORTS: dict[str, tuple[str, str]] = {
    "runs-per-provider-day": (
        "Runs per model provider per day (last 7 days)",
        """SELECT toDate(window_start) AS day, model_provider, sum(runs) AS runs
FROM {db}.runs_daily WHERE window_start >= today() - 7
GROUP BY day, model_provider ORDER BY day DESC, runs DESC""",
    ),
    "memory-share-by-model": (
        "Share of agent runs with memory on, per model (last 7 days)",
        """SELECT model_provider, model_id, sum(runs) AS runs,
       round(sumIf(runs, has(features, 'has_memory')) / sum(runs), 4) AS memory_share
FROM {db}.runs_daily WHERE kind = 'agent' AND window_start >= today() - 7
GROUP BY model_provider, model_id ORDER BY runs DESC LIMIT 20""",
    ),
    "feature-combos-by-model": (
        "Feature combinations used with each model (last 7 days)",
        """SELECT model_provider, model_id, features, sum(runs) AS runs
FROM {db}.feature_combos_daily WHERE window_start >= today() - 7
GROUP BY model_provider, model_id, features ORDER BY runs DESC LIMIT 20""",
    ),
    "sdk-adoption-week": (
        "Adoption of SDK minor versions this week (share of runs)",
        """SELECT arrayStringConcat(arraySlice(splitByChar('.', sdk_version), 1, 2), '.') AS sdk_minor,
       sum(runs) AS runs, round(runs / sum(sum(runs)) OVER (), 4) AS share
FROM {db}.runs_daily WHERE window_start >= toStartOfWeek(today(), 1)
GROUP BY sdk_minor ORDER BY sdk_minor DESC""",
    ),
    "last-minutes": (
        "Runs per kind and provider, last 5 minutes",
        """SELECT window_start, kind, model_provider, sum(runs) AS runs
FROM {db}.runs_minute WHERE window_start >= now() - INTERVAL 5 MINUTE
GROUP BY window_start, kind, model_provider ORDER BY window_start DESC, runs DESC LIMIT 25""",
    ),
    "quality": (
        "Events not counted (dead-lettered, late) and notes on counted ones, last hour",
        """SELECT reason, kind, sum(events) AS events
FROM {db}.quality_minute WHERE window_start >= now() - INTERVAL 1 HOUR
GROUP BY reason, kind ORDER BY events DESC""",
    ),
}


def report_sql(name: str, database: str) -> str:
    return REPORTS[name][1].format(db=database)
