"""Stand-ins for the SDK's objects and helpers shared by the client's tests (no tests here).

Every attribute that is not a dimension (a model's provider, name and id, a database's class name, an
interface's type) holds a sentinel string, so a test can show that none of them reaches a payload, a
Kafka record or a ClickHouse table. Identifiers hold sentinels too: they may only travel as digests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

SENTINEL = "SNTNL7q"  # never produced by anything else


def sentinel(label: str) -> str:
    return f"{SENTINEL}-{label}"


class Model:
    def __init__(self, provider: str, name: str, id: str):
        self.provider, self.name, self.id = provider, name, id
        self.api_key = f"sk-{sentinel('api-key')}"
        self.base_url = f"https://user:{sentinel('password')}@llm.example.com/v1"
        self.system_prompt = sentinel("system-prompt")


class PostgresDb:
    def __init__(self):
        self.db_url = f"postgresql://kern:{sentinel('db-password')}@db:5432/agents"
        self.session_table = sentinel("table")


class SqliteDb:
    def __init__(self):
        self.db_file = f"/home/{sentinel('user')}/agents.db"


class Tool:
    def __init__(self):
        self.name = sentinel("tool-name")
        self.description = sentinel("tool-description")
        self.last_args = {"query": sentinel("tool-args")}


class Knowledge:
    def __init__(self):
        self.urls = [f"https://{sentinel('kb-host')}.example.com"]
        self.contents = [sentinel("document")]


class MemoryManager:
    def __init__(self):
        self.memories = [sentinel("user-memory")]
        self.user_id = f"{sentinel('user')}@example.com"


class Agent:
    def __init__(
        self,
        model: Model | None,
        db: object = None,
        tools: list | None = None,
        memory_manager: object = None,
        reasoning: bool = False,
        knowledge: object = None,
        input_schema: object = None,
        output_schema: object = None,
        team_id: str | None = None,
        parser_model: Model | None = None,
        output_model: Model | None = None,
        learning: object = None,
        culture_manager: object = None,
        telemetry: bool = True,
    ):
        self.id = sentinel("agent-id")
        self.name = sentinel("agent-name")
        self.model, self.db, self.tools = model, db, tools
        self.memory_manager, self.reasoning, self.knowledge = memory_manager, reasoning, knowledge
        self.input_schema, self.output_schema, self.team_id = input_schema, output_schema, team_id
        self.parser_model, self.output_model = parser_model, output_model
        self.learning, self.culture_manager, self.telemetry = learning, culture_manager, telemetry
        self.enable_agentic_memory = self.update_memory_on_run = False
        self.instructions = [sentinel("instructions")]
        self.description = sentinel("description")
        self.additional_context = sentinel("context")
        self.user_id = f"{sentinel('user')}@example.com"
        self.session_state = {"cart": sentinel("session-state")}
        self.dependencies = {"api_token": sentinel("token")}
        self.last_prompt = sentinel("prompt")
        self.last_response = sentinel("response")


class Team:
    def __init__(
        self,
        model: Model | None,
        members: list,
        db: object = None,
        tools: list | None = None,
        knowledge: object = None,
        learning: object = None,
        telemetry: bool = True,
    ):
        self.id = sentinel("team-id")
        self.name = sentinel("team-name")
        self.model, self.members, self.db, self.tools = model, members, db, tools
        self.knowledge, self.learning, self.telemetry = knowledge, learning, telemetry
        self.parser_model = self.output_model = None
        self.instructions = sentinel("team-instructions")
        self.session_state = {"plan": sentinel("team-state")}


class Workflow:
    def __init__(self, db: object = None, telemetry: bool = True):
        self.id = sentinel("workflow-id")
        self.name = sentinel("workflow-name")
        self.db, self.telemetry = db, telemetry
        self.steps = [sentinel("step")]
        self.input_schema = {"field": sentinel("schema")}


class Slack:
    type = "slack"

    def __init__(self):
        self.token = f"xoxb-{sentinel('slack-token')}"


class Whatsapp:
    type = "whatsapp"

    def __init__(self):
        self.phone_number = sentinel("phone")


class AgentOS:
    def __init__(
        self, agents: list, teams: list, workflows: list, interfaces: list, db: object = None, telemetry: bool = True
    ):
        self.id = sentinel("os-id")
        self.name = sentinel("os-name")
        self.description = sentinel("os-description")
        self.agents, self.teams, self.workflows = agents, teams, workflows
        self.interfaces, self.db, self.telemetry = interfaces, db, telemetry
        self.base_url = f"https://{sentinel('os-host')}.example.com"


class Raising:
    """An object every attribute read of which raises (a broken property, a lazy loader failing)."""

    def __getattribute__(self, name: str) -> object:
        raise RuntimeError(sentinel(f"raised-{name}"))


# --- fresh interpreters -------------------------------------------------------------------------------

TELEMETRY_VARIABLES = ("AGNO_TELEMETRY", "KERN_TELEMETRY", "DO_NOT_TRACK", "KERN_TELEMETRY_DEBUG")


def client_env(tmp: Path, notice_shown: bool = True, **variables: str) -> dict:
    """The environment of a host process: no telemetry variable but `variables`, its own config and state
    directories (the notice already shown unless `notice_shown` is False), these stand-ins importable."""
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY_VARIABLES}
    env.update(
        XDG_CONFIG_HOME=str(tmp / "config"),
        XDG_STATE_HOME=str(tmp / "state"),
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]),
    )
    if notice_shown:
        (tmp / "config" / "kern").mkdir(parents=True, exist_ok=True)
        (tmp / "config" / "kern" / "telemetry-notice-shown").touch()
    env.update(variables)
    return env


class Ran(NamedTuple):
    stdout: str
    stderr: str
    returncode: int
    ended: float  # time.monotonic() when the process had exited (one clock for every process here)


def run_python(code: str, env: dict, timeout: float = 60.0, flags: tuple = ()) -> Ran:
    """`code` in a fresh interpreter, with interpreter `flags` (`-W error`, `-X dev`, ...)."""
    done = subprocess.run(
        [sys.executable, *flags, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
    return Ran(done.stdout, done.stderr, done.returncode, time.monotonic())


# A host that captures `count` agent runs and ends, printing when its captures were done.
HOST = r"""
import sys, time
from kern_telemetry_client import KafkaSink, Telemetry
from test_sdk_standins import Agent, Model

