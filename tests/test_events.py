"""The event contract, unit by unit: projection of every kind, the lateness policy, privacy, and a corpus
of hostile inputs (each lands in the DLQ with its reason, or is accepted with the documented
projection), plus property-based tests of the validator."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.events import (DIMENSIONS, INVALID, KINDS, NONE, REDACTED, EventProjector, Reason, Rejection,
                             clean_flag_name)

WINDOW = 60
NOW_MS = int(time.time() * 1000)
NOW_S = NOW_MS // 1000
WINDOW_START = NOW_S - NOW_S % WINDOW
DOC_DATA = {  # the agent payload of kern-telemetry-doc.txt
    "agent_id": "123", "db_type": "PostgresDb", "model_provider": "openai", "model_name": "OpenAIResponses",
    "model_id": "gpt-5.2",
    "parser_model": {"model_provider": "openai", "model_name": "OpenAIResponses", "model_id": "gpt-5.2"},
    "output_model": {"model_provider": "openai", "model_name": "OpenAIResponses", "model_id": "gpt-5.2"},
    "has_tools": True, "has_memory": False, "has_reasoning": True, "has_knowledge": True,
    "has_input_schema": False, "has_output_schema": False, "has_team": True,
}
DOC_DIMS = ("agent", "1.0.0", "openai", "OpenAIResponses", "gpt-5.2", "PostgresDb", "openai", "gpt-5.2", "openai",
            "gpt-5.2", "none", ("has_knowledge", "has_reasoning", "has_team", "has_tools"))
MEMBER_BUCKETS = {"0", "1", "2", "3-4", "5-8", "9-16", "17-32", "33+"}


def projector() -> EventProjector:
    return EventProjector(WINDOW, allowed_lateness_seconds=3600, future_tolerance_seconds=300, max_event_bytes=65536)


def project(raw: bytes | None, record_ms: int = NOW_MS) -> tuple[tuple | Rejection, dict]:
    quality: dict = {}
    return projector().project(raw, record_ms, quality), quality


def encode(payload: object) -> bytes:
    return json.dumps(payload).encode()


def run(kind: str | None = "agent", data: object = None, **envelope) -> bytes:
    payload = {"session_id": "s-1", "run_id": "r-1", "sdk_version": "1.0.0", **envelope}
    if kind is not None:
        payload["type"] = kind
    if data is not None:
        payload["data"] = data
    return encode(payload)


def dims(raw: bytes) -> tuple:
    result, _ = project(raw)
    assert type(result) is tuple, result
    assert result[0] == WINDOW_START
    return result[1]


# --- projection of each kind -----------------------------------------------------------------------

def test_the_documented_agent_payload_projects_onto_its_dimensions():
    assert dims(run("agent", DOC_DATA)) == DOC_DIMS


@pytest.mark.parametrize(("count", "bucket"), [(0, "0"), (1, "1"), (2, "2"), (3, "3-4"), (5, "5-8"), (9, "9-16"),
                                               (40, "33+"), (None, "none"), (-1, INVALID)])
def test_team_member_count_is_bucketed(count, bucket):
    data = {"team_id": "t", "model_provider": "google", "model_id": "gemini-2.5-pro", "member_count": count,
            "has_tools": True, "has_knowledge": False, "has_learnings": None, "parser_model": None}
    assert dims(run("team", data)) == ("team", "1.0.0", "google", NONE, "gemini-2.5-pro", NONE, NONE, NONE, NONE,
                                       NONE, bucket, ("has_tools",))


def test_member_count_only_counts_for_teams():
    assert dims(run("agent", {"member_count": 7}))[DIMENSIONS.index("member_bucket")] == NONE


def test_workflow_runs_with_and_without_a_model():
    assert dims(run("workflow", {"workflow_id": "w", "db_type": "SqliteDb"})) == (
        "workflow", "1.0.0", NONE, NONE, NONE, "SqliteDb", NONE, NONE, NONE, NONE, NONE, ())
    assert dims(run("workflow", {"workflow_id": "w", "model_provider": "anthropic", "model_name": "Claude",
                                 "model_id": "claude-sonnet-4-5", "has_tools": True}))[:5] == (
        "workflow", "1.0.0", "anthropic", "Claude", "claude-sonnet-4-5")


def test_agentos_launches_in_both_shapes_are_kind_os():
    launch = {"agents": 3, "teams": 1, "interfaces": ["slack"], "db_types": ["PostgresDb"]}
    assert dims(run("os", launch, os_id="o")) == ("os", "1.0.0", *[NONE] * 9, ())
    assert dims(encode({"os_id": "o", "sdk_version": "1.9.0", "data": launch})) == ("os", "1.9.0", *[NONE] * 9, ())


def test_unknown_flags_are_counted_and_off_or_null_flags_are_not():
    data = {"has_tools": True, "has_memory": False, "has_culture": True, "has_brand_new_flag": True,
            "has_reasoning": None}
    assert dims(run("agent", data))[-1] == ("has_brand_new_flag", "has_culture", "has_tools")


def test_a_malformed_flag_name_is_dropped_and_counted():
    result, quality = project(run("agent", {"has_Bad Name": True, "has_tools": True}))
    assert result[1][-1] == ("has_tools",)
    assert quality == {(WINDOW_START, "agent", Reason.INVALID_VALUE): 1}


def test_nulls_are_a_value_of_their_own():
    assert dims(run("agent", {"model_provider": None, "model_id": None, "parser_model": None})) == (
        "agent", "1.0.0", *[NONE] * 9, ())
    assert dims(run("agent", None)) == ("agent", "1.0.0", *[NONE] * 9, ())
    assert dims(run("agent", {}, sdk_version=None))[1] == NONE


# --- event time and lateness -----------------------------------------------------------------------

@pytest.mark.parametrize("stamp", [NOW_S - 600, (NOW_S - 600) * 1000,
                                   time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW_S - 600))])
def test_a_payload_timestamp_within_lateness_sets_the_window(stamp):
    result, quality = project(run("agent", {}, timestamp=stamp))
    assert result[0] == (NOW_S - 600) - (NOW_S - 600) % WINDOW and quality == {}


def test_an_event_older_than_the_allowed_lateness_is_counted_as_late_only():
    result, quality = project(run("agent", {}, timestamp=NOW_S - 3601))
    assert isinstance(result, Rejection) and result.reason == Reason.LATE and not result.dead_letter
    assert quality == {(WINDOW_START, "agent", Reason.LATE): 1}


@pytest.mark.parametrize(("stamp", "reason"), [
    (NOW_S + 301, Reason.FUTURE_TIMESTAMP), ("yesterday", Reason.BAD_TIMESTAMP),
    ("2026-11-25T10:00:00", Reason.BAD_TIMESTAMP),  # naive: no instant
    (-5, Reason.BAD_TIMESTAMP), (1e300, Reason.BAD_TIMESTAMP), (315532800, Reason.BAD_TIMESTAMP),  # 1980
    (1_000_000_000, Reason.LATE),  # 2001
])
def test_unusable_timestamps_fall_back_to_the_record_time_or_are_late(stamp, reason):
    result, quality = project(run("agent", {}, timestamp=stamp))
    assert quality == {(WINDOW_START, "agent", reason): 1}
    if reason == Reason.LATE:
        assert isinstance(result, Rejection)
    else:
        assert result[0] == WINDOW_START


# --- privacy ----------------------------------------------------------------------------------------

SENTINEL = "SENTINEL-5e1f"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_identifiers_prompts_and_unknown_fields_never_leave_the_projector(kind):
    payload = {"session_id": SENTINEL, "run_id": SENTINEL, "os_id": SENTINEL, "type": kind, "sdk_version": "2.4.1",
               "user_prompt": SENTINEL, "api_key": SENTINEL,
               "data": {f"{kind}_id": SENTINEL, "instructions": SENTINEL, "response": {"text": SENTINEL},
                        "messages": [SENTINEL], "model_id": "gpt-5.2", "has_tools": True}}
    result, quality = project(encode(payload))
    assert SENTINEL not in repr(result) + repr(quality)


@pytest.mark.parametrize("value", ["sk-proj-AbCdEf1234567890", "Bearer eyJhbGciOiJIUzI1NiJ9abc", "jane@example.com",
                                   "postgres://app:hunter2@db:5432/x", "3f2a9c1e7b8d4a6f9e0c1b2a3d4e5f60",
                                   "AKIAIOSFODNN7EXAMPLE", "ghp_abcdefghijklmnop1234"])
def test_secret_looking_values_are_redacted_and_counted(value):
    result, quality = project(run("agent", {"model_id": value}))
    assert result[1][DIMENSIONS.index("model_id")] == REDACTED
    assert quality == {(WINDOW_START, "agent", Reason.REDACTED_VALUE): 1}


@pytest.mark.parametrize("value", ["x" * 101, "gpt\n4", 'gpt"4', "gpt\x00", "\u202egpt", "", "-leading-dash"])
def test_overlong_or_disallowed_values_are_marked_invalid_and_counted(value):
    result, quality = project(run("agent", {"model_id": value}))
    assert result[1][DIMENSIONS.index("model_id")] == INVALID
    assert quality == {(WINDOW_START, "agent", Reason.INVALID_VALUE): 1}


@pytest.mark.parametrize("value", ["gpt-5.2", "claude-3-7-sonnet-latest", "us.anthropic.claude-sonnet-4-5-v1:0",
                                   "meta-llama/Llama-3.3-70B-Instruct", "qwen2.5:7b", "openai/gpt-oss-120b"])
def test_real_model_ids_are_kept(value):
    assert dims(run("agent", {"model_id": value}))[DIMENSIONS.index("model_id")] == value


# --- the hostile corpus ------------------------------------------------------------------------------

DEEP = b'{"type":"agent","session_id":"s","data":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
SHALLOW_DEEP = b'{"type":"agent","session_id":"s","data":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}"
HOSTILE: list[tuple[str, bytes | None, Reason, str]] = [
    ("tombstone", None, Reason.TOMBSTONE, "$"),
    ("empty", b"", Reason.EMPTY, "$"),
    ("whitespace", b" \n\t ", Reason.EMPTY, "$"),
    ("not JSON", b"hello world", Reason.NOT_JSON, "$"),
    ("truncated JSON", b'{"type": "agent", "session_id": "s"', Reason.NOT_JSON, "$"),
    ("trailing garbage", b'{"type":"agent","session_id":"s"} trailing', Reason.NOT_JSON, "$"),
    ("not UTF-8", b'{"type":"agent","session_id":"\xff\xfe"}', Reason.NOT_UTF8, "$"),
    ("UTF-16", '{"type":"agent","session_id":"s"}'.encode("utf-16"), Reason.NOT_UTF8, "$"),
    ("lone surrogate escape", b'{"type":"agent","session_id":"s","sdk_version":"\\ud800"}', Reason.NOT_JSON, "$"),
    ("NaN", b'{"type":"agent","session_id":"s","timestamp":NaN}', Reason.NOT_JSON, "$"),
    ("Infinity", b'{"type":"agent","session_id":"s","timestamp":Infinity}', Reason.NOT_JSON, "$"),
    ("JSON array", b'["agent"]', Reason.NOT_OBJECT, "$"),
    ("JSON string", b'"agent"', Reason.NOT_OBJECT, "$"),
    ("JSON number", b"42", Reason.NOT_OBJECT, "$"),
    ("JSON null", b"null", Reason.NOT_OBJECT, "$"),
    ("100k nesting", DEEP, Reason.OVERSIZED, "$"),
    ("5k nesting in an unknown field", SHALLOW_DEEP, Reason.NOT_JSON, "$"),
    ("10 MB payload", b'{"type":"agent","session_id":"s","data":{"x":"' + b"a" * 10_000_000 + b'"}}',
     Reason.OVERSIZED, "$"),
    ("huge array", b'{"type":"agent","session_id":"s","data":{"x":[' + b"1," * 40_000 + b"1]}}",
     Reason.OVERSIZED, "$"),
    ("type is a number", run(None, {}, type=7), Reason.WRONG_TYPE, "$.type"),
    ("session_id is an object", run("agent", {}, session_id={"id": 1}), Reason.WRONG_TYPE, "$.session_id"),
    ("sdk_version is a number", run("agent", {}, sdk_version=2.4), Reason.WRONG_TYPE, "$.sdk_version"),
    ("data is an array", run("agent", [1, 2]), Reason.WRONG_TYPE, "$.data"),
    ("data is a string", run("agent", "x"), Reason.WRONG_TYPE, "$.data"),
    ("model_id is a number", run("agent", {"model_id": 5}), Reason.WRONG_TYPE, "$.data.model_id"),
    ("model_provider is an object", run("agent", {"model_provider": {"a": 1}}), Reason.WRONG_TYPE,
     "$.data.model_provider"),
    ("db_type is a list", run("agent", {"db_type": ["PostgresDb"]}), Reason.WRONG_TYPE, "$.data.db_type"),
    ("parser_model is a string", run("agent", {"parser_model": "gpt"}), Reason.WRONG_TYPE, "$.data.parser_model"),
    ("parser model_id is a list", run("agent", {"parser_model": {"model_id": [1]}}), Reason.WRONG_TYPE,
     "$.data.parser_model.model_id"),
    ("known flag is a string", run("agent", {"has_tools": "yes"}), Reason.WRONG_TYPE, "$.data.has_tools"),
    ("unknown flag is a number", run("agent", {"has_new_thing": 1}), Reason.WRONG_TYPE, "$.data.has_new_thing"),
    ("member_count is a string", run("team", {"member_count": "3"}), Reason.WRONG_TYPE, "$.data.member_count"),
    ("member_count is a bool", run("team", {"member_count": True}), Reason.WRONG_TYPE, "$.data.member_count"),
    ("member_count is a float", run("team", {"member_count": 2.5}), Reason.WRONG_TYPE, "$.data.member_count"),
    ("timestamp is a bool", run("agent", {}, timestamp=True), Reason.WRONG_TYPE, "$.timestamp"),
    ("timestamp is an object", run("agent", {}, timestamp={"s": 1}), Reason.WRONG_TYPE, "$.timestamp"),
    ("session_id missing", encode({"type": "agent", "data": {}}), Reason.MISSING_FIELD, "$.session_id"),
    ("session_id null", run("agent", {}, session_id=None), Reason.MISSING_FIELD, "$.session_id"),
    ("type missing", encode({"session_id": "s", "data": {}}), Reason.MISSING_FIELD, "$.type"),
    ("type null", run(None, {}, type=None), Reason.MISSING_FIELD, "$.type"),
    ("unknown kind", run("assistant", {}), Reason.UNKNOWN_KIND, "$.type"),
    ("kind with different case", run("Agent", {}), Reason.UNKNOWN_KIND, "$.type"),
]


@pytest.mark.parametrize(("raw", "reason", "path"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_input_lands_in_the_dlq_with_its_reason_and_path(raw, reason, path):
    started = time.perf_counter()
    result, quality = project(raw)
    assert isinstance(result, Rejection) and result.dead_letter
    assert (result.reason, result.path) == (reason, path)
    assert sum(quality.values()) == 1 and next(iter(quality))[2] == reason
    assert time.perf_counter() - started < 1.0  # none stalls a partition


ACCEPTED: list[tuple[str, bytes, tuple]] = [
    ("duplicate keys: the last wins", b'{"type":"agent","session_id":"s","sdk_version":"1.0.0",'
     b'"data":{"model_id":"a","model_id":"gpt-5.2","has_tools":false,"has_tools":true}}',
     ("agent", "1.0.0", NONE, NONE, "gpt-5.2", NONE, NONE, NONE, NONE, NONE, NONE, ("has_tools",))),
    ("escaped key spelling a flag", b'{"type":"agent","session_id":"s","data":{"\\u0068as_tools":true}}',
     ("agent", NONE, *[NONE] * 9, ("has_tools",))),
    ("control characters in a value", run("agent", {"model_id": "gpt\u0007x"}, sdk_version="1.0.0"),
     ("agent", "1.0.0", NONE, NONE, INVALID, *[NONE] * 6, ())),
    ("garbage keys", encode({"type": "agent", "session_id": "s", "\u0000\uffff": 1, "x" * 1000: [None]}),
     ("agent", NONE, *[NONE] * 9, ())),
    ("unicode model name", run("agent", {"model_name": "模型"}, sdk_version="1.0.0"),
     ("agent", "1.0.0", NONE, INVALID, *[NONE] * 7, ())),
]


@pytest.mark.parametrize(("raw", "expected"), [case[1:] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED])
def test_odd_but_valid_input_is_accepted_with_the_documented_projection(raw, expected):
    assert dims(raw) == expected


def test_the_hostile_corpus_has_at_least_25_classes():
    assert len(HOSTILE) + len(ACCEPTED) >= 25


# --- properties ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_get_a_classification_and_never_raise(raw):
    result, _ = project(raw)
    assert type(result) is tuple or isinstance(result, Rejection)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_gets_a_classification_and_never_raise(value):
    result, _ = project(encode(value))
    assert type(result) is tuple or isinstance(result, Rejection)


text = st.text(max_size=40)
maybe_text = st.none() | text
model_ref = st.none() | st.fixed_dictionaries({}, optional={"model_provider": maybe_text, "model_id": maybe_text,
                                                            "model_name": maybe_text})


@st.composite
def valid_events(draw):
    kind = draw(st.sampled_from(sorted(KINDS)))
    allowed: set[str] = set()
    data = {
        f"{kind}_id": draw(text), "model_provider": draw(maybe_text), "model_name": draw(maybe_text),
        "model_id": draw(maybe_text), "db_type": draw(maybe_text), "parser_model": draw(model_ref),
        "output_model": draw(model_ref), "member_count": draw(st.none() | st.integers(-5, 10_000)),
        **{f"has_{name}": draw(st.none() | st.booleans())
           for name in draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True), max_size=6))},
        **draw(st.dictionaries(st.text(max_size=10).filter(lambda k: not k.startswith("has_")), json_values,
                               max_size=3)),
    }
    for field in ("model_provider", "model_name", "model_id", "db_type", "parser_model", "output_model",
                  "member_count"):
        if draw(st.booleans()):
            del data[field]
    event = {"session_id": draw(text), "run_id": draw(text), "type": kind, "sdk_version": draw(maybe_text),
             "data": data, **draw(st.dictionaries(st.sampled_from(["extra", "prompt", "user"]), json_values))}
    for ref in ("parser_model", "output_model"):
        if isinstance(data.get(ref), dict):
            allowed |= {v for v in data[ref].values() if isinstance(v, str)}
    allowed |= {v for k, v in data.items() if k in ("model_provider", "model_name", "model_id", "db_type")
                and isinstance(v, str)}
    if isinstance(event["sdk_version"], str):
        allowed.add(event["sdk_version"])
    return event, allowed


@settings(max_examples=300, deadline=None)
@given(valid_events())
def test_a_valid_event_projects_only_allow_listed_values(case):
    event, allowed = case
    result, _ = project(encode(event))
    assert type(result) is tuple, result
    window_start, projected = result
    assert len(projected) == len(DIMENSIONS) and window_start == WINDOW_START
    markers = {NONE, INVALID, REDACTED} | KINDS | MEMBER_BUCKETS
    for value in projected[:-1]:
        assert value in markers or value in allowed
    features = projected[-1]
    assert list(features) == sorted(features) and all(name.startswith("has_") for name in features)
    # every true flag is counted, except names that are malformed or look like secrets (dropped, counted)
    assert set(features) == {k for k, v in event["data"].items()
                             if k.startswith("has_") and v is True and clean_flag_name(k) is not None}


def test_dead_letters_carry_position_and_shape_but_no_values():
    from pipeline.rollup import dead_letter

    class Message:
        offset, timestamp = 17, NOW_MS

    for raw, shape in [
        (b'{"type":"agent","session_id":"\xff' + SENTINEL.encode() + b'"}', f"bytes[{33 + len(SENTINEL)}]"),
        (run("agent", {"has_tools": SENTINEL, "sk-live-0123456789abcdef": 1}),
         {"session_id": "string", "run_id": "string", "sdk_version": "string", "type": "string",
          "data": {"has_tools": "string", REDACTED: "int"}}),
    ]:
        message = Message()
        message.value = raw
        rejection, _ = project(raw)
        letter = dead_letter(rejection, message, "events", 3)
        record = json.loads(letter.value)
        assert letter.key == b"events/3/17"
        assert record["source"] == {"topic": "events", "partition": 3, "offset": 17, "timestamp_ms": NOW_MS}
        assert record["shape"] == shape and record["size"] == len(raw)
        assert SENTINEL.encode() not in letter.value and b"sk-live" not in letter.value
