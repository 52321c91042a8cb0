"""Version 4: k-anonymous values and distinct sessions, from keyed hashes only (`pipeline/admission.py`).

- `ingest_flushes.admission_epoch`: the admission a flush's rows were projected with, so a replay
  projects the same way.
- `admitted_values`: every value admitted after k distinct sessions, with the epoch that admitted it.
  Sharded by epoch, so that one epoch's insert is deduplicated as a whole.
- `value_sightings` (Null) -> `value_candidates`: per day and field, the keyed hash of a value not yet
  admitted and a sketch of the keyed hashes of the sessions that sent it; kept three days.
- `session_sightings` (Null) -> `sessions_daily`: per day, kind, provider, model and flag (`''` for all
  runs), a mergeable sketch (`uniqCombined64`) of the keyed hashes of the sessions: distinct sessions
  for analysts, `uniqCombined64Merge(sessions)`.
"""

from __future__ import annotations

from tables.ddl import SchemaOptions, Table, materialized_view
from tables.migrations.v1_initial import INGEST_FLUSHES

_TEXT = "LowCardinality(String)"
_SKETCH = "AggregateFunction(uniqCombined64, UInt64)"

ADMITTED_VALUES = Table(
    name="admitted_values",
    columns=(
        ("epoch", "UInt32"),
        ("field", _TEXT),
        ("value", "String"),
        ("value_hash", "UInt64"),
        ("admitted_at", "DateTime64(3, 'UTC') DEFAULT now64(3)"),
    ),
    engine="MergeTree",
    order_by=("epoch", "field", "value"),
    sharding_key="epoch",
)
VALUE_SIGHTINGS = Table(
    name="value_sightings",
    columns=(("day", "Date"), ("field", _TEXT), ("value_hash", "UInt64"), ("session_hashes", "Array(UInt64)")),
    engine="Null",
    order_by=(),
    sharding_key="cityHash64(field, value_hash)",
)
VALUE_CANDIDATES = Table(
    name="value_candidates",
    columns=(("day", "Date"), ("field", _TEXT), ("value_hash", "UInt64"), ("sessions", _SKETCH)),
    engine="AggregatingMergeTree",
    order_by=("field", "value_hash", "day"),
    ttl_column="day",
    fixed_ttl_days=3,
    sharding_key="cityHash64(field, value_hash)",
)
SESSION_SIGHTINGS = Table(
    name="session_sightings",
    columns=(
        ("day", "Date"),
        ("kind", _TEXT),
        ("model_provider", _TEXT),
        ("model_id", _TEXT),
        ("features", f"Array({_TEXT})"),
        ("session_hashes", "Array(UInt64)"),
    ),
    engine="Null",
    order_by=(),
    sharding_key="cityHash64(kind, model_provider, model_id)",
)
SESSIONS_DAILY = Table(
    name="sessions_daily",
    columns=(
        ("day", "Date"),
        ("kind", _TEXT),
        ("model_provider", _TEXT),
        ("model_id", _TEXT),
        ("flag", _TEXT),
        ("sessions", _SKETCH),
    ),
    engine="AggregatingMergeTree",
    order_by=("kind", "model_provider", "model_id", "flag", "day"),
    ttl_column="day",
    retention="hour",
    sharding_key="cityHash64(kind, model_provider, model_id)",
)


def statements(opts: SchemaOptions) -> list[str]:
    return [
        *INGEST_FLUSHES.add_columns((("admission_epoch", "UInt32 DEFAULT 0"),), opts),
        *ADMITTED_VALUES.create(opts),
        *VALUE_SIGHTINGS.create(opts),
        *VALUE_CANDIDATES.create(opts),
        materialized_view(
            "value_candidates_mv",
            VALUE_CANDIDATES,
            "SELECT day, field, value_hash, uniqCombined64State(session) AS sessions "
            f"FROM {VALUE_SIGHTINGS.local_target(opts)} ARRAY JOIN session_hashes AS session "
            "GROUP BY day, field, value_hash",
            opts,
        ),
        *SESSION_SIGHTINGS.create(opts),
        *SESSIONS_DAILY.create(opts),
        materialized_view(
            "sessions_daily_mv",
            SESSIONS_DAILY,
            "SELECT day, kind, model_provider, model_id, flag, uniqCombined64State(session) AS sessions "
            f"FROM {SESSION_SIGHTINGS.local_target(opts)} ARRAY JOIN arrayConcat([''], features) AS flag "
            "ARRAY JOIN session_hashes AS session GROUP BY day, kind, model_provider, model_id, flag",
            opts,
        ),
    ]
