"""Realistic SDK telemetry: the events the Kern SDKs send, in a plausible mix, plus a share of bad ones.

`EventGenerator` is seeded, so a run is reproducible. Every event carries fresh identifiers, like the
real SDKs' payloads; the pipeline must drop them; and the daily pseudonym of one of a pool of
installations (but from the oldest SDK, which predates them). Teams and workflows are stand-in objects of
realistic shapes (nested teams, coordination modes, steps with parallel branches, conditions, loops and
routers), turned into payloads by the SDK client's own builders. A small share are client reports (what an
SDK client could not deliver).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import msgspec
from kern_telemetry_client import payloads
from kern_telemetry_client.contract import DROP_REASONS

# provider -> (model class name, model ids); weights roughly follow public SDK usage.
MODELS = {
    "openai": ("OpenAIResponses", ["gpt-5.2", "gpt-5-mini", "gpt-4.1", "gpt-4o", "gpt-4o-mini", "o3", "o4-mini"]),
    "anthropic": ("Claude", ["claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5", "claude-3-7-sonnet-latest"]),
    "google": ("Gemini", ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.0-flash"]),
    "groq": ("Groq", ["llama-3.3-70b-versatile", "openai/gpt-oss-120b"]),
    "ollama": ("Ollama", ["llama3.2", "qwen2.5:7b", "mistral-nemo"]),
    "mistral": ("MistralChat", ["mistral-large-latest", "mistral-small-latest"]),
    "aws": ("AwsBedrock", ["us.anthropic.claude-sonnet-4-5-v1:0", "amazon.nova-pro-v1:0"]),
    "azure": ("AzureOpenAI", ["gpt-4.1", "gpt-4o"]),
}
PROVIDER_WEIGHTS = {
    "openai": 45,
    "anthropic": 20,
    "google": 12,
    "groq": 5,
    "ollama": 6,
    "mistral": 3,
    "aws": 5,
    "azure": 4,
}
DB_TYPES = ["PostgresDb", "SqliteDb", "MongoDb", "RedisDb", "InMemoryDb", "DynamoDb", None]
DB_WEIGHTS = [35, 30, 8, 5, 10, 2, 10]
SDK_VERSIONS = ["2.0.11", "2.1.4", "2.2.7", "2.3.2", "2.3.9", "2.4.0", "2.4.1"]
SDK_WEIGHTS = [4, 8, 12, 18, 20, 18, 20]
KIND_WEIGHTS = {"agent": 72, "team": 14, "workflow": 10, "os": 4}
INTERFACES = ["slack", "whatsapp", "a2a", "agui"]
AGENT_FLAGS = {
    "has_tools": 0.6,
    "has_memory": 0.3,
    "has_reasoning": 0.2,
    "has_knowledge": 0.25,
    "has_input_schema": 0.05,
    "has_output_schema": 0.15,
    "has_team": 0.1,
}
NEW_SDK_FLAGS = {"has_learnings": 0.1, "has_culture": 0.05}  # only sent by 2.4.x SDKs
TEAM_FLAGS = {"has_knowledge": 0.2, "has_tools": 0.5, "has_learnings": 0.05}

_encode = msgspec.json.encode
_IDS = payloads.Identifiers(bytes(32))  # the builders' digests of the stand-ins' ids (replaced per event)


class Step(SimpleNamespace):
    """Stand-ins for the SDK's workflow step classes (the client knows them by their class names)."""


Steps, Parallel, Condition, Loop, Router = (
    type(name, (SimpleNamespace,), {}) for name in ("Steps", "Parallel", "Condition", "Loop", "Router")
)
#: Workflow steps by kind, with their weights: mostly agents, then teams, functions and control flow.
STEP_WEIGHTS = {
    "agent": 50,
    "team": 10,
    "function": 20,
    "parallel": 8,
    "condition": 5,
    "loop": 4,
    "router": 2,
    "steps": 1,
}


def _invalid_events(rng: random.Random) -> list[Callable[[], bytes]]:
    """Makers of invalid events, one per DLQ class the pipeline must catch."""

    def sid() -> str:
        return uuid.UUID(int=rng.getrandbits(128)).hex

    return [
        lambda: b"this is not json",
        lambda: b"\xff\xfe\x00garbage",
        lambda: b"",
        lambda: b'["agent", "run"]',
        lambda: _encode({"session_id": sid(), "type": "agent", "sdk_version": 24, "data": {}}),
        lambda: _encode({"session_id": sid(), "type": "agent", "data": {"has_tools": "yes"}}),
        lambda: _encode({"type": "agent", "data": {"model_provider": "openai"}}),
        lambda: _encode({"session_id": sid(), "type": "assistant", "data": {}}),
        lambda: _encode({"session_id": sid(), "type": "agent", "data": {"blob": "x" * 70_000}}),
    ]


