"""End to end: stand-in agents, teams, workflows and an AgentOS, with sentinel strings in every attribute
but the dimensions, run through the client to the embedded broker and the real worker into ClickHouse.
Exact counts per kind, provider, model and flag; no sentinel in any Kafka record or ClickHouse table;
with telemetry off, no record at all."""

from __future__ import annotations

from collections import Counter

import pytest
from kern_telemetry_client import KafkaSink, Telemetry
from kern_telemetry_client.values import NONE
from test_sdk_standins import (
    SENTINEL,
    Agent,
    AgentOS,
    Knowledge,
    MemoryManager,
    Model,
    PostgresDb,
    Slack,
    SqliteDb,
    Team,
    Tool,
    Whatsapp,
    Workflow,
    client_env,
    host,
    sentinel,
)

from pipeline.dimensions import NAMES as DIMENSIONS

pytestmark = pytest.mark.integration

VERSION = "2.1.0"
GPT = ("openai", "OpenAIResponses", "gpt-5.2")
CLAUDE = ("anthropic", "Claude", "claude-sonnet-4-5")
GEMINI = ("google", "Gemini", "gemini-2.5-flash")


def dims(
    kind: str, model=(NONE,) * 3, db=NONE, parser=(NONE, NONE), output=(NONE, NONE), members=NONE, features=()
) -> tuple:
    values = {
        "kind": kind,
        "sdk_version": VERSION,
        "model_provider": model[0],
        "model_name": model[1],
        "model_id": model[2],
        "db_type": db,
        "parser_provider": parser[0],
        "parser_model_id": parser[1],
        "output_provider": output[0],
        "output_model_id": output[1],
        "member_bucket": members,
        "features": tuple(sorted(features)),
    }
    return tuple(values[name] for name in DIMENSIONS)


def scenario() -> list:
    """(call, object, runs, the dimensions the pipeline must count them under)."""
    plain = Agent(Model(*GPT), db=PostgresDb(), tools=[Tool()], memory_manager=MemoryManager())
    loaded = Agent(
        Model(*CLAUDE),
        db=SqliteDb(),
        reasoning=True,
        knowledge=Knowledge(),
        input_schema=dict,
        output_schema=dict,
        team_id=sentinel("team"),
        parser_model=Model("openai", "OpenAIResponses", "gpt-5-mini"),
        output_model=Model(*GPT),
        learning=True,
        culture_manager=object(),
    )
    bare = Agent(Model(*GEMINI))
    small = Team(Model(*GPT), members=[plain, bare], db=PostgresDb(), tools=[Tool()])
    large = Team(Model(*CLAUDE), members=[plain] * 6, knowledge=Knowledge(), learning=True)
    stored = Workflow(db=PostgresDb())
    agent_os = AgentOS([plain, loaded], [small], [stored], [Slack(), Whatsapp()], db=SqliteDb())
    return [
        ("agent_run", plain, 40, dims("agent", GPT, "PostgresDb", features=("has_memory", "has_tools"))),
        (
            "agent_run",
            loaded,
            25,
            dims(
                "agent",
                CLAUDE,
                "SqliteDb",
                ("openai", "gpt-5-mini"),
                ("openai", "gpt-5.2"),
                features=(
                    "has_reasoning",
                    "has_knowledge",
                    "has_input_schema",
                    "has_output_schema",
                    "has_team",
                    "has_learnings",
                    "has_culture",
                ),
            ),
        ),
        ("agent_run", bare, 15, dims("agent", GEMINI)),
        ("team_run", small, 20, dims("team", GPT, "PostgresDb", members="2", features=("has_tools",))),
        ("team_run", large, 10, dims("team", CLAUDE, members="5-8", features=("has_knowledge", "has_learnings"))),
        ("workflow_run", stored, 12, dims("workflow", db="PostgresDb")),
        ("workflow_run", Workflow(), 8, dims("workflow")),
        ("os_launch", agent_os, 2, dims("os")),
    ]


def capture(telemetry: Telemetry) -> list:
    """Every run and launch of the scenario, captured by `telemetry`, with sentinels in the identifiers;
    returns the scenario."""
    calls = scenario()
    for call, obj, runs, _ in calls:
        for i in range(runs):
            if call == "os_launch":
                telemetry.os_launch(obj)
            else:
                getattr(telemetry, call)(obj, f"{sentinel('user')}-{i}@example.com", sentinel(f"run-{i}"))
    return calls


def test_runs_of_every_kind_land_in_clickhouse_with_exact_counts_and_no_sentinel(stack_factory, tmp_path, monkeypatch):
    stack = stack_factory(partitions=2)
    bootstrap, topic = stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic
    off = host(client_env(tmp_path / "off", AGNO_TELEMETRY="false"), bootstrap, topic, "default", VERSION, 200)
    assert off.returncode == 0 and off.stderr == ""  # ... and it sent nothing: the count below is exact

    for name, value in client_env(tmp_path / "on").items():
        monkeypatch.setenv(name, value)
    telemetry = Telemetry(VERSION, KafkaSink(bootstrap, topic))
    expected: Counter = Counter()
    for _, _, runs, dimensions in capture(telemetry):
        expected[dimensions] += runs
    telemetry.close(10.0)

    records = stack.read_topic(topic, sum(expected.values()))
    assert not [r for r in records if SENTINEL.encode() in r.value or r.key is not None]
    end_offsets = Counter()
    for record in records:
        end_offsets[record.partition] = max(end_offsets[record.partition], record.offset + 1)
    worker = stack.worker()
    worker.wait_flushed(dict(end_offsets))
    worker.stop()
    stack.read_topic(stack.settings.dlq_topic, 0)  # nothing dead-lettered

    with stack.clickhouse() as client:
        rows = client.query(
            f"SELECT {', '.join(DIMENSIONS)}, sum(runs) FROM kern_telemetry.runs_minute GROUP BY ALL"
        ).result_rows
        assert Counter({(*row[:-2], tuple(row[-2])): row[-1] for row in rows}) == expected
        flags = client.query(
            "SELECT flag, sum(runs) FROM kern_telemetry.runs_minute ARRAY JOIN features AS flag GROUP BY flag"
        ).result_rows
        expected_flags = Counter()
        for dimensions, runs in expected.items():
            for flag in dimensions[-1]:
                expected_flags[flag] += runs
        assert dict(flags) == expected_flags
        tables = client.query("SELECT name FROM system.tables WHERE database = 'kern_telemetry'").result_rows
        assert len(tables) > 5
        for (table,) in tables:
            content = client.raw_query(f"SELECT * FROM kern_telemetry.`{table}`", fmt="TabSeparated").decode("latin-1")
            assert SENTINEL not in content, table
