"""The Kern usage-telemetry contract: the event kinds, the envelope and each kind's `data` fields.

One definition for both sides. The SDK client builds its payloads from it, and the pipeline derives its
validator (msgspec types) and its stored dimensions from it, so the two cannot drift apart. Plain Python
without dependencies: SDKs embed it.

Field types (JSON):

- `string`: a string or null;
- `int`: an integer or null;
- `bool`: true, false or null (the `has_*` feature flags);
- `model`: null or an object with `model_provider`, `model_name`, `model_id` (strings or null);
- `strings`: null or an array of strings (names, never free text);
- `enum`: null or one of the field's `values` (a fixed enumeration the client derives; never free text);
- `enums`: null or an array of the field's `values` (a set of them);
- `counts`: an object mapping a reason to a non-negative integer (client reports only).

Identifier fields (`identifier=True`) name a user's session, run, agent, team, workflow or AgentOS, or
(`installation`) an installation on one day. The SDKs send them because the documented payload has them
(the installation's pseudonym so that k-anonymity counts installations, not processes); the pipeline never
stores them: it keeps keyed hashes of sessions and installations per day, in mergeable sketches.
"""

from __future__ import annotations

from typing import NamedTuple


class Field(NamedTuple):
    name: str
    type: str  # one of FIELD_TYPES
    kinds: tuple[str, ...]  # the kinds whose payload carries the field
    identifier: bool = False
    values: tuple[str, ...] = ()  # an `enum` or `enums` field's enumeration


FIELD_TYPES = ("string", "int", "bool", "model", "strings", "enum", "enums", "counts")

AGENT, TEAM, WORKFLOW, OS, CLIENT_REPORT = "agent", "team", "workflow", "os", "client_report"
RUN_KINDS = (AGENT, TEAM, WORKFLOW)
#: Usage events. A client report is the client's own account of what it could not send.
EVENT_KINDS = (*RUN_KINDS, OS)
KINDS = (*EVENT_KINDS, CLIENT_REPORT)

#: The keys of a `model` value.
MODEL_REF_KEYS = ("model_provider", "model_name", "model_id")

#: Top-level fields. `session_id` is required on runs; AgentOS launches of older SDKs carry `os_id` and
#: neither `type` nor `session_id`. `timestamp` (epoch seconds or milliseconds, or ISO-8601 with a zone)
#: is optional: without it an event is counted at the time the broker received it.
ENVELOPE = (
    Field("type", "string", KINDS),
    Field("session_id", "string", EVENT_KINDS, identifier=True),
    Field("run_id", "string", RUN_KINDS, identifier=True),
    Field("os_id", "string", (OS,), identifier=True),
    Field("installation", "string", EVENT_KINDS, identifier=True),  # a daily pseudonym: `installation.py`
    Field("sdk_version", "string", KINDS),
    Field("data", "object", KINDS),
)
OPTIONAL_ENVELOPE = ("timestamp",)

_MODEL_KINDS = (AGENT, TEAM)

#: How a team coordinates its members: `route` (one member answers, directly: v1 mode `route`, v2
#: `respond_directly`), `collaborate` (every member gets the task: v1 `collaborate`, v2
#: `delegate_to_all_members`), `coordinate` (the leader delegates and composes: the default), `other` (a
#: mode this client does not know).
COORDINATION = ("route", "coordinate", "collaborate", "other")
#: What a workflow's steps run: an agent, a team, a function, or control flow around nested steps.
STEP_KINDS = ("agent", "team", "function", "steps", "parallel", "condition", "loop", "router", "other")

#: `data` fields of every kind, in the order the SDKs send them.
DATA = (
    Field("agent_id", "string", (AGENT,), identifier=True),
    Field("team_id", "string", (TEAM,), identifier=True),
    Field("workflow_id", "string", (WORKFLOW,), identifier=True),
    Field("db_type", "string", RUN_KINDS),
    Field("model_provider", "string", _MODEL_KINDS),
    Field("model_name", "string", _MODEL_KINDS),
    Field("model_id", "string", _MODEL_KINDS),
    Field("parser_model", "model", _MODEL_KINDS),
    Field("output_model", "model", _MODEL_KINDS),
    Field("member_count", "int", (TEAM,)),
    # multi-agent coordination patterns: how the team delegates, how many members are teams, how deep
    Field("coordination", "enum", (TEAM,), values=COORDINATION),
    Field("member_team_count", "int", (TEAM,)),
    # orchestration patterns: how many top-level steps, which kinds of step at any depth, how deep
    Field("step_count", "int", (WORKFLOW,)),
    Field("step_kinds", "enums", (WORKFLOW,), values=STEP_KINDS),
    Field("nesting_depth", "int", (TEAM, WORKFLOW)),
    Field("has_tools", "bool", (AGENT, TEAM)),
    Field("has_memory", "bool", (AGENT,)),
    Field("has_reasoning", "bool", (AGENT,)),
    Field("has_knowledge", "bool", (AGENT, TEAM)),
    Field("has_input_schema", "bool", (AGENT,)),
    Field("has_output_schema", "bool", (AGENT,)),
    Field("has_team", "bool", (AGENT,)),
    Field("has_learnings", "bool", (AGENT, TEAM)),
    Field("has_culture", "bool", (AGENT,)),
    # AgentOS launch: its configuration, never its contents
    Field("agent_count", "int", (OS,)),
    Field("team_count", "int", (OS,)),
    Field("workflow_count", "int", (OS,)),
    Field("interfaces", "strings", (OS,)),
    Field("db_types", "strings", (OS,)),
    # client report: events the client could not deliver, by reason
    Field("dropped", "counts", (CLIENT_REPORT,)),
)

#: Feature flags the contract names. New `has_*` flags appear as SDKs evolve: the pipeline counts a flag
#: it has never seen under its own name (see its privacy rules), so adding one here is not required for it
#: to be counted; it makes the flag a typed, fast-path field.
FLAGS = tuple(field.name for field in DATA if field.type == "bool")
FLAG_PREFIX = "has_"

#: Why a client dropped an event (the keys of a client report's `dropped`).
DROP_REASONS = ("queue_full", "send_failed", "oversized", "unsent_at_exit", "unknown_at_exit", "before_send")


def data_fields(kind: str) -> tuple[Field, ...]:
    """The `data` fields a payload of `kind` carries, in order."""
    return tuple(field for field in DATA if kind in field.kinds)


def envelope_fields(kind: str) -> tuple[Field, ...]:
    return tuple(field for field in ENVELOPE if kind in field.kinds)


def field(name: str) -> Field:
    """The `data` field called `name`."""
    for candidate in DATA:
        if candidate.name == name:
            return candidate
    raise KeyError(name)
