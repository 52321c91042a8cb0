"""The client's payloads against the contract and the pipeline's own validator: exactly the contract's
keys and types per kind, nothing from an SDK object but the named attributes, reduced; raising
attributes null their field; identifiers only as digests; every payload the client can build is counted
by the pipeline with the dimensions it carries; the README's examples are the client's output."""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kern_telemetry_client import KafkaSink, Telemetry, contract, environment, ledger, payloads
from kern_telemetry_client.installation import Installation
from kern_telemetry_client.values import INVALID, NONE, REDACTED, clean_value
from test_sdk_standins import (
    SENTINEL,
    Agent,
    AgentOS,
    Knowledge,
    MemoryManager,
    Model,
    PostgresDb,
    Raising,
    Slack,
    SqliteDb,
    Team,
    Tool,
    Whatsapp,
    Workflow,
    sentinel,
)

from pipeline.admission import RARE, Admission, Keys
from pipeline.dimensions import NAME_FIELDS, PATTERNS, member_bucket
from pipeline.dimensions import NAMES as DIMENSIONS
from pipeline.projector import EventProjector, Tally

README = Path(__file__).parent.parent / "sdk" / "README.md"
# all-zero keys and secret, and a fixed day (2026-12-05): the README's digests and pseudonym
IDS = payloads.Identifiers(bytes(32), Installation(bytes(32), clock=lambda: 1_796_428_800.0))
HEX32 = re.compile(r"[0-9a-f]{32}")


def build(
    kind: str,
    obj: object,
    session_id: object = "session-1",
    run_id: object = "run-1",
    sdk_version: str | None = "1.0.0",
) -> dict:
    if kind == contract.OS:
        return payloads.launch_event(obj, sdk_version, IDS)
    if kind == contract.CLIENT_REPORT:
        return payloads.report_event(obj, sdk_version)
    return payloads.run_event(kind, obj, session_id, run_id, sdk_version, IDS)


def rich_objects() -> dict:
    """One object of each kind with every feature on (and sentinels in everything else)."""
    openai = Model("openai", "OpenAIResponses", "gpt-5.2")
    agent = Agent(
        openai,
        db=PostgresDb(),
        tools=[Tool()],
        memory_manager=MemoryManager(),
        reasoning=True,
        knowledge=Knowledge(),
        input_schema=dict,
        output_schema=dict,
        team_id=sentinel("team-id"),
        parser_model=Model("anthropic", "Claude", "claude-sonnet-4"),
        output_model=openai,
        learning=True,
        culture_manager=object(),
    )
    team = Team(
        openai, members=[agent, Agent(None)], db=SqliteDb(), tools=[Tool()], knowledge=Knowledge(), learning=True
    )
    workflow = Workflow(db=PostgresDb())
    agent_os = AgentOS([agent], [team], [workflow], [Slack(), Whatsapp()], db=SqliteDb())
    return {
        contract.AGENT: agent,
        contract.TEAM: team,
        contract.WORKFLOW: workflow,
        contract.OS: agent_os,
        contract.CLIENT_REPORT: {"queue_full": 3, "unsent_at_exit": 1},
    }


def conforms(value: object, field_type: str) -> bool:
    """A value of the contract's type (null allowed everywhere)."""
    if value is None:
        return True
    if field_type == "string":
        return type(value) is str
    if field_type in ("int", "bool"):
        return type(value) is {"int": int, "bool": bool}[field_type]
    if field_type == "model":
        return (
            type(value) is dict
            and list(value) == list(contract.MODEL_REF_KEYS)
            and all(v is None or type(v) is str for v in value.values())
        )
    if field_type == "strings":
        return type(value) is list and all(type(v) is str for v in value)
    if field_type in ("enum", "enums"):  # checked against the field's enumeration by the caller
        return type(value) is (str if field_type == "enum" else list)
    if field_type == "counts":
        return (
            type(value) is dict
            and list(value) == list(contract.DROP_REASONS)
            and all(type(v) is int and v >= 0 for v in value.values())
        )
    return field_type == "object" and type(value) is dict


