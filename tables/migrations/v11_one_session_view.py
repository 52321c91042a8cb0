"""Version 11: one view writes both daily sketches of a batch's sessions, and a view no insert feeds goes.

A materialized view runs inside the insert that feeds it and writes a part of its own. `session_sightings`
fed `sessions_daily` through two views (v4: the sessions, v7: the installations), each exploding every
hash against every flag (`ARRAY JOIN`) before grouping. One view now writes both sketches of a row,
aggregating each array as it is (`uniqCombined64ArrayState`, the same state as `uniqCombined64State` of
its elements): one part fewer per batch, and no row per hash and flag. `value_candidates_mv` (v4) read
`value_sightings.session_hashes`, which nothing has written since v7 (k counts installations): it ran in
every batch and wrote nothing.

The new view is created before the old ones are dropped: a batch written in between feeds both, which
changes no distinct count (a sketch counts a hash once however often it is added).
"""

from __future__ import annotations

from tables.ddl import SchemaOptions, drop_view, materialized_view
from tables.migrations.v4_privacy import SESSION_SIGHTINGS, SESSIONS_DAILY

_SKETCH = "AggregateFunction(uniqCombined64, UInt64)"
_REPLACED = ("sessions_daily_mv", "sessions_daily_installations_mv", "value_candidates_mv")


def statements(opts: SchemaOptions) -> list[str]:
    return [
        materialized_view(
            "sessions_daily_sketches_mv",
            SESSIONS_DAILY,
            "SELECT day, kind, model_provider, model_id, flag, "
            f"CAST(uniqCombined64ArrayState(session_hashes) AS {_SKETCH}) AS sessions, "
            f"CAST(uniqCombined64ArrayState(installation_hashes) AS {_SKETCH}) AS installations "
            f"FROM {SESSION_SIGHTINGS.local_target(opts)} ARRAY JOIN arrayConcat([''], features) AS flag "
            "GROUP BY day, kind, model_provider, model_id, flag",
            opts,
        ),
        *(drop_view(name, opts) for name in _REPLACED),
    ]