DEFAULT_PROFILES = 12_000  # app configurations: about 10,000 distinct dimension sets
DEFAULT_INSTALLATIONS = 2_000
_OPEN_SESSIONS = 1_000


class EventGenerator:
    """Events from a pool of `profiles` app configurations (kind, SDK, model, db, flags), picked with a
    skewed popularity: a few configurations send most events, as in real traffic. The pool size bounds
    the distinct dimension sets (about 10,000 by default)."""

    def __init__(
        self,
        seed: int = 7,
        invalid_share: float = 0.02,
        profiles: int = DEFAULT_PROFILES,
        timestamp_share: float = 0.1,
        report_share: float = 0.002,
        private_share: float = 0.005,
        installations: int = DEFAULT_INSTALLATIONS,
        runs_per_session: float = 1.0,
    ):
        """`runs_per_session`: 1 gives every event a session of its own (the worst case for distinct
        sessions); more draws events from a pool of open sessions, each closing after that many runs on
        average, as SDK sessions (a chat, a job) carry several runs."""
        self.rng = random.Random(seed)
        self._session_end = 1 / runs_per_session  # the chance a session closes after a run
        self._open_sessions: list[str] = []
        self.private_share = private_share  # runs with a model id or a flag of one user's own (stored as rare)
        self.invalid_share = invalid_share
        self.report_share = report_share  # client reports of dropped events among the valid events
        self.timestamp_share = timestamp_share  # share of events that carry their own timestamp
        self._invalid = _invalid_events(self.rng)
        self._providers = list(PROVIDER_WEIGHTS)
        self._provider_weights = list(PROVIDER_WEIGHTS.values())
        self._kinds = list(KIND_WEIGHTS)
        self._kind_weights = list(KIND_WEIGHTS.values())
        self._profiles = [self._profile() for _ in range(profiles)]
        self._installations = [self._id() for _ in range(installations)]
        weights = [1 / (rank + 10) for rank in range(profiles)]  # Zipf-like popularity
        self._cum_weights = _cumulative(weights)

    def events(self, count: int) -> Iterator[bytes]:
        for _ in range(count):
            yield self.event()

    def event(self) -> bytes:
        rng = self.rng
        if rng.random() < self.invalid_share:
            return rng.choice(self._invalid)()
        if rng.random() < self.report_share:
            return _encode(self.client_report())
        return _encode(self.payload())

    def payload(self) -> dict:
        """A valid event with fresh identifiers, from a randomly picked profile."""
        rng = self.rng
        kind, sdk, data, id_field = rng.choices(self._profiles, cum_weights=self._cum_weights)[0]
        event: dict[str, Any] = {
            "session_id": self._session(),
            "run_id": self._id(),
            "sdk_version": sdk,
            "type": kind,
            "data": dict(data),
        }
        if sdk != SDK_VERSIONS[0]:
            event["installation"] = self._installations[rng.randrange(len(self._installations))]
        event["data"][id_field] = self._id()
        if kind == "os" and rng.random() < 0.3:
            del event["session_id"]  # older SDKs send launches without a session
        if kind != "os" and rng.random() < self.private_share:  # one user's own fine-tune or feature flag
            private = f"acme-{rng.getrandbits(48):012x}"
            if rng.random() < 0.5:
                event["data"]["model_id"] = private
            else:
                event["data"][f"has_{private.replace('-', '_')}"] = True
        if rng.random() < self.timestamp_share:
            event["timestamp"] = round(time.time() - rng.random() * 5, 3)
        return event

    def client_report(self) -> dict:
        """What a client reports it dropped since its last report (most reports carry one reason)."""
        rng = self.rng
        dropped = {reason: rng.randint(1, 200) for reason in rng.sample(DROP_REASONS, rng.choice((1, 1, 1, 2)))}
        return {
            "type": "client_report",
            "sdk_version": rng.choices(SDK_VERSIONS, SDK_WEIGHTS)[0],
            "data": {"dropped": dropped},
        }

    def _profile(self) -> tuple[str, str, dict, str]:
        rng = self.rng
        kind = rng.choices(self._kinds, self._kind_weights)[0]
        sdk = rng.choices(SDK_VERSIONS, SDK_WEIGHTS)[0]
        if kind == "os" and sdk == SDK_VERSIONS[0]:
            return kind, sdk, {}, "os_id"  # the oldest SDK sends no configuration
        if kind == "os":
            return (
                kind,
                sdk,
                {
                    "agent_count": rng.randint(1, 12),
                    "team_count": rng.randint(0, 3),
                    "workflow_count": rng.randint(0, 2),
                    "interfaces": sorted(rng.sample(INTERFACES, rng.randint(0, 2))),
                    "db_types": sorted(
                        {rng.choices(DB_TYPES[:-1], DB_WEIGHTS[:-1])[0] for _ in range(rng.randint(1, 2))}
                    ),
                },
                "os_id",
            )
        if kind in ("team", "workflow"):
            built = payloads.run_event(
                kind, self._team() if kind == "team" else self._workflow(), None, None, sdk, _IDS
            )["data"]
            if sdk == SDK_VERSIONS[0]:  # the oldest SDK predates coordination and orchestration patterns
                for field in ("coordination", "member_team_count", "step_count", "step_kinds", "nesting_depth"):
                    built.pop(field, None)
            return kind, sdk, built, f"{kind}_id"
        data: dict = {"db_type": rng.choices(DB_TYPES, DB_WEIGHTS)[0]}
        data.update(self._model())
        data["parser_model"] = self._model() if rng.random() < 0.08 else None
        data["output_model"] = self._model() if rng.random() < 0.05 else None
        flags = dict(AGENT_FLAGS, **NEW_SDK_FLAGS) if sdk.startswith("2.4") else AGENT_FLAGS
        for flag, share in flags.items():
            data[flag] = rng.random() < share
        return kind, sdk, data, f"{kind}_id"

    def _db(self) -> object:
        name = self.rng.choices(DB_TYPES, DB_WEIGHTS)[0]
        return None if name is None else type(name, (), {})()

    def _model_object(self) -> SimpleNamespace:
        model = self._model()
        return SimpleNamespace(provider=model["model_provider"], name=model["model_name"], id=model["model_id"])

    def _agent(self) -> SimpleNamespace:
        return SimpleNamespace(model=self._model_object(), tools=[print] if self.rng.random() < 0.6 else None)

    def _team(self, depth: int = 0) -> SimpleNamespace:
        """A team of 2-12 members, some of them teams (rarely nested deeper); it routes, coordinates or
        collaborates, through the v2 switches or (older SDKs) a v1 mode."""
        rng = self.rng
        members = [self._agent() for _ in range(rng.choices([2, 3, 4, 5, 8, 12], [30, 30, 15, 10, 10, 5])[0])]
        if depth < 2 and rng.random() < (0.15 if depth == 0 else 0.2):
            members[0] = self._team(depth + 1)
        team = SimpleNamespace(
            members=members,
            model=self._model_object(),
            db=self._db(),
            tools=[print] if rng.random() < TEAM_FLAGS["has_tools"] else None,
            knowledge=object() if rng.random() < TEAM_FLAGS["has_knowledge"] else None,
            learning=object() if rng.random() < TEAM_FLAGS["has_learnings"] else None,
        )
        style = rng.choices(["coordinate", "route", "collaborate", "v1"], [50, 25, 15, 10])[0]
        if style == "route":
            team.respond_directly = True
        elif style == "collaborate":
            team.delegate_to_all_members = True
        elif style == "v1":
            team.mode = rng.choice(["route", "coordinate", "collaborate"])
        return team

    def _workflow(self) -> SimpleNamespace:
        """A workflow of 1-8 steps: agents, teams and functions, some inside parallel branches, conditions,
        loops or routers; a few workflows are one function."""
        rng = self.rng
        if rng.random() < 0.05:
            return SimpleNamespace(db=self._db(), steps=print)
        return SimpleNamespace(
            db=self._db(),
            steps=[self._step(0) for _ in range(rng.choices(range(1, 9), [10, 25, 25, 15, 10, 7, 5, 3])[0])],
        )

    def _step(self, depth: int) -> object:
        rng = self.rng
        kind = rng.choices(list(STEP_WEIGHTS), list(STEP_WEIGHTS.values()))[0]
        if kind == "agent":
            return Step(agent=self._agent())
        if kind == "team":
            return Step(team=self._team(1))
        if kind == "function" or depth >= 2:
            return Step(executor=print)
        inner = [self._step(depth + 1) for _ in range(rng.randint(1, 3))]
        if kind == "router":
            return Router(choices=inner)
        return {"parallel": Parallel, "condition": Condition, "loop": Loop, "steps": Steps}[kind](steps=inner)

    def _model(self) -> dict:
        provider = self.rng.choices(self._providers, self._provider_weights)[0]
        name, ids = MODELS[provider]
        return {"model_provider": provider, "model_name": name, "model_id": self.rng.choice(ids)}

    def _id(self) -> str:
        return uuid.UUID(int=self.rng.getrandbits(128)).hex

    def _session(self) -> str:
        """A session from the pool of open ones (1,000), which closes after this run with probability
        1 / runs_per_session and is replaced by a new one."""
        if self._session_end >= 1:
            return self._id()
        sessions, rng = self._open_sessions, self.rng
        if len(sessions) < _OPEN_SESSIONS:
            sessions.append(self._id())
        index = rng.randrange(len(sessions))
        session = sessions[index]
        if rng.random() < self._session_end:
            sessions[index] = self._id()
        return session


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for weight in weights:
        total += weight
        out.append(total)
    return out