bootstrap, topic, exit_timeout, version, count = sys.argv[1:6]
options = {} if exit_timeout == "default" else {"exit_timeout": float(exit_timeout)}
telemetry = Telemetry(version, KafkaSink(bootstrap, topic), **options)
agent = Agent(Model("openai", "OpenAIResponses", "gpt-5.2"))
for i in range(int(count)):
    telemetry.agent_run(agent, "session", f"run-{i}")
print(time.monotonic(), flush=True)
"""


def host(env: dict, bootstrap: str, topic: str, exit_timeout: str, version: str, count: int) -> Ran:
    """HOST in a fresh interpreter (`exit_timeout` "default" or seconds)."""
    argv = ["host", bootstrap, topic, exit_timeout, version, str(count)]
    return run_python(f"import sys; sys.argv = {argv!r}\n" + HOST, env)


# A host under interpreter flags (`-W error`, `-X dev`): captures `count` runs through a Kafka or HTTP sink,
# flushes (`wait` s), closes, then raises a DeprecationWarning of its own (its filters still apply to it);
# prints the flush's outcome, what became of its own warning, and the client's stats.
WARNED_HOST = r"""
import dataclasses, json, sys, warnings
from kern_telemetry_client import HttpSink, KafkaSink, Telemetry
from test_sdk_standins import Agent, Model

kind, address, topic, count, wait = sys.argv[1:6]
telemetry = Telemetry("1.0.0", KafkaSink(address, topic) if kind == "kafka" else HttpSink(address))
agent = Agent(Model("openai", "OpenAIResponses", "warned"))
for i in range(int(count)):
    telemetry.agent_run(agent, "session", f"run-{i}")
flushed = telemetry.flush(float(wait))
telemetry.close(0.5)
try:
    warnings.warn("the host's own", DeprecationWarning)
    own = "not raised"
except DeprecationWarning:
    own = "raised"
print(json.dumps({"flushed": flushed, "own": own, **dataclasses.asdict(telemetry.stats())}))
"""

#: What each interpreter flag makes of the host's own warning: (WARNED_HOST's "own", its stderr)
WARNING_FLAGS = {
    ("-W", "error"): ("raised", ""),
    ("-X", "dev"): ("not raised", "<string>:15: DeprecationWarning: the host's own\n"),
}


def warned_host(env: dict, flags: tuple, kind: str, address: str, topic: str, count: int, wait: float) -> tuple:
    """WARNED_HOST in a fresh interpreter with `flags`: (what it printed, its stderr)."""
    argv = ["host", kind, address, topic, str(count), str(wait)]
    ran = run_python(f"import sys; sys.argv = {argv!r}\n" + WARNED_HOST, env, flags=flags)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout), ran.stderr
