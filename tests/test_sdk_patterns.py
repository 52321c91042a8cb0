"""Team coordination and workflow orchestration patterns as the SDK client builds them (`payloads.py`), from
stand-ins of every shape: flat, nested, empty, cyclic, huge and hostile. Only counts and the contract's
enumerations leave; a shape costs a bounded walk; a read that raises nulls its field, never the host."""

from __future__ import annotations

import enum
from types import SimpleNamespace as Obj

import pytest
from kern_telemetry_client import contract, payloads

IDS = payloads.Identifiers(bytes(32))
PATTERN_FIELDS = ("coordination", "member_team_count", "nesting_depth", "step_count", "step_kinds")


def pattern(kind: str, obj: object) -> dict:
    data = payloads.run_event(kind, obj, "s", "r", "1.0.0", IDS)["data"]
    return {field: data[field] for field in PATTERN_FIELDS if field in data}


def agent() -> Obj:
    return Obj(model=Obj(provider="openai", name="OpenAIResponses", id="gpt-5.2"))


def team(*members: object, **attributes: object) -> Obj:
    return Obj(members=list(members), **attributes)


class Mode(str, enum.Enum):
    ROUTE = "route"


class Step(Obj):
    pass


Steps, Parallel, Condition, Loop, Router = (
    type(name, (Obj,), {}) for name in ("Steps", "Parallel", "Condition", "Loop", "Router")
)


class Raising:
    """An object whose every attribute read raises (a broken property, a lazy loader)."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError(f"{name} is not loaded")


@pytest.mark.parametrize(
    ("shape", "obj", "expected"),
    [
        ("flat, the default", team(agent(), agent()), ("coordinate", 0, 0)),
        ("v2: responds directly", team(agent(), respond_directly=True), ("route", 0, 0)),
        ("v2: delegates to all", team(agent(), delegate_to_all_members=True), ("collaborate", 0, 0)),
        ("v2.0's name for it", team(agent(), delegate_task_to_all_members=True), ("collaborate", 0, 0)),
        ("v1 mode", team(agent(), mode="collaborate"), ("collaborate", 0, 0)),
        ("v1 mode as a str enum", team(agent(), mode=Mode.ROUTE), ("route", 0, 0)),
        ("a mode this client does not know", team(agent(), mode="hierarchical"), ("other", 0, 0)),
        ("a switch that is not True", team(agent(), respond_directly="yes"), ("coordinate", 0, 0)),
        ("nested three levels", team(agent(), team(team(team(agent())))), ("coordinate", 1, 3)),
        ("two sub-teams", team(team(agent()), team(team(agent())), agent()), ("coordinate", 2, 2)),
        ("empty", team(), ("coordinate", 0, 0)),
        ("members not a list", Obj(members="agent-1,agent-2"), (None, None, None)),
        ("no members at all", Obj(), (None, None, None)),
    ],
)
def test_a_team_is_reduced_to_its_coordination_its_member_teams_and_its_depth(shape, obj, expected):
    found = pattern(contract.TEAM, obj)
    assert (found["coordination"], found["member_team_count"], found["nesting_depth"]) == expected, shape
    assert found["coordination"] in (*contract.COORDINATION, None)


def test_cyclic_teams_are_walked_once():
    first, second = team(agent()), team(agent())
    first.members.append(second)
    second.members.append(first)
    itself = team(agent())
    itself.members.append(itself)
    assert pattern(contract.TEAM, first)["nesting_depth"] == 1 and pattern(contract.TEAM, itself)["nesting_depth"] == 0
    assert pattern(contract.TEAM, itself)["member_team_count"] == 1


def test_a_huge_or_deep_team_costs_a_bounded_walk():
    reads = []

    class Counted(Obj):
        def __getattribute__(self, name: str) -> object:
            if name == "members":
                reads.append(1)
            return super().__getattribute__(name)

    wide = team(*(Counted(members=[agent()]) if i % 20 == 0 else agent() for i in range(100_000)))
    found = pattern(contract.TEAM, wide)
    assert (found["member_team_count"], found["nesting_depth"]) == (5_000, 1)
    # each sub-team's members read to count it, to walk past it, and (within the node budget) to walk into it
    assert len(reads) <= 2 * 5_000 + payloads._MAX_NODES
    deep = team(agent())
    for _ in range(100):
        deep = team(deep)
    assert pattern(contract.TEAM, deep)["nesting_depth"] == payloads._MAX_DEPTH


def test_a_team_whose_reads_raise_loses_those_fields_only():
    assert pattern(contract.TEAM, Raising()) == {"coordination": None, "member_team_count": None, "nesting_depth": None}
    broken = team(agent(), Raising())
    assert pattern(contract.TEAM, broken) == {
        "coordination": "coordinate",
        "member_team_count": None,
        "nesting_depth": None,
    }


@pytest.mark.parametrize(
    ("shape", "obj", "expected"),
    [
        ("a sequence", Obj(steps=[Step(agent=agent()), Step(executor=print)]), (2, ["agent", "function"], 0)),
        (
            "agents, teams and functions as steps",
            Obj(steps=[agent(), team(agent()), print, object()]),
            (4, ["agent", "function", "other", "team"], 0),
        ),
        (
            "nested control flow",
            Obj(steps=[Parallel(steps=[Condition(steps=[Loop(steps=[Step(team=team())])])])]),
            (1, ["condition", "loop", "parallel", "team"], 3),
        ),
        (
            "a router and nested steps",
            Obj(steps=[Router(choices=[Step(agent=agent()), Steps(steps=[print])]), print]),
            (2, ["function", "router", "steps", "agent"], 2),
        ),
        ("a step that runs nothing", Obj(steps=[Step()]), (1, ["other"], 0)),
        ("empty", Obj(steps=[]), (0, [], 0)),
        ("one function", Obj(steps=print), (None, ["function"], None)),
        ("no steps", Obj(steps=None), (None, None, None)),
        ("steps not a list", Obj(steps="classify, answer"), (None, None, None)),
    ],
)
def test_a_workflow_is_reduced_to_its_length_its_step_kinds_and_its_depth(shape, obj, expected):
    found = pattern(contract.WORKFLOW, obj)
    count, kinds, depth = expected
    assert (found["step_count"], found["step_kinds"], found["nesting_depth"]) == (
        count,
        None if kinds is None else sorted(kinds),
        depth,
    ), shape
    assert set(found["step_kinds"] or ()) <= set(contract.STEP_KINDS)


def test_cyclic_deep_or_hostile_steps_cost_a_bounded_walk_and_never_raise():
    loop = Loop(steps=[Step(agent=agent())])
    loop.steps.append(loop)
    assert pattern(contract.WORKFLOW, Obj(steps=[loop])) == {
        "step_count": 1,
        "step_kinds": ["agent", "loop"],
        "nesting_depth": 1,
    }
    deep: object = Step(executor=print)
    for _ in range(100):
        deep = Steps(steps=[deep])
    assert pattern(contract.WORKFLOW, Obj(steps=[deep]))["nesting_depth"] == payloads._MAX_DEPTH
    wide = Obj(steps=[Parallel(steps=[Step(agent=agent()) for _ in range(50_000)])])
    assert pattern(contract.WORKFLOW, wide)["step_kinds"] == ["agent", "parallel"]
    assert pattern(contract.WORKFLOW, Obj(steps=[Raising()])) == {
        "step_count": 1,
        "step_kinds": None,
        "nesting_depth": None,
    }
