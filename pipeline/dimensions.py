"""The stored dimensions of a run, defined once: column, ClickHouse type, and where the value comes from.

Everything else follows from this tuple: the projector decodes exactly the `data` fields named here and
returns the dimensions in this order (`pipeline/projector.py`), the sink writes these columns
(`tables/schema.py`), and a test checks that a migrated database has them in every runs table. Nothing
outside these sources survives projection: identifiers, prompts and unknown fields are never copied.

Sources:

- `kind`: the event's `type` (`os` for AgentOS launches of older SDKs, which have none);
- `value`: a string at `path` (`("sdk_version",)`, `("data", "model_id")`, `("data", "parser_model",
  "model_provider")`), cleaned by the value rules (`kern_telemetry_client.values`);
- `bucket`: an integer at `path`, as a bucket label (`member_bucket`);
- `flags`: the sorted names of every `data.has_*` key that is `true`, including flags never seen before;
- `names`: an array of strings at `path`, as the sorted set of its cleaned values (launch configurations);
- `enum`: a string at `path` that must be one of its contract field's fixed values;
- `enums`: an array of such strings at `path`, as their sorted set.

A dimension with `kinds` is `none` for every other kind.

Some kinds carry a **pattern** beyond the run dimensions (`PATTERNS`): an AgentOS launch its configuration
(`LAUNCH_DIMENSIONS`, the `launches_*` tables), a team run how it coordinates (`TEAM_DIMENSIONS`,
`team_runs_*`), a workflow run its shape (`WORKFLOW_DIMENSIONS`, `workflow_runs_*`). Such an event is counted
with the run dimensions too. A pattern field is never a reason to dead-letter its event: missing or null
is `none` (older SDKs send none), a mistyped value (a string count, an array that is not one, a value
outside an enumeration) is `invalid` with a quality note, and fields the contract does not name are
ignored.
"""

from __future__ import annotations

from typing import NamedTuple

from kern_telemetry_client import contract
from kern_telemetry_client.values import INVALID

_TEXT = "LowCardinality(String)"
_TEXT_SET = "Array(LowCardinality(String))"


class Dimension(NamedTuple):
    name: str
    column_type: str
    source: str  # "kind", "value", "bucket", "flags" or "names"
    path: tuple[str, ...] = ()
    kinds: tuple[str, ...] | None = None  # the kinds it applies to (None: all)


DIMENSIONS = (
    Dimension("kind", _TEXT, "kind"),
    Dimension("sdk_version", _TEXT, "value", ("sdk_version",)),
    Dimension("model_provider", _TEXT, "value", ("data", "model_provider")),
    Dimension("model_name", _TEXT, "value", ("data", "model_name")),
    Dimension("model_id", _TEXT, "value", ("data", "model_id")),
    Dimension("db_type", _TEXT, "value", ("data", "db_type")),
    Dimension("parser_provider", _TEXT, "value", ("data", "parser_model", "model_provider")),
    Dimension("parser_model_id", _TEXT, "value", ("data", "parser_model", "model_id")),
    Dimension("output_provider", _TEXT, "value", ("data", "output_model", "model_provider")),
    Dimension("output_model_id", _TEXT, "value", ("data", "output_model", "model_id")),
    Dimension("member_bucket", _TEXT, "bucket", ("data", "member_count"), kinds=(contract.TEAM,)),
    Dimension("features", _TEXT_SET, "flags", ("data",)),
)
NAMES = tuple(dimension.name for dimension in DIMENSIONS)
COLUMNS = tuple((dimension.name, dimension.column_type) for dimension in DIMENSIONS)
#: The dimensions distinct sessions and installations are counted by (`sessions_daily`, one sketch per flag too).
SKETCH = ("kind", "model_provider", "model_id", "features")
SKETCH_INDEXES = tuple(NAMES.index(name) for name in SKETCH)

#: An AgentOS launch's configuration (the `launches_*` tables): counts as buckets, names as sets.
LAUNCH_DIMENSIONS = (
    Dimension("agents", _TEXT, "bucket", ("data", "agent_count"), kinds=(contract.OS,)),
    Dimension("teams", _TEXT, "bucket", ("data", "team_count"), kinds=(contract.OS,)),
    Dimension("workflows", _TEXT, "bucket", ("data", "workflow_count"), kinds=(contract.OS,)),
    Dimension("interfaces", _TEXT_SET, "names", ("data", "interfaces"), kinds=(contract.OS,)),
    Dimension("db_types", _TEXT_SET, "names", ("data", "db_types"), kinds=(contract.OS,)),
)
LAUNCH_NAMES = tuple(dimension.name for dimension in LAUNCH_DIMENSIONS)
LAUNCH_COLUMNS = tuple((dimension.name, dimension.column_type) for dimension in LAUNCH_DIMENSIONS)
#: A team run's coordination pattern (the `team_runs_*` tables).
TEAM_DIMENSIONS = (
    Dimension("coordination", _TEXT, "enum", ("data", "coordination"), kinds=(contract.TEAM,)),
    Dimension("member_teams", _TEXT, "bucket", ("data", "member_team_count"), kinds=(contract.TEAM,)),
    Dimension("nesting", _TEXT, "bucket", ("data", "nesting_depth"), kinds=(contract.TEAM,)),
)
#: A workflow run's orchestration pattern (the `workflow_runs_*` tables).
WORKFLOW_DIMENSIONS = (
    Dimension("steps", _TEXT, "bucket", ("data", "step_count"), kinds=(contract.WORKFLOW,)),
    Dimension("step_kinds", _TEXT_SET, "enums", ("data", "step_kinds"), kinds=(contract.WORKFLOW,)),
    Dimension("nesting", _TEXT, "bucket", ("data", "nesting_depth"), kinds=(contract.WORKFLOW,)),
)
#: The kinds whose events carry a pattern, and its dimensions.
PATTERNS = {contract.OS: LAUNCH_DIMENSIONS, contract.TEAM: TEAM_DIMENSIONS, contract.WORKFLOW: WORKFLOW_DIMENSIONS}
#: The field whose admitted values a `names` dimension stores (the same registry as the runs' `db_type`).
NAME_FIELDS = {"interfaces": "interface", "db_types": "db_type"}

#: The `data` fields the dimensions read, in order of first use (the typed decoder's fields).
DATA_FIELDS = tuple(dict.fromkeys(d.path[1] for d in DIMENSIONS if len(d.path) > 1 and d.path[0] == "data"))
#: For each `model` field, the keys the dimensions read from it.
MODEL_KEYS = {
    field: tuple(d.path[2] for d in DIMENSIONS if len(d.path) == 3 and d.path[1] == field)
    for field in DATA_FIELDS
    if contract.field(field).type == "model"
}

_MEMBER_BUCKETS = ((0, "0"), (1, "1"), (2, "2"), (4, "3-4"), (8, "5-8"), (16, "9-16"), (32, "17-32"))


def member_bucket(count: int) -> str:
    if count < 0:
        return INVALID
    for upper, label in _MEMBER_BUCKETS:
        if count <= upper:
            return label
    return "33+"