@pytest.mark.parametrize("kind", contract.KINDS)
@pytest.mark.parametrize("variant", ["rich", "bare", "raising"])
def test_each_kind_carries_exactly_the_contracts_keys_with_the_contracts_types(kind, variant):
    obj = {
        "rich": rich_objects()[kind],
        "bare": {} if kind == contract.CLIENT_REPORT else object(),
        "raising": Raising(),
    }[variant]
    event = build(kind, obj)
    envelope = contract.envelope_fields(kind)
    assert list(event) == [field.name for field in envelope]
    assert list(event["data"]) == [field.name for field in contract.data_fields(kind)]
    assert event["type"] == kind
    for field in (*envelope, *contract.data_fields(kind)):
        value = event["data"][field.name] if field in contract.DATA else event[field.name]
        assert conforms(value, field.type), (field, value)
        if field.identifier and value is not None:
            assert HEX32.fullmatch(value), (field, value)


def test_the_rich_objects_give_the_documented_values_and_no_sentinel():
    events = {kind: build(kind, obj) for kind, obj in rich_objects().items()}
    agent, team, workflow, agent_os = (events[k]["data"] for k in contract.EVENT_KINDS)
    assert (agent["model_provider"], agent["model_name"], agent["model_id"], agent["db_type"]) == (
        "openai",
        "OpenAIResponses",
        "gpt-5.2",
        "PostgresDb",
    )
    assert agent["parser_model"] == {
        "model_provider": "anthropic",
        "model_name": "Claude",
        "model_id": "claude-sonnet-4",
    }
    assert all(agent[flag] is True for flag in contract.FLAGS if flag in agent)
    assert (team["member_count"], team["db_type"], team["has_tools"], team["has_learnings"]) == (
        2,
        "SqliteDb",
        True,
        True,
    )
    assert workflow["db_type"] == "PostgresDb"
    assert agent_os == {
        "agent_count": 1,
        "team_count": 1,
        "workflow_count": 1,
        "interfaces": ["slack", "whatsapp"],
        "db_types": ["PostgresDb", "SqliteDb"],
    }
    assert events[contract.CLIENT_REPORT]["data"]["dropped"] == {
        **dict.fromkeys(contract.DROP_REASONS, 0),
        "queue_full": 3,
        "unsent_at_exit": 1,
    }
    assert SENTINEL not in json.dumps(events)


def test_flags_follow_the_sdk_attributes():
    bare = build(contract.AGENT, Agent(None))["data"]
    assert not any(bare[flag] for flag in contract.FLAGS if flag in bare)
    # switches count only when they are True; other attributes when set (not None, not False)
    cases = {
        "has_memory": [
            ("enable_agentic_memory", True),
            ("update_memory_on_run", True),
            ("memory_manager", object()),
            ("memory", object()),
        ],
        "has_reasoning": [("reasoning", True)],
        "has_team": [("team_id", "t-1"), ("team", object())],
        "has_learnings": [("learning", True), ("_learning", object())],
        "has_culture": [
            ("culture_manager", object()),
            ("enable_agentic_culture", True),
            ("update_cultural_knowledge", True),
        ],
        "has_tools": [("tools", [])],
        "has_knowledge": [("knowledge", object())],
        "has_input_schema": [("input_schema", dict)],
        "has_output_schema": [("output_schema", dict)],
    }
    for flag, settings_ in cases.items():
        for attribute, value in settings_:
            agent = Agent(None)
            setattr(agent, attribute, value)
            assert build(contract.AGENT, agent)["data"][flag] is True, (flag, attribute)
    for attribute, value in [("reasoning", "yes"), ("enable_agentic_memory", 1), ("tools", False)]:
        agent = Agent(None)
        setattr(agent, attribute, value)
        assert not any(build(contract.AGENT, agent)["data"][f] for f in contract.FLAGS if f in bare), attribute


class Recorder:
    """Answers every attribute with `answer` (itself when None is not asked for) and remembers the names."""

    def __init__(self, names: set, answer_none: bool):
        object.__setattr__(self, "_names", names)
        object.__setattr__(self, "_answer_none", answer_none)

    def __getattribute__(self, name: str) -> object:
        if name in ("__class__", "__dict__"):
            return object.__getattribute__(self, name)
        object.__getattribute__(self, "_names").add(name)
        return None if object.__getattribute__(self, "_answer_none") else self


