"""Every free-text field through the same format rules (issue 18): public model ids survive byte for byte and
no private shape (a cloud resource id, a host name, a local path, an address, a token, a credential, an
identifier) survives verbatim, nor its private part, in any field, both in what the SDK client builds and in
what the worker stores. The worker is given an admission that admits every value, as if k sessions had sent
it: what it would then store is what the value rules let through."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from kern_telemetry_client import contract, payloads
from kern_telemetry_client.values import clean_value
from test_value_rules_linear import key_strings

from pipeline.admission import Admission, Keys
from pipeline.dimensions import NAMES
from pipeline.projector import EventProjector, Tally

PUBLIC = [
    "gpt-4.1",
    "gpt-4o-mini",
    "gpt-5.2",
    "gpt-4o-2024-08-06",
    "o3-mini",
    "o1-preview",
    "chatgpt-4o-latest",
    "text-embedding-3-small",
    "text-embedding-ada-002",
    "whisper-1",
    "dall-e-3",
    "claude-3.5-sonnet",
    "claude-3-5-sonnet-20241022",
    "claude-sonnet-4-5",
    "claude-opus-4-1-20250805",
    "claude-3-7-sonnet-latest",
    "claude-3-5-sonnet-v2@20241022",
    "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
    "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
    "gemini-2.5-pro",
    "gemini-1.5-flash-002",
    "gemini-2.0-flash-exp",
    "gemini-2.5-flash-lite",
    "gemma3:27b",
    "gemma-2-9b-it",
    "llama3.1:8b",
    "llama3.2",
    "llama-3.3-70b-versatile",
    "meta-llama/Llama-3.1-8B-Instruct",
    "meta.llama3-1-70b-instruct-v1:0",
    "mistral-large-2411",
    "mistral-small-latest",
    "codestral-2501",
    "mixtral-8x7b-32768",
    "mistralai/Mistral-7B-Instruct-v0.3",
    "mistral.mistral-large-2407-v1:0",
    "qwen2.5:7b",
    "qwen3-coder:480b-a35b-instruct",
    "Qwen/Qwen2.5-72B-Instruct",
    "deepseek-r1:14b",
    "deepseek-chat",
    "deepseek-ai/DeepSeek-R1",
    "openai/gpt-oss-120b",
    "gpt-oss:20b",
    "amazon.nova-pro-v1:0",
    "amazon.titan-embed-text-v2:0",
    "cohere.command-r-plus-v1:0",
    "ai21.jamba-1-5-large-v1:0",
    "command-r-plus-08-2024",
    "grok-4",
    "grok-3-mini",
    "x-ai/grok-4",
    "kimi-k2-instruct",
    "glm-4.5-air",
    "sonar-pro",
    "phi-3.5-mini",
    "phi4-mini:3.8b",
    "microsoft/Phi-3.5-mini-instruct",
    "granite3.3:8b",
    "nemotron-mini",
    "nomic-embed-text:v1.5",
    "mxbai-embed-large",
    "all-MiniLM-L6-v2",
    "tiny.en",
    "openai",
    "azure_openai",
    "aws",
    "OpenAIResponses",
    "AzureOpenAI",
    "AwsBedrock",
    "PostgresDb",
    "slack",
]

#: Private shapes, each with the part of it that must never be stored (its organisation, user, address...).
PRIVATE = {
    "ft:gpt-4o-mini:acme-corp::abc123": "acme-corp",
    "ft:gpt-4o-mini-2024-07-18:acme-corp:support:9aBcDeF": "acme-corp",
    "curie:ft-acme-corp-2023-01-01-00-00-00": "acme-corp",
    "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/acme-x1": "123456789012",
    "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/acme-profile": "acme-profile",
    "arn:aws:sagemaker:eu-west-1:123456789012:endpoint/acme-llm": "acme-llm",
    "projects/acme-corp-123/locations/us-central1/endpoints/1234567890": "acme-corp",
    "projects/acme-corp/locations/us-central1/publishers/google/models/gemini-2.5-pro": "acme-corp",
    "acme-corp/support-llama:8b": "acme-corp",
    "hf.co/acme-corp/Llama-3-8B-GGUF:Q4_K_M": "acme-corp",
    "registry.acme-corp.com/ml/llama3:8b": "acme-corp",
    "acme-corp.openai.azure.com": "acme-corp",
    "https://acme-corp.openai.azure.com/openai/deployments/gpt-4o": "acme-corp",
    "acme-corp.services.ai.azure.com": "acme-corp",
    "api.acme-corp.com/v1/chat": "acme-corp",
    "api.acme-corp.com:8443": "acme-corp",
    "bedrock-runtime.us-east-1.amazonaws.com": "amazonaws",
    "us-central1-aiplatform.googleapis.com": "googleapis",
    "ollama.acme.internal:11434": "acme",
    "gpu-box.local": "gpu-box",
    "llm.acme.corp": "acme",
    "nas.lan": "nas",
    "carols-mac.home": "carol",
    "localhost:11434": "localhost",
    "10.0.0.7": "10.0.0.7",
    "10.0.0.7:11434": "10.0.0.7",
    "model-192.168.1.10": "192.168",
    "fe80::1ff:fe23:4567:890a": "fe80",
    "::1": "::1",
    "::ffff:10.0.0.1": "10.0.0.1",
    "[2001:db8::8a2e:370:7334]:8080": "2001",
    "carol@acme-corp.com": "carol",
    "carol@acme-intranet": "carol",
    "carol:hunter2@acme-corp": "hunter2",
    "postgres://app:hunter2@db.acme.internal:5432/x": "hunter2",
    "/home/carol/models/acme.gguf": "carol",
    "C:\\Users\\carol\\models\\acme.gguf": "carol",
    "~/models/carol-acme.gguf": "carol",
    "./carol/model.gguf": "carol",
    "sk-proj-AbCdEf1234567890acme": "AbCdEf1234567890",
    "Bearer eyJhbGciOiJIUzI1NiJ9acme": "eyJhbGciOiJIUzI1NiJ9",
    "ghp_abcdefghijklmnop1234": "ghp_",
    "AKIAIOSFODNN7EXAMPLE": "AKIAIOSFODNN7",
    "hf_abcdefghijklmnopqrstuvwxyz12": "hf_abc",
    "123e4567-e89b-12d3-a456-426614174000": "123e4567",
    "123456789012": "123456789012",
    "3f2a9c1e7b8d4a6f9e0c1b2a3d4e5f60": "3f2a9c1e7b8d",
}


class Everything(Admission):
    """Admits every value, as if k sessions had sent it."""

    def admits(self, field: str, value: str) -> bool:
        return True


def client_events(value: str) -> list[dict]:
    """What the SDK client builds from objects holding `value` in every free-text attribute."""
    ids = payloads.Identifiers(bytes(32))
    model = SimpleNamespace(provider=value, name=value, id=value)
    db = type(value, (), {})()  # a database class named `value`
    agent = SimpleNamespace(model=model, parser_model=model, output_model=model, db=db)
    return [
        payloads.run_event(contract.AGENT, agent, "s", "r", "1.0.0", ids),
        payloads.run_event(contract.TEAM, agent, "s", "r", "1.0.0", ids),
        payloads.run_event(contract.WORKFLOW, agent, "s", "r", "1.0.0", ids),
        payloads.launch_event(SimpleNamespace(interfaces=[SimpleNamespace(type=value), db], db=db), "1.0.0", ids),
    ]


def client_values(value: str) -> list[str]:
    """The strings of every field the client's events carry for `value` (nested models and lists too)."""
    values = []
    for event in client_events(value):
        for field in event["data"].values():
            values.extend(field.values() if isinstance(field, dict) else field if isinstance(field, list) else [field])
    return [text for text in values if type(text) is str]


