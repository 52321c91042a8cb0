"""Payloads built from the SDK's objects, derived from the contract: each kind carries exactly the
contract's envelope and `data` keys, and each value is one of

- a bool (a `has_*` flag: which attributes are set),
- an int (how many members, agents, teams, workflows, member teams, steps; how deeply nested),
- one of a fixed enumeration, or a set of them (how a team coordinates, which kinds of workflow step),
- a name: a string attribute (a model's provider, name and id; an interface's type) or a class name (a
  database), passed through `clean_value`, whose format rules apply to every name alike (`formats.py`), so
  a fine-tuned or cloud model id loses its account or organisation, a URL, path, host name, address,
  e-mail, identifier or secret becomes `(redacted)` and free text `(invalid)`; a value that is not a
  string is never turned into one,
- an identifier digest (see `Identifiers`), or the installation's pseudonym of the day (`installation.py`).

Objects are duck-typed: only the attributes named here are read, and nothing else an object holds
(prompts, instructions, tool arguments, URLs, keys, user data) can reach a payload. A read that raises
makes that one field null; it never raises into the host.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any, Callable

from . import contract
from .formats import MAX_RAW_LENGTH
from .installation import Installation
from .values import clean_value

#: Names kept in a list field (interfaces, db_types): a launch payload stays small whatever the OS holds.
MAX_NAMES = 32
#: Entries of each cache of host strings (names, identifiers). A cache keeps only strings of at most
#: MAX_RAW_LENGTH characters (a longer name is INVALID at once; a longer identifier is digested every time),
#: so each holds at most 4096 x 256 characters of the host's strings: 1 MiB of ASCII, 4 MiB at most.
_CACHE_LIMIT = 4096


#: This process's installation (`installation.py`): one per process, its secret shared by the installation.
INSTALLATION = Installation()


class Identifiers:
    """Identifiers (session, run, agent, team, workflow and AgentOS ids) as opaque digests: keyed BLAKE2b,
    16 bytes as 32 hex characters, with a random key made per process and never sent or stored; and the
    installation whose pseudonym of the day each usage event carries.

    A host may use an e-mail address as a session id: the raw value never leaves the process, and
    without the key nobody can test a guess against a digest or link digests across processes. Within
    one process the same id gives the same digest (a forked child keeps its parent's key).
    """

    def __init__(self, key: bytes | None = None, installation: Installation | None = None):
        # Keyed once; each digest copies this state (cheaper than keying again).
        self._keyed = hashlib.blake2b(key=os.urandom(32) if key is None else key, digest_size=16)
        self._digests: dict[str, str] = {}  # session and agent ids repeat from run to run; emptied when full
        self.installation = INSTALLATION if installation is None else installation

    def digest(self, value: object) -> str | None:
        if value is None:
            return None
        try:
            text = value if type(value) is str else str(value)
        except Exception:  # noqa: BLE001 - an id whose str() raises is sent as null
            return None
        digest = self._digests.get(text)
        if digest is None:
            hasher = self._keyed.copy()
            hasher.update(text.encode("utf-8", "surrogatepass"))
            digest = hasher.hexdigest()
            if len(text) <= MAX_RAW_LENGTH:
                if len(self._digests) >= _CACHE_LIMIT:
                    self._digests.clear()
                self._digests[text] = digest
        return digest


#: The process's identifiers: its key is made at import and never leaves the process.
IDENTIFIERS = Identifiers()

_names: dict[
    tuple[str, str], str
] = {}  # (field, raw string) -> clean_value(raw string, field); names repeat from run to run


def name(value: object, field: str = "") -> str | None:
    """A string of `field` as the pipeline would clean it (formats, then values); None for anything that
    is not a string."""
    if type(value) is not str:
        if not isinstance(value, str):
            return None
        value = str.__str__(value)  # a str subclass (a str Enum member) as its plain text
    cleaned = _names.get((field, value))
    if cleaned is None:
        cleaned = clean_value(value, field)
        if len(_names) < _CACHE_LIMIT and len(value) <= MAX_RAW_LENGTH:
            _names[(field, value)] = cleaned
    return cleaned


def _names_of(raw: Iterable[object]) -> list[str]:
    """Sorted distinct cleaned names, at most MAX_NAMES."""
    return sorted({cleaned for cleaned in map(name, raw) if cleaned is not None})[:MAX_NAMES]


def _items(value: object) -> tuple[Any, ...]:
    """The elements of a list or tuple attribute; nothing for None or anything else."""
    return tuple(value) if isinstance(value, (list, tuple)) else ()


def _class_name(value: object) -> str | None:
    return None if value is None else name(type(value).__name__)


def _set(value: object) -> bool:
    return value is not None and value is not False


# --- readers: (object, identifiers) -> value, one per contract field --------------------------------

Reader = Callable[[Any, Identifiers], Any]


def _flag(*rules: tuple[str, bool]) -> Reader:
    """A `has_*` flag: on when any of the (attribute, strict) rules holds. A strict attribute is a switch
    that counts only when it `is True`; any other counts when set (not None, not False)."""

    def read(obj: Any, ids: Identifiers) -> bool:
        for attribute, strict in rules:
            value = getattr(obj, attribute, None)
            if (value is True) if strict else _set(value):
                return True
        return False

    return read


#: Flags read from more than the attribute their name gives (`has_tools` <- `tools`): what the SDK's
#: objects call these features, after agno's `get_telemetry_data`.
_FLAG_RULES = {
    "has_memory": (
        ("memory", False),
        ("memory_manager", False),
        ("enable_agentic_memory", True),
        ("update_memory_on_run", True),
    ),
    "has_reasoning": (("reasoning", True),),
    "has_team": (("team_id", False), ("team", False)),
    "has_learnings": (("learning", False), ("_learning", False)),
    "has_culture": (("culture_manager", False), ("enable_agentic_culture", True), ("update_cultural_knowledge", True)),
}

#: A model reference's keys and the model attributes they come from: `model_provider` <- `provider`.
_MODEL_KEYS = tuple((key, key[len("model_") :]) for key in contract.MODEL_REF_KEYS)


def _model_attribute(key: str, attribute: str) -> Reader:
    return lambda obj, ids: name(getattr(getattr(obj, "model", None), attribute, None), key)


def _model_ref(field: str) -> Reader:
    def read(obj: Any, ids: Identifiers) -> dict[str, str | None] | None:
        model = getattr(obj, field, None)
        if not _set(model):
            return None
        return {key: name(getattr(model, attribute, None), key) for key, attribute in _MODEL_KEYS}

    return read


def _count_of(attribute: str) -> Reader:
    """How many elements a list attribute has: 0 when it is None, null when it is not a list."""

    def read(obj: Any, ids: Identifiers) -> int | None:
        value = getattr(obj, attribute, None)
        if value is None:
            return 0
        return len(value) if isinstance(value, (list, tuple)) else None

    return read


def _interface_name(interface: object) -> object:
    """An interface's type name: its `type` attribute (`slack`, `whatsapp`, ...) or else its class name."""
    kind = getattr(interface, "type", None)
    return kind if isinstance(kind, str) else type(interface).__name__


def _interfaces(os_: Any, ids: Identifiers) -> list[str]:
    return _names_of(map(_interface_name, _items(getattr(os_, "interfaces", None))))


def _db_types(os_: Any, ids: Identifiers) -> list[str]:
    """Class names of the databases of an AgentOS and of its agents, teams and workflows."""
    dbs = [getattr(os_, "db", None)]
    for group in ("agents", "teams", "workflows"):
        dbs.extend(getattr(component, "db", None) for component in _items(getattr(os_, group, None)))
    return _names_of(type(db).__name__ for db in dbs if db is not None)


# --- multi-agent coordination and orchestration patterns ---------------------------------------------
#: Bounds of the walks through nested teams and workflow steps: an object graph of any shape (cycles
#: included) costs at most _MAX_NODES visits, and a depth is counted up to _MAX_DEPTH.
_MAX_DEPTH = 16
_MAX_NODES = 1000
_V1_MODES = frozenset({"route", "coordinate", "collaborate"})
#: Workflow step classes (the SDK's own, by class name) that hold nested steps, and the attribute they do.
_CONTAINERS = {
    "Steps": ("steps", "steps"),
    "Parallel": ("parallel", "steps"),
    "Condition": ("condition", "steps"),
    "Loop": ("loop", "steps"),
    "Router": ("router", "choices"),
}


def _is_team(member: object) -> bool:
    return isinstance(getattr(member, "members", None), (list, tuple))


def _coordination(team: Any, ids: Identifiers) -> str | None:
    """How a team coordinates (`contract.COORDINATION`): its v1 `mode`, else its v2 switches
    (`respond_directly` routes, `delegate_to_all_members` collaborates), else a team coordinates."""
    mode = getattr(team, "mode", None)
    if isinstance(mode, str):
        return str.__str__(mode) if mode in _V1_MODES else "other"
    if getattr(team, "respond_directly", None) is True:
        return "route"
    if True in (getattr(team, "delegate_to_all_members", None), getattr(team, "delegate_task_to_all_members", None)):
        return "collaborate"
    return "coordinate" if _is_team(team) else None


def _member_team_count(team: Any, ids: Identifiers) -> int | None:
    members = getattr(team, "members", None)
    return sum(1 for member in members if _is_team(member)) if isinstance(members, (list, tuple)) else None


class _Walk:
    """One bounded walk through nested teams or workflow steps: the deepest level reached, the kinds seen."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.kinds: set[str] = set()

    def visit(self, node: object) -> bool:
        """Whether to look inside `node`: not seen before (cycles) and within the node budget."""
        if id(node) in self.seen or len(self.seen) >= _MAX_NODES:
            return False
        self.seen.add(id(node))
        return True

    def team_depth(self, team: Any, depth: int = 0) -> int:
        """Levels of teams below `team`."""
        deepest = depth
        if depth < _MAX_DEPTH:
            for member in _items(getattr(team, "members", None)):
                if _is_team(member) and self.visit(member):
                    deepest = max(deepest, self.team_depth(member, depth + 1))
        return deepest

    def steps_depth(self, steps: tuple[Any, ...], depth: int = 0) -> int:
        """Levels of nested steps below `steps`, noting each step's kind (`contract.STEP_KINDS`)."""
        deepest = depth
        for step in steps:
            if not self.visit(step):
                continue
            container = _CONTAINERS.get(type(step).__name__)
            if container is not None:
                kind, attribute = container
                self.kinds.add(kind)
                if depth < _MAX_DEPTH:
                    deepest = max(deepest, self.steps_depth(_items(getattr(step, attribute, None)), depth + 1))
            else:
                self.kinds.add(_step_kind(step))
        return deepest


def _step_kind(step: object) -> str:
    """What a step runs: a `Step`'s agent, team or executor; or an agent, a team or a function as a step."""
    if type(step).__name__ == "Step":
        for attribute, kind in (("agent", "agent"), ("team", "team"), ("executor", "function")):
            if getattr(step, attribute, None) is not None:
                return kind
        return "other"
    if _is_team(step):
        return "team"
    if getattr(step, "model", None) is not None:
        return "agent"
    return "function" if callable(step) else "other"


def _steps(workflow: Any) -> tuple[Any, ...] | None:
    steps = getattr(workflow, "steps", None)
    return tuple(steps) if isinstance(steps, (list, tuple)) else None


def _step_count(workflow: Any, ids: Identifiers) -> int | None:
    steps = _steps(workflow)
    return None if steps is None else len(steps)


def _step_kinds(workflow: Any, ids: Identifiers) -> list[str] | None:
    """The kinds of step a workflow uses at any depth; a workflow that is one function: `function`."""
    steps = _steps(workflow)
    if steps is None:
        return ["function"] if callable(getattr(workflow, "steps", None)) else None
    walk = _Walk()
    walk.steps_depth(steps)
    return sorted(walk.kinds)


def _team_depth(team: Any, ids: Identifiers) -> int | None:
    """Levels of teams below a team."""
    if not _is_team(team):
        return None
    walk = _Walk()
    walk.visit(team)  # a team among its own members is no level below it
    return walk.team_depth(team)


def _steps_depth(workflow: Any, ids: Identifiers) -> int | None:
    """Levels of nested steps below a workflow's."""
    steps = _steps(workflow)
    return None if steps is None else _Walk().steps_depth(steps)


def _dropped(counts: Any, ids: Identifiers) -> dict[str, int]:
    """A client report's counts: every reason of the contract, in its order."""
    return {reason: int(counts.get(reason, 0)) for reason in contract.DROP_REASONS}


_READERS: dict[str, Reader] = {
    "db_type": lambda obj, ids: _class_name(getattr(obj, "db", None)),
    **{key: _model_attribute(key, attribute) for key, attribute in _MODEL_KEYS},
    "interfaces": _interfaces,
    "db_types": _db_types,
    "coordination": _coordination,
    "member_team_count": _member_team_count,
    "step_count": _step_count,
    "step_kinds": _step_kinds,
    "dropped": _dropped,
}
#: Fields read differently by kind.
_KIND_READERS: dict[tuple[str, str], Reader] = {
    (contract.TEAM, "nesting_depth"): _team_depth,
    (contract.WORKFLOW, "nesting_depth"): _steps_depth,
}


def _identifier(obj: Any, ids: Identifiers) -> str | None:
    return ids.digest(getattr(obj, "id", None))


def _reader(kind: str, field: contract.Field) -> Reader:
    """How a contract field is read: by its kind and name, its name, else its kind of value."""
    if (kind, field.name) in _KIND_READERS:
        return _KIND_READERS[(kind, field.name)]
    if field.name in _READERS:
        return _READERS[field.name]
    if field.identifier:
        return _identifier
    if field.type == "bool":
        return _flag(*_FLAG_RULES.get(field.name, ((field.name[len(contract.FLAG_PREFIX) :], False),)))
    if field.type == "model":
        return _model_ref(field.name)
    if field.type == "int" and field.name.endswith("_count"):
        return _count_of(field.name[: -len("_count")] + "s")  # member_count <- members
    raise LookupError(f"the contract's field {field.name!r} has no reader")


_PLANS = {
    kind: tuple((field.name, _reader(kind, field)) for field in contract.data_fields(kind)) for kind in contract.KINDS
}
_ENVELOPE_KEYS = {kind: tuple(field.name for field in contract.envelope_fields(kind)) for kind in contract.KINDS}


def _safely(read: Reader, obj: Any, ids: Identifiers) -> Any:
    try:
        return read(obj, ids)
    except Exception:  # noqa: BLE001 - the SDK's object raised: this field is null, the host never knows
        return None


def _data(kind: str, obj: Any, ids: Identifiers) -> dict[str, Any]:
    plan = _PLANS[kind]
    try:
        return {key: read(obj, ids) for key, read in plan}
    except Exception:  # noqa: BLE001 - rare: read again field by field, nulling only what raises
        return {key: _safely(read, obj, ids) for key, read in plan}


def _envelope(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    return {key: values[key] for key in _ENVELOPE_KEYS[kind]}


def run_event(
    kind: str, obj: Any, session_id: object, run_id: object, sdk_version: str | None, ids: Identifiers
) -> dict[str, Any]:
    """An agent, team or workflow run. A run without a usable session id gets the digest of "" (the
    pipeline requires one on runs, and the run still happened)."""
    digest = ids.digest
    return _envelope(
        kind,
        {
            "type": kind,
            "session_id": digest(session_id) or digest(""),
            "run_id": digest(run_id),
            "installation": ids.installation.today(),
            "sdk_version": sdk_version,
            "data": _data(kind, obj, ids),
        },
    )


def launch_event(os_: Any, sdk_version: str | None, ids: Identifiers) -> dict[str, Any]:
    """An AgentOS launch: its configuration, never its contents. No session exists at launch."""
    return _envelope(
        contract.OS,
        {
            "type": contract.OS,
            "session_id": None,
            "os_id": _safely(_identifier, os_, ids),
            "installation": ids.installation.today(),
            "sdk_version": sdk_version,
            "data": _data(contract.OS, os_, ids),
        },
    )


def report_event(dropped: dict[str, int], sdk_version: str | None) -> dict[str, Any]:
    """A client report: how many events this client (or an earlier process, see `ledger`) dropped, by
    reason. It carries no identifier."""
    return _envelope(
        contract.CLIENT_REPORT,
        {
            "type": contract.CLIENT_REPORT,
            "sdk_version": sdk_version,
            "data": _data(contract.CLIENT_REPORT, dropped, IDENTIFIERS),  # a report reads no identifier
        },
    )