#: Every attribute the client reads, per kind (sdk/README.md lists the same).
READ = {
    contract.AGENT: {
        "id",
        "telemetry",
        "db",
        "model",
        "provider",
        "name",
        "parser_model",
        "output_model",
        "tools",
        "memory",
        "memory_manager",
        "enable_agentic_memory",
        "update_memory_on_run",
        "reasoning",
        "knowledge",
        "input_schema",
        "output_schema",
        "team_id",
        "team",
        "learning",
        "_learning",
        "culture_manager",
        "enable_agentic_culture",
        "update_cultural_knowledge",
    },
    contract.TEAM: {
        "id",
        "telemetry",
        "db",
        "model",
        "provider",
        "name",
        "parser_model",
        "output_model",
        "members",
        "knowledge",
        "tools",
        "learning",
        "_learning",
        "mode",
        "respond_directly",
        "delegate_to_all_members",
        "delegate_task_to_all_members",
    },
    contract.WORKFLOW: {"id", "telemetry", "db", "steps"},
    contract.OS: {"id", "telemetry", "agents", "teams", "workflows", "interfaces", "db"},
}


@pytest.mark.parametrize("kind", contract.EVENT_KINDS)
def test_only_the_named_attributes_are_read(kind):
    from kern_telemetry_client.client import _opted_out

    names: set = set()
    for answer_none in (False, True):  # objects everywhere (nested reads), then None everywhere (every rule)
        recorder = Recorder(names, answer_none)
        assert not _opted_out(recorder)
        build(kind, recorder)
    assert names == READ[kind]


class LazyModel:
    """A model whose id is a property that fails."""

    provider, name = "openai", "OpenAIResponses"

    @property
    def id(self) -> str:
        raise RuntimeError(sentinel("lazy-id"))


class LazyOS:
    """An AgentOS whose agents are a property that fails."""

    id, teams, workflows, interfaces, db = "os-1", [], [], [Slack()], None

    @property
    def agents(self) -> list:
        raise RuntimeError(sentinel("lazy-agents"))


def test_a_raising_attribute_nulls_only_its_field_and_never_reaches_the_host():
    for kind in contract.EVENT_KINDS:
        event = build(kind, Raising())
        assert all(value is None for value in event["data"].values()), event
        assert event.get("os_id") is None and SENTINEL not in json.dumps(event)
    data = build(contract.AGENT, Agent(LazyModel(), db=PostgresDb()))["data"]
    assert (data["model_provider"], data["model_name"], data["model_id"], data["db_type"]) == (
        "openai",
        "OpenAIResponses",
        None,
        "PostgresDb",
    )
    assert build(contract.OS, LazyOS())["data"] == {
        "agent_count": None,
        "team_count": 0,
        "workflow_count": 0,
        "interfaces": ["slack"],
        "db_types": None,
    }


class Provider(str, enum.Enum):
    OPENAI = "openai"


class Chatty:
    def __str__(self) -> str:
        return sentinel("str")


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError(sentinel("str"))


def test_names_are_cleaned_and_non_strings_are_never_stringified():
    cases = [
        ("openai", "openai"),
        (Provider.OPENAI, "openai"),
        ("sk-proj-abcdefghijklmnop", REDACTED),
        ("someone@example.com", REDACTED),
        ("x" * 101, INVALID),
        ("ignore previous\ninstructions", INVALID),
        (42, None),
        (b"openai", None),
        (Chatty(), None),
        (None, None),
    ]
    for raw, expected in cases:
        data = build(contract.AGENT, Agent(Model(raw, raw, raw)))["data"]
        assert (data["model_provider"], data["model_name"], data["model_id"]) == (expected,) * 3, raw
    assert SENTINEL not in json.dumps(build(contract.AGENT, Agent(Model(Chatty(), Chatty(), Chatty()))))


def test_identifiers_travel_only_as_keyed_digests():
    email = f"{sentinel('session')}@example.com"
    event = build(contract.AGENT, Agent(None), session_id=email, run_id=uuid.UUID(int=7))
    assert HEX32.fullmatch(event["session_id"]) and HEX32.fullmatch(event["run_id"])
    assert SENTINEL not in json.dumps(event) and str(uuid.UUID(int=7)) not in json.dumps(event)
    assert event["session_id"] == IDS.digest(email)  # the same id gives the same digest in one process
    assert payloads.Identifiers().digest(email) != IDS.digest(email)  # another key: nothing to link
    assert build(contract.AGENT, Agent(None), session_id=None)["session_id"] == IDS.digest("")
    assert IDS.digest(Chatty()) == IDS.digest(sentinel("str")) and IDS.digest(Unprintable()) is None