def worker_events(value: str) -> list[dict]:
    """An event of each kind with `value` in every free-text field of the contract (identifiers aside: they are
    never stored), and a client report with `value` as a reason. (An SDK version is no free text: a version
    or `(invalid)`, and `10.0.0.7` is a version; `tests/test_formats.py`.)"""
    filled = {"string": value, "model": dict.fromkeys(contract.MODEL_REF_KEYS, value), "strings": [value]}
    events = [
        {
            "type": kind,
            "session_id": "s",
            "sdk_version": "1.0.0",
            "data": {
                field.name: filled[field.type]
                for field in contract.data_fields(kind)
                if field.type in filled and not field.identifier
            },
        }
        for kind in contract.EVENT_KINDS
    ]
    return [*events, {"type": contract.CLIENT_REPORT, "sdk_version": "1.0.0", "data": {"dropped": {value: 1}}}]


def worker_dims(value: str, admission: Admission) -> tuple[list[tuple], Tally]:
    """What the worker counts the events of `value` under, and the tally with its candidates."""
    worker, tally = EventProjector(60, 3600, 300, 65536, admission, keys=Keys(b"k")), Tally()
    return [
        worker.project(json.dumps(event).encode(), int(time.time() * 1000), tally)[1] for event in worker_events(value)
    ], tally


#: What the worker stores besides the values of the free-text fields: kinds, `none`, `(rare)`, the version.
STRUCTURAL = {*contract.KINDS, "none", "(rare)", "1.0.0"}


@pytest.mark.parametrize("public", PUBLIC)
def test_public_model_ids_and_names_survive_every_field_byte_for_byte(public):
    agent, _, _, launch = client_events(public)
    assert [agent["data"][key] for key in ("model_provider", "model_name", "model_id", "db_type")] == [public] * 4
    assert launch["data"]["interfaces"] == launch["data"]["db_types"] == [public]
    assert set(client_values(public)) == {public}  # the models' keys, the team's and the workflow's too
    dims, _ = worker_dims(public, Everything())
    stored = dict(zip(NAMES, dims[0], strict=True))  # the agent run
    assert [stored[name] for name in NAMES if name not in ("kind", "sdk_version", "member_bucket", "features")] == [
        public
    ] * 8
    assert dims[3][-1][3:] == ((public,), (public,)) and dims[4][2] == ((public, 1),)  # a launch, a report
    assert set(key_strings(dims)) <= {public} | STRUCTURAL


@pytest.mark.parametrize("shape", PRIVATE)
def test_no_private_shape_survives_in_any_field_on_the_client_or_in_the_worker(shape):
    private = PRIVATE[shape]
    assert private in shape
    dims, _ = worker_dims(shape, Everything())
    _, tally = worker_dims(shape, Admission())
    candidates = [candidate for _, _, candidate in tally.candidates]
    for stored in (client_values(shape), list(key_strings(dims)), candidates):
        assert not [value for value in stored if value == shape or private in value], stored
        # every free-text field alike: what the value rules make of the shape
        assert set(stored) <= {clean_value(shape, "model_id")} | STRUCTURAL, stored
