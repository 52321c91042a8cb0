"""Version 7: distinct installations, and k-anonymity over installations instead of sessions.

SDK clients send a daily pseudonym of their installation (`kern_telemetry_client/installation.py`); the
worker keeps only keyed hashes of it, per day, like sessions (`pipeline/admission.py`):

- `session_sightings.installation_hashes` -> `sessions_daily.installations`: per day, kind, provider, model
  and flag, a mergeable sketch of the installations (daily active installations, beside the sessions);
- `value_sightings.installation_hashes` -> `value_candidates.installations`: the installations that sent a
  candidate value; a value is admitted once k distinct installations of one day sent it (the sessions'
  sketch of candidates is no longer written).
"""

from __future__ import annotations

from tables.ddl import SchemaOptions, materialized_view
from tables.migrations.v4_privacy import SESSION_SIGHTINGS, SESSIONS_DAILY, VALUE_CANDIDATES, VALUE_SIGHTINGS

_SKETCH = "AggregateFunction(uniqCombined64, UInt64)"
_HASHES = (("installation_hashes", "Array(UInt64) DEFAULT []"),)


def statements(opts: SchemaOptions) -> list[str]:
    return [
        *SESSION_SIGHTINGS.add_columns(_HASHES, opts),
        *VALUE_SIGHTINGS.add_columns(_HASHES, opts),
        *SESSIONS_DAILY.add_columns((("installations", _SKETCH),), opts),
        *VALUE_CANDIDATES.add_columns((("installations", _SKETCH),), opts),
        materialized_view(
            "sessions_daily_installations_mv",
            SESSIONS_DAILY,
            "SELECT day, kind, model_provider, model_id, flag, uniqCombined64State(installation) AS installations "
            f"FROM {SESSION_SIGHTINGS.local_target(opts)} ARRAY JOIN arrayConcat([''], features) AS flag "
            "ARRAY JOIN installation_hashes AS installation GROUP BY day, kind, model_provider, model_id, flag",
            opts,
        ),
        materialized_view(
            "value_candidates_installations_mv",
            VALUE_CANDIDATES,
            "SELECT day, field, value_hash, uniqCombined64State(installation) AS installations "
            f"FROM {VALUE_SIGHTINGS.local_target(opts)} ARRAY JOIN installation_hashes AS installation "
            "GROUP BY day, field, value_hash",
            opts,
        ),
    ]