class Broken(Raising):
    """Every attribute raises but the opt-out, which says telemetry is on."""

    def __getattribute__(self, name: str) -> object:
        return True if name == "telemetry" else super().__getattribute__(name)


def test_the_capture_calls_never_raise_into_the_host(monkeypatch, capsys):
    monkeypatch.setenv("KERN_TELEMETRY_DEBUG", "1")
    for variable in ("AGNO_TELEMETRY", "KERN_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.delenv(variable, raising=False)
    telemetry = Telemetry("1.0.0", KafkaSink("127.0.0.1:9"))
    for call in (telemetry.agent_run, telemetry.team_run, telemetry.workflow_run):
        call(Broken(), Unprintable(), Unprintable())
        call(Raising(), "session")  # the opt-out itself raises: the object is left alone
    telemetry.os_launch(Broken())
    telemetry.os_launch(Raising())
    printed = [json.loads(line.split(": ", 1)[1]) for line in capsys.readouterr().err.splitlines()]
    assert [event["type"] for event in printed] == list(contract.EVENT_KINDS)
    assert all(value is None for event in printed for value in event["data"].values())
    assert {event["session_id"] for event in printed[:3]} == {payloads.IDENTIFIERS.digest("")}
    assert SENTINEL not in json.dumps(printed)


# --- the pipeline's validator accepts whatever the client builds ------------------------------------


def stored(value: object, field: str) -> str:
    """What the pipeline stores for a string value of `field` the client sent: the value cleaned by the
    shared rules, under RARE until k sessions admit it (the registry's values are admitted at once)."""
    if value is None:
        return NONE
    cleaned = clean_value(value, field)
    return cleaned if cleaned in (INVALID, REDACTED) or Admission().admits(field, cleaned) else RARE


def expected_dimensions(event: dict) -> tuple:
    """The dimensions the pipeline must count `event` under, from what the client put in it."""
    data = event["data"]
    parser, output = data.get("parser_model") or {}, data.get("output_model") or {}
    members = data.get("member_count")
    dims = {
        "kind": event["type"],
        "sdk_version": stored(event["sdk_version"], "sdk_version"),
        **{key: stored(data.get(key), key) for key in ("model_provider", "model_name", "model_id", "db_type")},
        "parser_provider": stored(parser.get("model_provider"), "model_provider"),
        "parser_model_id": stored(parser.get("model_id"), "model_id"),
        "output_provider": stored(output.get("model_provider"), "model_provider"),
        "output_model_id": stored(output.get("model_id"), "model_id"),
        "member_bucket": member_bucket(members) if event["type"] == contract.TEAM and members is not None else NONE,
        "features": tuple(sorted(key for key, value in data.items() if key.startswith("has_") and value is True)),
    }
    run_dimensions = tuple(dims[name] for name in DIMENSIONS)
    if event["type"] not in PATTERNS:
        return run_dimensions

    def patterned(dimension, value):
        if dimension.source in ("names", "enums"):
            if value is None:
                return (NONE,)
            return tuple(
                sorted(
                    set(value)
                    if dimension.source == "enums"
                    else {stored(n, NAME_FIELDS[dimension.name]) for n in value}
                )
            )
        if dimension.source == "enum":
            return NONE if value is None else value
        return NONE if value is None else member_bucket(value)

    return (*run_dimensions, tuple(patterned(d, data.get(d.path[1])) for d in PATTERNS[event["type"]]))


def client_name(raw: object, field: str = "") -> str | None:
    return clean_value(str.__str__(raw), field) if isinstance(raw, str) else None


names = st.one_of(
    st.none(),
    st.text(max_size=120),
    st.integers(),
    st.binary(max_size=4),
    st.sampled_from(
        [
            "openai",
            "OpenAIResponses",
            "gpt-5.2",
            "claude-3.5-sonnet",
            "sk-abcdefghijklmnop",
            "me@example.com",
            "ghp_abcdefghijklmnopqrstu",
            Provider.OPENAI,
        ]
    ),
)
models = st.one_of(st.none(), st.just(False), st.builds(SimpleNamespace, provider=names, name=names, id=names))
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.just([]), st.builds(object), names)
class_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,30}", fullmatch=True)
dbs = st.one_of(st.none(), class_names.map(lambda n: type(n, (), {})()))
lists = st.one_of(st.none(), st.lists(st.builds(object), max_size=40), st.text(max_size=3), st.tuples(st.none()))
interfaces = st.lists(
    st.one_of(st.builds(SimpleNamespace, type=names), class_names.map(lambda n: type(n, (), {})())), max_size=40
)
# Teams whose members are agents, objects, or teams in turn (a few levels deep).
team_members = st.recursive(
    st.lists(st.one_of(st.builds(object), st.builds(SimpleNamespace, model=models)), max_size=4),
    lambda inner: st.lists(st.one_of(st.builds(object), st.builds(SimpleNamespace, members=inner)), max_size=4),
    max_leaves=12,
)


class Step(SimpleNamespace):
    """The SDK's workflow step classes, as the client recognises them: by their class names."""


Steps, Parallel, Condition, Loop = (
    type(name, (SimpleNamespace,), {}) for name in ("Steps", "Parallel", "Condition", "Loop")
)
Router = type("Router", (SimpleNamespace,), {})
step_leaves = st.one_of(
    st.builds(Step, agent=st.builds(object)),
    st.builds(Step, team=st.builds(object)),
    st.builds(Step, executor=st.just(print)),
    st.builds(Step),
    st.builds(SimpleNamespace, model=st.builds(object)),
    st.just(print),
    st.builds(object),
)
workflow_steps = st.recursive(
    st.lists(step_leaves, max_size=4),
    lambda inner: st.lists(
        st.one_of(
            step_leaves,
            *(st.builds(container, steps=inner) for container in (Steps, Parallel, Condition, Loop)),
            st.builds(Router, choices=inner),
        ),
        max_size=4,
    ),
    max_leaves=16,
)


@st.composite
def sdk_objects(draw) -> tuple:
    kind = draw(st.sampled_from(contract.EVENT_KINDS))
    attributes = {name: draw(anything) for name in READ[contract.AGENT] | READ[contract.TEAM]}
    attributes.update(
        model=draw(models),
        parser_model=draw(models),
        output_model=draw(models),
        db=draw(dbs),
        members=draw(st.one_of(lists, team_members)),
        telemetry=True,
        mode=draw(st.one_of(anything, st.sampled_from(["route", "coordinate", "collaborate", "tasks"]))),
        steps=draw(st.one_of(lists, workflow_steps, st.just(print))),
    )
    if kind == contract.OS:
        attributes.update(
            agents=[SimpleNamespace(db=draw(dbs)) for _ in range(draw(st.integers(0, 3)))],
            teams=draw(lists),
            workflows=draw(lists),
            interfaces=draw(st.one_of(st.none(), interfaces)),
        )
    ids = st.one_of(st.none(), st.text(max_size=40), st.integers(), st.uuids())
    return kind, SimpleNamespace(**attributes), draw(ids), draw(ids), draw(st.one_of(st.none(), st.text(max_size=30)))


@settings(max_examples=400, deadline=None)
@given(sdk_objects())
def test_every_payload_the_client_builds_is_counted_by_the_pipeline_with_its_dimensions(drawn):
    kind, obj, session_id, run_id, version = drawn
    event = build(kind, obj, session_id, run_id, payloads.name(version))
    data = event["data"]
    if kind in (contract.AGENT, contract.TEAM):
        model = obj.model if obj.model is not None and obj.model is not False else None
        for key, attribute in (("model_provider", "provider"), ("model_name", "name"), ("model_id", "id")):
            assert data[key] == (client_name(getattr(model, attribute), key) if model else None)
    if "db_type" in data:
        assert data["db_type"] == (None if obj.db is None else client_name(type(obj.db).__name__))
    tally = Tally()
    projected = EventProjector(60, 3600, 300, 65536, keys=Keys(b"k")).project(
        json.dumps(event).encode(), 1_764_000_000_000, tally
    )
    quality = tally.quality
    assert type(projected) is tuple, (projected, event)
    assert projected[1] == expected_dimensions(event)
    assert not {reason for (_, _, reason) in quality} - {"redacted_value", "invalid_value", "rare_value"}


# --- the README's examples are the client's output ---------------------------------------------------


def readme_blocks(language: str) -> list:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.DOTALL)


def test_the_readme_payload_examples_are_the_clients_output(monkeypatch, capsys):
    monkeypatch.setenv("KERN_TELEMETRY_DEBUG", "1")
    for variable in ("AGNO_TELEMETRY", "KERN_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(payloads, "IDENTIFIERS", IDS)  # the README's digests use an all-zero key
    example = next(block for block in readme_blocks("python") if block.startswith("from types import"))
    exec(compile(example, str(README), "exec"), {})
    printed = [
        json.loads(line.split(": ", 1)[1])
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("kern-telemetry debug: ")
    ]
    documented = [json.loads(block) for block in readme_blocks("json")]
    reports = [block for block in documented if block["type"] == contract.CLIENT_REPORT]
    assert [block["type"] for block in documented] == [*contract.EVENT_KINDS, contract.CLIENT_REPORT]
    assert [json.dumps(e) for e in printed] == [json.dumps(e) for e in documented if e not in reports]
    report = reports[0]
    assert json.dumps(payloads.report_event(report["data"]["dropped"], report["sdk_version"])) == json.dumps(report)


# --- the environment and the ledger ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, environment.ON),
        ({"AGNO_TELEMETRY": "false"}, environment.OFF),
        ({"AGNO_TELEMETRY": " FALSE "}, environment.OFF),
        ({"KERN_TELEMETRY": "0"}, environment.OFF),
        ({"KERN_TELEMETRY": "No"}, environment.OFF),
        ({"KERN_TELEMETRY": "off"}, environment.OFF),
        ({"AGNO_TELEMETRY": "true"}, environment.ON),
        ({"DO_NOT_TRACK": "1"}, environment.OFF),
        ({"DO_NOT_TRACK": "true"}, environment.OFF),
        ({"DO_NOT_TRACK": "0"}, environment.ON),
        ({"DO_NOT_TRACK": ""}, environment.ON),
        ({"KERN_TELEMETRY_DEBUG": "1"}, environment.DEBUG),
        ({"KERN_TELEMETRY_DEBUG": "1", "AGNO_TELEMETRY": "off"}, environment.OFF),
    ],
)
def test_the_environment_decides_on_off_and_debug(variables, expected):
    assert environment.mode(variables)[0] == expected


def test_the_ledger_is_claimed_once_and_only_what_the_client_wrote_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    ledger.save(Counter({("1.0.0", "unsent_at_exit"): 5, ("0.9.0", "queue_full"): 2}))
    ledger.save(Counter({("1.0.0", "unsent_at_exit"): 1}))
    directory = environment.state_dir()
    (directory / f"{ledger.PREFIX}junk.json").write_text(
        '{"dropped": [["1.0.0", "prompts", 9], ["x", "oversized", -1]]}'
    )
    (directory / f"{ledger.PREFIX}broken.json").write_text("{not json")
    assert ledger.claim() == Counter({("1.0.0", "unsent_at_exit"): 6, ("0.9.0", "queue_full"): 2})
    assert ledger.claim() == Counter()
    assert list(directory.iterdir()) == []


def test_the_client_sends_fine_tuned_and_cloud_model_ids_without_their_account():
    """Formats before values, already on the SDK's side: the account, project or organisation in a model
    id never leaves the host."""
    agent = Agent(
        Model("aws", "AwsBedrock", "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/a1b2c3"),
        parser_model=Model("openai", "OpenAIChat", "ft:gpt-4o-mini:acme-corp:support:AbC123"),
    )
    event = payloads.run_event(contract.AGENT, agent, "s", "r", payloads.name("2.4.0+g1a2b3c", "sdk_version"), IDS)
    assert (event["sdk_version"], event["data"]["model_id"], event["data"]["parser_model"]["model_id"]) == (
        "2.4.0",
        "aws:bedrock:provisioned-model",
        "ft:gpt-4o-mini",
    )
    assert "123456789012" not in json.dumps(event) and "acme-corp" not in json.dumps(event)
