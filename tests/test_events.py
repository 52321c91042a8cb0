"""The event contract, unit by unit: projection of every kind, flags, nulls, the lateness policy, privacy,
and a corpus of hostile inputs (each lands in the DLQ with its reason and path, or is accepted with the
documented projection), plus property-based tests of the validator."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kern_telemetry_client.contract import EVENT_KINDS
from kern_telemetry_client.values import INVALID, NONE, REDACTED, clean_flag_name

from pipeline.admission import RARE, Admission, Keys
from pipeline.dimensions import LAUNCH_NAMES, PATTERNS
from pipeline.dimensions import NAMES as DIMENSIONS
from pipeline.projector import KINDS, EventProjector, Tally
from pipeline.rejections import GONE, QUALITY_ONLY, Reason, Rejection

WINDOW = 60
LATENESS = 3600
FUTURE = 300
MAX_BYTES = 65536
NOW_MS = int(time.time() * 1000)
NOW_S = NOW_MS // 1000
WINDOW_START = NOW_S - NOW_S % WINDOW
DOC_DATA = {  # the agent payload of kern-telemetry-doc.txt
    "agent_id": "123",
    "db_type": "PostgresDb",
    "model_provider": "openai",
    "model_name": "OpenAIResponses",
    "model_id": "gpt-5.2",
    "parser_model": {"model_provider": "openai", "model_name": "OpenAIResponses", "model_id": "gpt-5.2"},
    "output_model": {"model_provider": "openai", "model_name": "OpenAIResponses", "model_id": "gpt-5.2"},
    "has_tools": True,
    "has_memory": False,
    "has_reasoning": True,
    "has_knowledge": True,
    "has_input_schema": False,
    "has_output_schema": False,
    "has_team": True,
}
DOC_DIMS = (
    "agent",
    "1.0.0",
    "openai",
    "OpenAIResponses",
    "gpt-5.2",
    "PostgresDb",
    "openai",
    "gpt-5.2",
    "openai",
    "gpt-5.2",
    "none",
    ("has_knowledge", "has_reasoning", "has_team", "has_tools"),
)
MEMBER_BUCKETS = {"0", "1", "2", "3-4", "5-8", "9-16", "17-32", "33+"}
ALL_NONE = (NONE,) * 9  # the nine value dimensions between sdk_version and features
MODEL_ID = DIMENSIONS.index("model_id")


#: What these tests' events use besides the registry's values, admitted (as after k sessions): their
#: projection is what they are about. Rare values have tests of their own (below, "k-anonymous values").
ADMITTED = Admission(
    1,
    {
        "flag": frozenset(
            {
                "has_new",
                "has_new_flag",
                "has_new_thing",
                "has_brand_new",
                "has_ok",
                "has_brand_new_flag",
                "has_alpha",
                "has_zeta",
            }
        ),
        "model_id": frozenset({"x" * 100, "PostgresDb", "OpenAIResponses", "b"}),
        "sdk_version": frozenset({"2"}),
        "reason": frozenset({"a_new_reason"}),
    },
)


def projector(
    max_event_bytes: int = MAX_BYTES, admission: Admission = ADMITTED, max_new_values: int = 20
) -> EventProjector:
    return EventProjector(
        WINDOW,
        allowed_lateness_seconds=LATENESS,
        future_tolerance_seconds=FUTURE,
        max_event_bytes=max_event_bytes,
        admission=admission,
        max_new_values=max_new_values,
        keys=Keys(b"k"),
    )


def project(
    raw: bytes | None, record_ms: int = NOW_MS, max_event_bytes: int = MAX_BYTES
) -> tuple[tuple | Rejection, dict]:
    """The projection of `raw` (or the Rejection it raised), and the quality counts it added."""
    tally = Tally()
    try:
        return projector(max_event_bytes).project(raw, record_ms, tally), tally.quality
    except Rejection as rejection:
        return rejection, tally.quality


def encode(payload: object) -> bytes:
    return json.dumps(payload).encode()


def run(kind: str | None = "agent", data: object = None, **envelope) -> bytes:
    payload = {"session_id": "s-1", "run_id": "r-1", "installation": "i-1", "sdk_version": "1.0.0", **envelope}
    if kind is not None:
        payload["type"] = kind
    if data is not None:
        payload["data"] = data
    return encode(payload)


def dims(raw: bytes) -> tuple:
    """The dims of a counted event in the current window, with no quality notes."""
    result, quality = project(raw)
    assert type(result) is tuple, result
    assert result[0] == WINDOW_START
    assert quality == {}
    return result[1]


def window_of(epoch_s: int) -> int:
    return epoch_s - epoch_s % WINDOW


# --- projection of each kind -----------------------------------------------------------------------


def test_the_documented_agent_payload_projects_onto_its_dimensions():
    assert dims(run("agent", DOC_DATA)) == DOC_DIMS
    assert len(DOC_DIMS) == len(DIMENSIONS)


def test_the_documented_payload_text_itself_is_not_json():
    # The doc renders the payload with trailing commas (`"model_id": "gpt-5.2",\n },`), which RFC 8259
    # does not allow: that literal text is a not_json dead letter; the SDKs send real JSON (above).
    doc_text = (
        b'{"session_id": "123", "run_id": "123", "sdk_version": "1.0.0", "type": "agent", "data": {'
        b'"agent_id": "123", "db_type": "PostgresDb", "model_provider": "openai", '
        b'"model_name": "OpenAIResponses", "model_id": "gpt-5.2", "parser_model": {"model_provider": "openai",'
        b' "model_name": "OpenAIResponses", "model_id": "gpt-5.2",}, "has_tools": true,},}'
    )
    result, _ = project(doc_text)
    assert isinstance(result, Rejection)
    assert (result.reason, result.path, result.dead_letter) == (Reason.NOT_JSON, "$", True)


def test_window_start_is_the_record_time_floored_to_the_window():
    record_ms = (WINDOW_START + 59) * 1000 + 999  # last millisecond of the window
    result, quality = project(run("agent", {}), record_ms)
    assert result == (WINDOW_START, ("agent", "1.0.0", *ALL_NONE, ())) and quality == {}
    result, _ = project(run("agent", {}), (WINDOW_START + 60) * 1000)
    assert result[0] == WINDOW_START + 60


# Teams and workflows of older SDKs send no pattern: every pattern dimension is `none`.
NO_TEAM_PATTERN = (NONE, NONE, NONE)
NO_WORKFLOW_PATTERN = (NONE, (NONE,), NONE)


@pytest.mark.parametrize(
    ("count", "bucket"),
    [
        (0, "0"),
        (1, "1"),
        (2, "2"),
        (3, "3-4"),
        (4, "3-4"),
        (5, "5-8"),
        (8, "5-8"),
        (9, "9-16"),
        (16, "9-16"),
        (17, "17-32"),
        (32, "17-32"),
        (33, "33+"),
        (40, "33+"),
        (10**12, "33+"),
        (None, "none"),
        (-1, INVALID),
    ],
)
def test_team_member_count_is_bucketed(count, bucket):
    data = {
        "team_id": "t",
        "model_provider": "google",
        "model_id": "gemini-2.5-pro",
        "member_count": count,
        "has_tools": True,
        "has_knowledge": False,
        "has_learnings": None,
        "parser_model": None,
    }
    result, quality = project(run("team", data))
    assert result == (
        WINDOW_START,
        (
            "team",
            "1.0.0",
            "google",
            NONE,
            "gemini-2.5-pro",
            NONE,
            NONE,
            NONE,
            NONE,
            NONE,
            bucket,
            ("has_tools",),
            NO_TEAM_PATTERN,
        ),
    )
    assert quality == ({(WINDOW_START, "team", Reason.INVALID_VALUE): 1} if bucket == INVALID else {})


def test_a_team_without_member_count_has_bucket_none():
    assert dims(run("team", {"team_id": "t"})) == ("team", "1.0.0", *ALL_NONE, (), NO_TEAM_PATTERN)


@pytest.mark.parametrize("kind", ["agent", "workflow", "os"])
def test_member_count_only_counts_for_teams(kind):
    assert dims(run(kind, {"member_count": 7}))[DIMENSIONS.index("member_bucket")] == NONE


def test_workflow_run_without_a_model():
    assert dims(run("workflow", {"workflow_id": "w", "db_type": "SqliteDb"})) == (
        "workflow",
        "1.0.0",
        NONE,
        NONE,
        NONE,
        "SqliteDb",
        NONE,
        NONE,
        NONE,
        NONE,
        NONE,
        (),
        NO_WORKFLOW_PATTERN,
    )


def test_workflow_run_with_a_model():
    data = {
        "workflow_id": "w",
        "db_type": "SqliteDb",
        "model_provider": "anthropic",
        "model_name": "Claude",
        "model_id": "claude-sonnet-4-5",
        "has_tools": True,
    }
    assert dims(run("workflow", data)) == (
        "workflow",
        "1.0.0",
        "anthropic",
        "Claude",
        "claude-sonnet-4-5",
        "SqliteDb",
        NONE,
        NONE,
        NONE,
        NONE,
        NONE,
        ("has_tools",),
        NO_WORKFLOW_PATTERN,
    )


LAUNCH = {
    "agent_count": 3,
    "team_count": 1,
    "workflow_count": 2,
    "interfaces": ["slack", "mcp"],
    "db_types": ["PostgresDb"],
}
LAUNCH_CONFIGURATION = ("3-4", "1", "2", ("mcp", "slack"), ("PostgresDb",))
NO_CONFIGURATION = (NONE, NONE, NONE, (NONE,), (NONE,))


def test_agentos_launch_with_type_os_ends_with_its_configuration():
    assert dims(run("os", LAUNCH, os_id="o-1")) == ("os", "1.0.0", *ALL_NONE, (), LAUNCH_CONFIGURATION)
    assert len(LAUNCH_CONFIGURATION) == len(LAUNCH_NAMES)


def test_agentos_launch_without_session_id_is_fine():
    assert dims(encode({"type": "os", "os_id": "o-1", "sdk_version": "2.0.0", "data": LAUNCH})) == (
        "os",
        "2.0.0",
        *ALL_NONE,
        (),
        LAUNCH_CONFIGURATION,
    )


def test_agentos_launch_of_older_sdks_without_type_or_configuration_is_kind_os():
    assert dims(encode({"os_id": "o-1", "sdk_version": "1.9.0", "data": LAUNCH})) == (
        "os",
        "1.9.0",
        *ALL_NONE,
        (),
        LAUNCH_CONFIGURATION,
    )
    assert dims(encode({"os_id": "o-1", "type": None, "sdk_version": "1.9.0"})) == (
        "os",
        "1.9.0",
        *ALL_NONE,
        (),
        NO_CONFIGURATION,
    )
    # the fields older SDKs sent instead (names of agents, teams): not the contract's, ignored
    old = {"agents": ["support-bot"], "teams": [{"name": "acme"}], "interfaces": None}
    assert dims(run("os", old, os_id="o-1")) == ("os", "1.0.0", *ALL_NONE, (), NO_CONFIGURATION)


def test_a_mistyped_configuration_field_is_invalid_and_the_launch_still_counts():
    data = {
        "agent_count": "3",
        "team_count": True,
        "workflow_count": 2.0,
        "interfaces": "slack",
        "db_types": ["SqliteDb", 5, None],
    }
    result, quality = project(run("os", data, os_id="o-1"))
    assert result == (
        WINDOW_START,
        ("os", "1.0.0", *ALL_NONE, (), (INVALID, INVALID, INVALID, (INVALID,), (INVALID, "SqliteDb"))),
    )
    assert quality == {(WINDOW_START, "os", Reason.INVALID_VALUE): 6}


def test_a_team_run_ends_with_its_coordination_pattern():
    data = {"team_id": "t", "member_count": 4, "coordination": "route", "member_team_count": 1, "nesting_depth": 2}
    assert dims(run("team", data)) == (
        "team",
        "1.0.0",
        NONE,
        NONE,
        NONE,
        NONE,
        NONE,
        NONE,
        NONE,
        NONE,
        "3-4",
        (),
        ("route", "1", "2"),
    )


def test_a_workflow_run_ends_with_its_orchestration_pattern():
    data = {
        "workflow_id": "w",
        "step_count": 5,
        "step_kinds": ["parallel", "agent", "loop", "agent"],
        "nesting_depth": 1,
    }
    assert dims(run("workflow", data))[-1] == ("5-8", ("agent", "loop", "parallel"), "1")


def test_a_mistyped_or_unknown_pattern_value_is_invalid_and_the_run_still_counts():
    team = {"coordination": "hierarchical", "member_team_count": "1", "nesting_depth": -3}
    result, quality = project(run("team", team))
    assert result[1][-1] == (INVALID, INVALID, INVALID) and quality == {(WINDOW_START, "team", Reason.INVALID_VALUE): 3}
    workflow = {"step_count": 2.5, "step_kinds": ["agent", "acme-private-step", 7], "nesting_depth": None}
    result, quality = project(run("workflow", workflow))
    assert result[1][-1] == (INVALID, (INVALID, "agent"), NONE)
    assert quality == {(WINDOW_START, "workflow", Reason.INVALID_VALUE): 3}
    result, quality = project(run("workflow", {"step_kinds": "parallel"}))
    assert result[1][-1] == (NONE, (INVALID,), NONE) and "acme" not in repr(result)


def test_configuration_counts_are_bucketed_like_team_sizes():
    data = {"agent_count": 0, "team_count": 40, "workflow_count": -1, "interfaces": [], "db_types": []}
    result, quality = project(run("os", data))
    assert result == (WINDOW_START, ("os", "1.0.0", *ALL_NONE, (), ("0", "33+", INVALID, (), ())))
    assert quality == {(WINDOW_START, "os", Reason.INVALID_VALUE): 1}


def test_nested_or_huge_configuration_values_are_invalid_and_the_launch_still_counts():
    nested = b"[" * 200 + b"]" * 200
    raw = (
        b'{"type":"os","session_id":"s","data":{"agent_count":' + nested + b',"team_count":1e400,'
        b'"workflow_count":{"a":1},"interfaces":[' + nested + b'],"db_types":{"PostgresDb":true}}}'
    )
    result, quality = project(raw)
    assert result[1][-1] == (INVALID, INVALID, INVALID, (INVALID,), (INVALID,))
    assert quality == {(WINDOW_START, "os", Reason.INVALID_VALUE): 5}


def test_interface_names_follow_the_value_rules_a_rare_one_becomes_a_candidate():
    tally = Tally()
    data = {**LAUNCH, "interfaces": ["slack", "acme-internal-bridge", "Slack Bot for ACME (prod)"]}
    _, launch = projector().project(run("os", data), NOW_MS, tally)
    assert launch[-1][3] == (INVALID, RARE, "slack")
    assert set(tally.candidates) == {(WINDOW_START, "interface", "acme-internal-bridge")}
    assert tally.quality == {(WINDOW_START, "os", Reason.RARE_VALUE): 1, (WINDOW_START, "os", Reason.INVALID_VALUE): 1}


# --- has_* flags --------------------------------------------------------------------------------------


def test_unknown_flags_are_counted_and_off_or_null_flags_are_not():
    data = {
        "has_tools": True,
        "has_memory": False,
        "has_culture": True,
        "has_brand_new_flag": True,
        "has_reasoning": None,
        "has_other_new": False,
        "has_third_new": None,
    }
    assert dims(run("agent", data))[-1] == ("has_brand_new_flag", "has_culture", "has_tools")


@pytest.mark.parametrize(
    "data",
    [
        {"has_tools": False, "has_memory": None},  # known flags only: the typed path
        {"has_tools": False, "has_memory": None, "has_new": False, "has_newer": None},  # the dict path
        {},
    ],
)
def test_false_and_null_flags_are_not_features(data):
    assert dims(run("agent", data))[-1] == ()


def test_features_are_sorted_whatever_the_key_order():
    data = {"has_zeta": True, "has_tools": True, "has_alpha": True, "has_culture": True}
    assert dims(run("agent", data))[-1] == ("has_alpha", "has_culture", "has_tools", "has_zeta")


def test_every_known_flag_is_a_feature():
    flags = (
        "has_culture",
        "has_input_schema",
        "has_knowledge",
        "has_learnings",
        "has_memory",
        "has_output_schema",
        "has_reasoning",
        "has_team",
        "has_tools",
    )
    assert dims(run("agent", dict.fromkeys(flags, True)))[-1] == flags


@pytest.mark.parametrize(
    "bad_name", ["has_Bad Name", "has_", "has_UPPER", "has_" + "a" * 61, "has_x-y", "has_sk_live_abcdefgh1234"]
)
def test_a_malformed_or_secret_flag_name_is_dropped_and_counted_as_invalid_value(bad_name):
    result, quality = project(run("agent", {bad_name: True, "has_tools": True}))
    assert result == (WINDOW_START, ("agent", "1.0.0", *ALL_NONE, ("has_tools",)))
    assert quality == {(WINDOW_START, "agent", Reason.INVALID_VALUE): 1}


def test_each_malformed_flag_name_counts_once():
    result, quality = project(run("agent", {"has_Bad": True, "has_Worse One": True, "has_ok": True}))
    assert result[1][-1] == ("has_ok",)
    assert quality == {(WINDOW_START, "agent", Reason.INVALID_VALUE): 2}


def test_a_malformed_flag_name_that_is_false_is_neither_counted_nor_noted():
    result, quality = project(run("agent", {"has_Bad Name": False}))
    assert result == (WINDOW_START, ("agent", "1.0.0", *ALL_NONE, ())) and quality == {}


# --- nulls ---------------------------------------------------------------------------------------------


def test_null_model_fields_are_none():
    data = {"db_type": None, "model_provider": None, "model_name": None, "model_id": None, "has_tools": True}
    assert dims(run("agent", data)) == ("agent", "1.0.0", *ALL_NONE, ("has_tools",))


def test_null_parser_model_is_none_none():
    data = {
        "model_id": "gpt-5.2",
        "parser_model": None,
        "output_model": {"model_provider": "openai", "model_id": "gpt-5.2"},
    }
    assert dims(run("agent", data)) == (
        "agent",
        "1.0.0",
        NONE,
        NONE,
        "gpt-5.2",
        NONE,
        NONE,
        NONE,
        "openai",
        "gpt-5.2",
        NONE,
        (),
    )


def test_null_fields_inside_a_model_ref_are_none():
    data = {"parser_model": {"model_provider": None, "model_id": None}, "output_model": {}}
    assert dims(run("agent", data)) == ("agent", "1.0.0", *ALL_NONE, ())


@pytest.mark.parametrize(
    "raw",
    [
        run("agent", None),  # data absent
        encode({"type": "agent", "session_id": "s", "sdk_version": "1.0.0", "data": None}),
        run("agent", {}),
    ],
)
def test_null_or_absent_data_gives_all_none(raw):
    assert dims(raw) == ("agent", "1.0.0", *ALL_NONE, ())


def test_null_or_absent_sdk_version_is_none():
    assert dims(run("agent", {}, sdk_version=None))[1] == NONE
    assert dims(encode({"type": "agent", "session_id": "s"}))[1] == NONE


def test_null_timestamp_uses_the_record_time():
    assert dims(run("agent", {}, timestamp=None)) == ("agent", "1.0.0", *ALL_NONE, ())


# --- event time and lateness -----------------------------------------------------------------------


def iso(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


@pytest.mark.parametrize(
    "stamp",
    [
        NOW_S - 600,
        (NOW_S - 600) * 1000,
        float(NOW_S - 600),
        (NOW_S - 600) * 1000.0 + 999.0,
        iso(NOW_S - 600),
        time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(NOW_S - 600)),
        time.strftime("%Y-%m-%dT%H:%M:%S.250+02:00", time.gmtime(NOW_S - 600 + 7200)),
    ],
)
def test_a_payload_timestamp_within_lateness_sets_the_window(stamp):
    result, quality = project(run("agent", {}, timestamp=stamp))
    assert result == (window_of(NOW_S - 600), ("agent", "1.0.0", *ALL_NONE, ()))
    assert quality == {}


@pytest.mark.parametrize("offset_s", [-LATENESS, FUTURE, 0])
def test_the_lateness_and_future_bounds_are_inclusive(offset_s):
    result, quality = project(run("agent", {}, timestamp=NOW_S + offset_s))
    assert result == (window_of(NOW_S + offset_s), ("agent", "1.0.0", *ALL_NONE, ())) and quality == {}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_event_older_than_the_allowed_lateness_is_counted_as_late_only(kind):
    result, quality = project(run(kind, {}, timestamp=NOW_S - LATENESS - 1))
    assert isinstance(result, Rejection)
    assert (result.reason, result.path, result.kind, result.dead_letter) == (Reason.LATE, "$.timestamp", kind, False)
    assert quality == {(WINDOW_START, kind, Reason.LATE): 1}


@pytest.mark.parametrize("stamp", [iso(NOW_S - LATENESS - 60), (NOW_S - LATENESS - 1) * 1000])
def test_late_in_any_timestamp_format(stamp):
    result, quality = project(run("agent", {}, timestamp=stamp))
    assert isinstance(result, Rejection) and result.reason == Reason.LATE and not result.dead_letter
    assert quality == {(WINDOW_START, "agent", Reason.LATE): 1}


@pytest.mark.parametrize(
    ("stamp", "reason"),
    [
        (NOW_S + FUTURE + 1, Reason.FUTURE_TIMESTAMP),
        ((NOW_S + 86400) * 1000, Reason.FUTURE_TIMESTAMP),
        (iso(NOW_S + 3600), Reason.FUTURE_TIMESTAMP),
        ("yesterday", Reason.BAD_TIMESTAMP),
        ("", Reason.BAD_TIMESTAMP),
        (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW_S)), Reason.BAD_TIMESTAMP),  # naive: no instant
        (-5, Reason.BAD_TIMESTAMP),
        (0, Reason.BAD_TIMESTAMP),
        (1e300, Reason.BAD_TIMESTAMP),
        (315532800, Reason.BAD_TIMESTAMP),  # 1980: a broken clock
        (10**30, Reason.BAD_TIMESTAMP),
        ("0001-01-01T00:00:00+01:00", Reason.BAD_TIMESTAMP),
        (1_000_000_000, Reason.LATE),  # 2001
    ],
)
def test_unusable_timestamps_fall_back_to_the_record_time_or_are_late(stamp, reason):
    result, quality = project(run("agent", {}, timestamp=stamp))
    assert quality == {(WINDOW_START, "agent", reason): 1}
    if reason == Reason.LATE:
        assert isinstance(result, Rejection) and result.reason == Reason.LATE
    else:
        assert result == (WINDOW_START, ("agent", "1.0.0", *ALL_NONE, ()))


@pytest.mark.parametrize("stamp", [True, False, {"s": 1}, [NOW_S]])
def test_a_timestamp_of_the_wrong_type_is_a_dead_letter(stamp):
    result, quality = project(run("agent", {}, timestamp=stamp))
    assert isinstance(result, Rejection) and result.dead_letter
    assert (result.reason, result.path, result.kind) == (Reason.WRONG_TYPE, "$.timestamp", "agent")
    assert quality == {(WINDOW_START, "agent", Reason.WRONG_TYPE): 1}


def test_a_rejected_event_gets_no_timestamp_note():
    # Regression: a timestamp note used to be counted before the data was validated, so one rejected event
    # counted twice in the quality table (bad_timestamp + wrong_type). Notes are only for counted events.
    result, quality = project(run("agent", {"has_new_flag": 1}, timestamp="yesterday"))
    assert isinstance(result, Rejection) and (result.reason, result.path) == (Reason.WRONG_TYPE, "$.data.has_new_flag")
    assert quality == {(WINDOW_START, "agent", Reason.WRONG_TYPE): 1}


# --- privacy ----------------------------------------------------------------------------------------

SENTINEL = "SENTINEL-5e1f"


def sentinel_payload(kind: str, new_flag: bool) -> dict:
    data = {
        f"{kind}_id": SENTINEL + "-id",
        "instructions": SENTINEL + "-instr",
        "unknown": SENTINEL + "-data",
        "prompt": {"text": SENTINEL + "-prompt"},
        "response": [{"content": SENTINEL + "-response"}],
        "messages": [SENTINEL],
        "model_id": "gpt-5.2",
        "has_tools": True,
        "parser_model": {"model_id": "gpt-5.2", "system_prompt": SENTINEL + "-nested"},
    }
    if new_flag:  # forces the dict path, which materialises `data`
        data["has_brand_new"] = True
    return {
        "session_id": SENTINEL + "-session",
        "run_id": SENTINEL + "-run",
        "os_id": SENTINEL + "-os",
        "type": kind,
        "sdk_version": "2.4.1",
        "user_prompt": SENTINEL + "-top",
        "api_key": SENTINEL,
        "extra": {"deep": [SENTINEL]},
        "data": data,
    }


@pytest.mark.parametrize("new_flag", [False, True], ids=["typed path", "dict path"])
@pytest.mark.parametrize("kind", sorted(EVENT_KINDS))
def test_identifiers_prompts_and_unknown_fields_never_leave_the_projector(kind, new_flag):
    result, quality = project(encode(sentinel_payload(kind, new_flag)))
    assert type(result) is tuple
    features = ("has_brand_new", "has_tools") if new_flag else ("has_tools",)
    pattern = {"os": (NO_CONFIGURATION,), "team": (NO_TEAM_PATTERN,), "workflow": (NO_WORKFLOW_PATTERN,)}.get(kind, ())
    assert result == (
        WINDOW_START,
        (kind, "2.4.1", NONE, NONE, "gpt-5.2", NONE, NONE, "gpt-5.2", NONE, NONE, NONE, features, *pattern),
    )
    assert quality == {}
    assert "SENTINEL" not in repr(result) + repr(quality)


SECRETS = [
    "sk-proj-AbCdEf1234567890",
    "Bearer xyz0123456789abc",
    "Bearer eyJhbGciOiJIUzI1NiJ9abc",
    "user@example.com",
    "postgres://u:p@host/db",
    "postgres://app:hunter2@db:5432/x",
    "3f2a9c1e7b8d4a6f9e0c1b2a3d4e5f60",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_abcdefghijklmnop1234",
]


@pytest.mark.parametrize("value", SECRETS)
def test_secret_looking_values_are_redacted_and_counted(value):
    result, quality = project(run("agent", {"model_id": value}))
    assert result == (WINDOW_START, ("agent", "1.0.0", NONE, NONE, REDACTED, *[NONE] * 6, ()))
    assert quality == {(WINDOW_START, "agent", Reason.REDACTED_VALUE): 1}


@pytest.mark.parametrize(
    ("field", "dim"),
    [
        ("sdk_version", "sdk_version"),
        ("model_provider", "model_provider"),
        ("model_name", "model_name"),
        ("db_type", "db_type"),
        ("parser_model.model_provider", "parser_provider"),
        ("parser_model.model_id", "parser_model_id"),
        ("output_model.model_provider", "output_provider"),
        ("output_model.model_id", "output_model_id"),
    ],
)
def test_every_value_dimension_is_redacted(field, dim):
    secret = "user@example.com"
    data: dict = {}
    envelope = {}
    if field == "sdk_version":
        envelope["sdk_version"] = secret
    elif "." in field:
        ref, key = field.split(".")
        data[ref] = {key: secret}
    else:
        data[field] = secret
    result, quality = project(run("team", data, **envelope))
    # an SDK version is a version or nothing: a secret there is no version (formats before values)
    marker, reason = (INVALID, Reason.INVALID_VALUE) if field == "sdk_version" else (REDACTED, Reason.REDACTED_VALUE)
    expected = dict.fromkeys(DIMENSIONS, NONE) | {"kind": "team", "sdk_version": "1.0.0", "features": (), dim: marker}
    assert result == (WINDOW_START, (*expected.values(), NO_TEAM_PATTERN))
    assert quality == {(WINDOW_START, "team", reason): 1}


def test_each_redacted_or_invalid_value_is_counted():
    data = {
        "model_id": "sk-proj-AbCdEf1234567890",
        "db_type": "user@example.com",
        "model_name": "x" * 101,
        "model_provider": "bad\nvalue",
    }
    result, quality = project(run("agent", data))
    assert result == (WINDOW_START, ("agent", "1.0.0", INVALID, INVALID, REDACTED, REDACTED, *[NONE] * 5, ()))
    assert quality == {
        (WINDOW_START, "agent", Reason.REDACTED_VALUE): 2,
        (WINDOW_START, "agent", Reason.INVALID_VALUE): 2,
    }


@pytest.mark.parametrize(
    "value",
    [
        "x" * 101,
        "gpt\n4",
        'gpt"4',
        "gpt'4",
        "gpt\x00",
        "gpt\x01x",
        "gpt\t4",
        "\u202egpt",
        "",
        " leading-space",
        "-leading-dash",
        "gpt;drop",
        "gpt<4>",
    ],
)
def test_overlong_or_disallowed_values_are_marked_invalid_and_counted(value):
    result, quality = project(run("agent", {"model_id": value}))
    assert result == (WINDOW_START, ("agent", "1.0.0", NONE, NONE, INVALID, *[NONE] * 6, ()))
    assert quality == {(WINDOW_START, "agent", Reason.INVALID_VALUE): 1}


@pytest.mark.parametrize(
    "value",
    [
        "gpt-5.2",
        "claude-3-7-sonnet-latest",
        "us.anthropic.claude-sonnet-4-5-v1:0",
        "meta-llama/Llama-3.3-70B-Instruct",
        "qwen2.5:7b",
        "openai/gpt-oss-120b",
        "x" * 100,
        "PostgresDb",
        "OpenAIResponses",
    ],
)
def test_real_model_ids_are_kept(value):
    assert dims(run("agent", {"model_id": value}))[MODEL_ID] == value


def test_the_value_cache_gives_the_same_verdict_twice():
    shared = projector()
    for _ in range(2):
        tally = Tally()
        result = shared.project(run("agent", {"model_id": "user@example.com", "db_type": "x\ny"}), NOW_MS, tally)
        quality = tally.quality
        assert result == (WINDOW_START, ("agent", "1.0.0", NONE, NONE, REDACTED, INVALID, *[NONE] * 5, ()))
        assert quality == {
            (WINDOW_START, "agent", Reason.REDACTED_VALUE): 1,
            (WINDOW_START, "agent", Reason.INVALID_VALUE): 1,
        }


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
    ("trailing comma", b'{"type":"agent","session_id":"s",}', Reason.NOT_JSON, "$"),
    ("single quotes", b"{'type':'agent','session_id':'s'}", Reason.NOT_JSON, "$"),
    ("latin-1", '{"type":"agent","session_id":"s","sdk_version":"é"}'.encode("latin-1"), Reason.NOT_UTF8, "$"),
    ("UTF-16", '{"type":"agent","session_id":"s"}'.encode("utf-16"), Reason.NOT_UTF8, "$"),
    ("lone surrogate escape", b'{"type":"agent","session_id":"s","sdk_version":"\\ud800"}', Reason.NOT_JSON, "$"),
    ("NaN", b'{"type":"agent","session_id":"s","timestamp":NaN}', Reason.NOT_JSON, "$"),
    ("NaN in data", b'{"type":"agent","session_id":"s","data":{"x":NaN}}', Reason.NOT_JSON, "$"),
    ("Infinity", b'{"type":"agent","session_id":"s","timestamp":Infinity}', Reason.NOT_JSON, "$"),
    ("JSON array", b'["agent"]', Reason.NOT_OBJECT, "$"),
    ("JSON string", b'"agent"', Reason.NOT_OBJECT, "$"),
    ("JSON number", b"42", Reason.NOT_OBJECT, "$"),
    ("JSON true", b"true", Reason.NOT_OBJECT, "$"),
    ("JSON null", b"null", Reason.NOT_OBJECT, "$"),
    ("100k nesting", DEEP, Reason.OVERSIZED, "$"),
    ("5k nesting in an unknown field", SHALLOW_DEEP, Reason.NOT_JSON, "$"),
    (
        "10 MB payload",
        b'{"type":"agent","session_id":"s","data":{"x":"' + b"a" * 10_000_000 + b'"}}',
        Reason.OVERSIZED,
        "$",
    ),
    ("huge array", b'{"type":"agent","session_id":"s","data":{"x":[' + b"1," * 40_000 + b"1]}}", Reason.OVERSIZED, "$"),
    ("type is a number", run(None, {}, type=7), Reason.WRONG_TYPE, "$.type"),
    ("session_id is an object", run("agent", {}, session_id={"id": 1}), Reason.WRONG_TYPE, "$.session_id"),
    ("session_id is a number", run("agent", {}, session_id=123), Reason.WRONG_TYPE, "$.session_id"),
    ("os_id is a number", run("os", {}, os_id=5), Reason.WRONG_TYPE, "$.os_id"),
    ("sdk_version is a number", run("agent", {}, sdk_version=2.4), Reason.WRONG_TYPE, "$.sdk_version"),
    ("sdk_version is a bool", run("agent", {}, sdk_version=True), Reason.WRONG_TYPE, "$.sdk_version"),
    ("sdk_version is a list", run("agent", {}, sdk_version=["1"]), Reason.WRONG_TYPE, "$.sdk_version"),
    ("data is an array", run("agent", [1, 2]), Reason.WRONG_TYPE, "$.data"),
    ("data is a string", run("agent", "x"), Reason.WRONG_TYPE, "$.data"),
    ("data is a number", run("agent", 5), Reason.WRONG_TYPE, "$.data"),
    ("model_id is a number", run("agent", {"model_id": 5}), Reason.WRONG_TYPE, "$.data.model_id"),
    ("model_id is a bool", run("agent", {"model_id": False}), Reason.WRONG_TYPE, "$.data.model_id"),
    (
        "model_provider is an object",
        run("agent", {"model_provider": {"a": 1}}),
        Reason.WRONG_TYPE,
        "$.data.model_provider",
    ),
    ("model_name is a list", run("agent", {"model_name": ["x"]}), Reason.WRONG_TYPE, "$.data.model_name"),
    ("db_type is a list", run("agent", {"db_type": ["PostgresDb"]}), Reason.WRONG_TYPE, "$.data.db_type"),
    ("parser_model is a string", run("agent", {"parser_model": "gpt"}), Reason.WRONG_TYPE, "$.data.parser_model"),
    ("parser_model is a list", run("agent", {"parser_model": [1]}), Reason.WRONG_TYPE, "$.data.parser_model"),
    ("output_model is a string", run("agent", {"output_model": "gpt"}), Reason.WRONG_TYPE, "$.data.output_model"),
    (
        "parser model_id is a number",
        run("agent", {"parser_model": {"model_id": 5}}),
        Reason.WRONG_TYPE,
        "$.data.parser_model.model_id",
    ),
    (
        "parser model_id is a list",
        run("agent", {"parser_model": {"model_id": [1]}}),
        Reason.WRONG_TYPE,
        "$.data.parser_model.model_id",
    ),
    (
        "output model_provider is an object",
        run("agent", {"output_model": {"model_provider": {}}}),
        Reason.WRONG_TYPE,
        "$.data.output_model.model_provider",
    ),
    ("known flag is a string", run("agent", {"has_tools": "yes"}), Reason.WRONG_TYPE, "$.data.has_tools"),
    ("known flag is a number", run("agent", {"has_tools": 1}), Reason.WRONG_TYPE, "$.data.has_tools"),
    ("unknown flag is a number", run("agent", {"has_new_thing": 1}), Reason.WRONG_TYPE, "$.data.has_new_thing"),
    ("unknown flag is a string", run("agent", {"has_new_thing": "true"}), Reason.WRONG_TYPE, "$.data.has_new_thing"),
    ("member_count is a string", run("team", {"member_count": "3"}), Reason.WRONG_TYPE, "$.data.member_count"),
    ("member_count is a bool", run("team", {"member_count": True}), Reason.WRONG_TYPE, "$.data.member_count"),
    ("member_count is a float", run("team", {"member_count": 2.5}), Reason.WRONG_TYPE, "$.data.member_count"),
    ("member_count is an integral float", run("team", {"member_count": 3.0}), Reason.WRONG_TYPE, "$.data.member_count"),
    ("timestamp is a bool", run("agent", {}, timestamp=True), Reason.WRONG_TYPE, "$.timestamp"),
    ("timestamp is an object", run("agent", {}, timestamp={"s": 1}), Reason.WRONG_TYPE, "$.timestamp"),
    ("session_id missing", encode({"type": "agent", "data": {}}), Reason.MISSING_FIELD, "$.session_id"),
    ("session_id null", run("agent", {}, session_id=None), Reason.MISSING_FIELD, "$.session_id"),
    ("team session_id missing", encode({"type": "team", "data": {}}), Reason.MISSING_FIELD, "$.session_id"),
    ("workflow session_id null", run("workflow", {}, session_id=None), Reason.MISSING_FIELD, "$.session_id"),
    ("type missing", encode({"session_id": "s", "data": {}}), Reason.MISSING_FIELD, "$.type"),
    ("type null", run(None, {}, type=None), Reason.MISSING_FIELD, "$.type"),
    ("empty object", b"{}", Reason.MISSING_FIELD, "$.type"),
    ("unknown kind", run("assistant", {}), Reason.UNKNOWN_KIND, "$.type"),
    ("kind with different case", run("Agent", {}), Reason.UNKNOWN_KIND, "$.type"),
    ("kind with whitespace", run("agent ", {}), Reason.UNKNOWN_KIND, "$.type"),
    ("empty kind", run("", {}), Reason.UNKNOWN_KIND, "$.type"),
]


@pytest.mark.parametrize(("raw", "reason", "path"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_input_lands_in_the_dlq_with_its_reason_and_path(raw, reason, path):
    started = time.perf_counter()
    result, quality = project(raw)
    assert isinstance(result, Rejection) and result.dead_letter
    assert (result.reason, result.path) == (reason, path)
    assert quality == {(WINDOW_START, result.kind, reason): 1}
    assert time.perf_counter() - started < 1.0  # none stalls a partition


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (run("team", {"member_count": "3"}), "team"),  # the kind is known when the data is wrong
        (run("os", {"has_new": 7}), "os"),
        (run("workflow", {}, session_id=None), "workflow"),
        (run("assistant", {}), "unknown"),  # but not for an unknown kind
        (b"not json", "unknown"),
        (None, "unknown"),
    ],
)
def test_a_rejection_carries_the_kind_when_it_is_known(raw, kind):
    result, quality = project(raw)
    assert isinstance(result, Rejection) and result.kind == kind
    assert quality == {(WINDOW_START, kind, result.reason): 1}


def test_rejection_details_name_types_not_values():
    result, _ = project(run("agent", {"model_id": 5}))
    assert result.detail == "Expected `str | null`, got `int`"
    result, _ = project(b"x" * (MAX_BYTES + 1))
    assert (result.reason, result.detail) == (Reason.OVERSIZED, f"{MAX_BYTES + 1} bytes > {MAX_BYTES}")
    result, _ = project(b'{"session_id":"\xff"}')
    assert (result.reason, result.detail) == (Reason.NOT_UTF8, "invalid byte at position 15")


def test_oversized_is_strictly_more_than_max_event_bytes():
    raw = run("agent", {})
    assert type(project(raw, max_event_bytes=len(raw))[0]) is tuple
    result, quality = project(raw, max_event_bytes=len(raw) - 1)
    assert isinstance(result, Rejection) and result.reason == Reason.OVERSIZED
    assert quality == {(WINDOW_START, "unknown", Reason.OVERSIZED): 1}


@pytest.mark.parametrize(
    "prefix", [b'"x":', b'"has_new":true,"x":', b'"x":"\\u0041","y":'], ids=["typed path", "new flag", "escape"]
)
def test_deep_nesting_within_the_size_limit_is_not_json_and_does_not_raise(prefix):
    raw = b'{"type":"agent","session_id":"s","data":{' + prefix + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    result, quality = project(raw, max_event_bytes=1 << 20)
    assert isinstance(result, Rejection) and result.dead_letter
    assert (result.reason, result.path, result.detail) == (Reason.NOT_JSON, "$", "nesting too deep")
    assert quality == {(WINDOW_START, "unknown", Reason.NOT_JSON): 1}


@pytest.mark.parametrize("reason", list(Reason))
def test_only_quality_reasons_are_kept_out_of_the_dlq(reason):
    assert Rejection(reason).dead_letter is (reason not in QUALITY_ONLY)


def test_late_is_the_only_rejection_kept_out_of_the_dlq():
    result, _ = project(run("agent", {}, timestamp=NOW_S - LATENESS - 1))
    assert result.reason == Reason.LATE and result.dead_letter is False
    assert Rejection(Reason.UNPROCESSABLE).dead_letter is True


ACCEPTED: list[tuple[str, bytes, tuple]] = [
    (
        "duplicate keys: the last wins",
        b'{"type":"agent","session_id":"s","sdk_version":"1.0.0",'
        b'"data":{"model_id":"a","model_id":"gpt-5.2","has_tools":false,"has_tools":true}}',
        ("agent", "1.0.0", NONE, NONE, "gpt-5.2", NONE, NONE, NONE, NONE, NONE, NONE, ("has_tools",)),
    ),
    (
        "duplicate keys on the typed path: the last wins",
        b'{"type":"agent","session_id":"s","sdk_version":"1","sdk_version":"2","data":{"model_id":"a","model_id":"b"}}',
        ("agent", "2", NONE, NONE, "b", *[NONE] * 6, ()),
    ),
    (
        "duplicate flag, last false",
        b'{"type":"agent","session_id":"s","data":{"has_tools":true,"has_tools":false}}',
        ("agent", NONE, *ALL_NONE, ()),
    ),
    (
        "duplicate type: the last wins",
        b'{"type":"bogus","type":"team","session_id":"s"}',
        ("team", NONE, *ALL_NONE, (), NO_TEAM_PATTERN),
    ),
    (
        "escaped key spelling a flag",
        b'{"type":"agent","session_id":"s","data":{"\\u0068as_tools":true}}',
        ("agent", NONE, *ALL_NONE, ("has_tools",)),
    ),
    (
        "escaped value",
        b'{"type":"agent","session_id":"s","data":{"model_id":"gpt\\u002d5"}}',
        ("agent", NONE, NONE, NONE, "gpt-5", *[NONE] * 6, ()),
    ),
    (
        "control characters in a value",
        run("agent", {"model_id": "gpt\u0007x"}, sdk_version="1.0.0"),
        ("agent", "1.0.0", NONE, NONE, INVALID, *[NONE] * 6, ()),
    ),
    (
        "garbage keys",
        encode({"type": "agent", "session_id": "s", "\u0000\uffff": 1, "x" * 1000: [None]}),
        ("agent", NONE, *ALL_NONE, ()),
    ),
    (
        "unicode model name",
        run("agent", {"model_name": "模型"}, sdk_version="1.0.0"),
        ("agent", "1.0.0", NONE, INVALID, *[NONE] * 7, ()),
    ),
    ("empty session_id counts as present", run("agent", {}, session_id=""), ("agent", "1.0.0", *ALL_NONE, ())),
    (
        "huge integer in an unknown field",
        b'{"type":"agent","session_id":"s","data":{"x":1' + b"0" * 400 + b"}}",
        ("agent", NONE, *ALL_NONE, ()),
    ),
    (
        "out-of-range float in an unknown field",
        b'{"type":"agent","session_id":"s","data":{"x":1e400}}',
        ("agent", NONE, *ALL_NONE, ()),
    ),
    ("whitespace around the object", b'\n  {"type":"agent","session_id":"s"}  \n', ("agent", NONE, *ALL_NONE, ())),
]


@pytest.mark.parametrize(("raw", "expected"), [case[1:] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED])
def test_odd_but_valid_input_is_accepted_with_the_documented_projection(raw, expected):
    result, quality = project(raw)
    assert result == (WINDOW_START, expected)
    invalid = expected.count(INVALID)
    assert quality == ({(WINDOW_START, "agent", Reason.INVALID_VALUE): invalid} if invalid else {})


NOT_UTF8_ANYWHERE = [
    ("in a known field", b'{"type":"agent","session_id":"\xff"}'),
    ("in run_id", b'{"type":"agent","session_id":"s","run_id":"ab\xffcd"}'),
    ("in an unknown top-level key", b'{"type":"agent","session_id":"s","\xfe\xff":1}'),
    ("overlong encoding in run_id", b'{"type":"agent","session_id":"s","run_id":"\xc0\xaf"}'),
    ("encoded surrogate in run_id", b'{"type":"agent","session_id":"s","run_id":"\xed\xa0\x80"}'),
    ("in an unknown data field", b'{"type":"agent","session_id":"s","data":{"prompt":"\xff"}}'),
    (
        "in an unknown data field, with a new flag",
        b'{"type":"agent","session_id":"s","data":{"prompt":"\xff","has_new":true}}',
    ),
    ("in an unknown data key, with an escape", b'{"type":"agent","session_id":"s","data":{"\xff":1,"y":"\\u0041"}}'),
]


@pytest.mark.parametrize("raw", [case[1] for case in NOT_UTF8_ANYWHERE], ids=[case[0] for case in NOT_UTF8_ANYWHERE])
def test_invalid_utf8_anywhere_is_a_not_utf8_dead_letter(raw):
    # Regression: only known fields used to be UTF-8 checked. Bad bytes in a skipped field (run_id, unknown
    # keys, unknown data fields) counted the event as valid, and with a new has_* flag or a \u escape the
    # second (dict) decode raised UnicodeDecodeError out of project().
    with pytest.raises(UnicodeDecodeError) as error:
        raw.decode("utf-8")
    result, quality = project(raw)
    assert isinstance(result, Rejection)
    assert (result.reason, result.path, result.detail) == (
        Reason.NOT_UTF8,
        "$",
        f"invalid byte at position {error.value.start}",
    )
    assert quality == {(WINDOW_START, "unknown", Reason.NOT_UTF8): 1}


def test_a_wrong_type_in_any_duplicate_is_rejected():
    # The typed decoder checks every occurrence of a known key, so a wrong-typed first value is not
    # hidden by a later valid one.
    result, _ = project(b'{"type":"agent","session_id":"s","data":{"model_id":5,"model_id":"a"}}')
    assert isinstance(result, Rejection) and (result.reason, result.path) == (Reason.WRONG_TYPE, "$.data.model_id")


@pytest.mark.parametrize(
    ("data", "features"),
    [
        (b'{"x":1e400,"has_new":true}', ("has_new",)),
        (b'{"x":-1e400,"has_new":true}', ("has_new",)),
        (b'{"parser_model":{"x":1e400},"has_new":true}', ("has_new",)),
        (b'{"x":[1e400],"has_tools":true,"has_tools":true}', ("has_tools",)),
        (b'{"x":1e400,"y":"\\u0041"}', ()),
    ],
    ids=["new flag", "negative", "inside parser_model", "duplicate flag", "escape"],
)
def test_an_out_of_range_number_in_data_never_makes_project_raise(data, features):
    # Regression: the typed decode skips the unknown field, but the second (dict) decode used to raise
    # msgspec.ValidationError("Number out of range") out of project(). Now both decodes accept it, like the
    # same event without the new flag/escape (see ACCEPTED above).
    raw = b'{"type":"agent","session_id":"s","sdk_version":"1.0.0","data":' + data + b"}"
    result, quality = project(raw)
    assert result == (WINDOW_START, ("agent", "1.0.0", *ALL_NONE, features))
    assert quality == {}


def test_the_hostile_corpus_has_at_least_25_classes():
    assert len(HOSTILE) + len(ACCEPTED) >= 25
    # every reason the validator dead-letters an event for (ranges of offsets are not the validator's)
    assert {case[2] for case in HOSTILE} == {
        reason
        for reason in Reason
        if reason not in QUALITY_ONLY and reason is not Reason.UNPROCESSABLE and reason not in GONE
    }


# --- properties ---------------------------------------------------------------------------------------


def json_like(floats: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | floats | st.text(),
        lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
        max_leaves=30,
    )


json_values = json_like(st.floats(allow_nan=False))  # infinities encode as `Infinity`: not JSON
finite_json_values = json_like(st.floats(allow_nan=False, allow_infinity=False))  # for valid events


def is_classified(result: object) -> bool:
    if type(result) is tuple:
        width = 3 if result[1][0] == "client_report" else len(DIMENSIONS) + (result[1][0] in PATTERNS)
        return len(result) == 2 and type(result[0]) is int and len(result[1]) == width
    return isinstance(result, Rejection) and isinstance(result.reason, Reason)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_get_a_classification_and_never_raise(raw):
    result, _ = project(raw)
    assert is_classified(result)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_gets_a_classification_and_never_raise(value):
    result, _ = project(encode(value))
    assert is_classified(result)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(KINDS)),
    st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    st.dictionaries(st.text(max_size=12), json_values, max_size=4),
)
def test_any_json_inside_a_valid_envelope_gets_a_classification_and_never_raise(kind, data, extra):
    result, _ = project(encode({**extra, "type": kind, "session_id": "s", "data": data}))
    assert is_classified(result)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(PATTERNS)).flatmap(
        lambda kind: st.tuples(
            st.just(kind), st.fixed_dictionaries({}, optional={d.path[1]: finite_json_values for d in PATTERNS[kind]})
        )
    )
)
def test_no_pattern_value_dead_letters_a_launch_a_team_or_a_workflow(drawn):
    kind, data = drawn
    result, _ = project(encode({"type": kind, "session_id": "s", "data": data}))
    assert type(result) is tuple, result
    for dimension, value in zip(PATTERNS[kind], result[1][-1], strict=True):
        assert type(value) is (tuple if dimension.source in ("names", "enums") else str), (dimension, value)


json_number = st.from_regex(r"-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,6})?([eE][+-]?[0-9]{1,4})?", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(json_number, st.booleans())
def test_any_json_number_literal_in_data_never_raises(number, new_flag):
    # Fails on the same bug as test_an_out_of_range_number_in_data_never_makes_project_raise.
    flag = b',"has_new":true' if new_flag else b""
    raw = b'{"type":"agent","session_id":"s","data":{"x":' + number.encode() + flag + b"}}"
    result, _ = project(raw)
    assert is_classified(result)


text = st.text(max_size=40)
maybe_text = st.none() | text
model_ref = st.none() | st.fixed_dictionaries(
    {}, optional={"model_provider": maybe_text, "model_id": maybe_text, "model_name": maybe_text}
)
DATA_FIELDS = ("model_provider", "model_name", "model_id", "db_type", "parser_model", "output_model", "member_count")
ENVELOPE_FIELDS = {"type", "session_id", "os_id", "sdk_version", "timestamp", "data"}


@st.composite
def valid_events(draw):
    """A valid event of any kind with arbitrary text in every field (identifiers included) and arbitrary
    extra keys, and the set of strings that may legitimately appear among its dimensions."""
    kind = draw(st.sampled_from(sorted(EVENT_KINDS)))
    data = {
        # extra keys first, so that the contract's fields below always win
        **draw(
            st.dictionaries(
                st.text(max_size=14).filter(lambda k: not k.startswith("has_") and k not in DATA_FIELDS),
                finite_json_values,
                max_size=3,
            )
        ),
        f"{kind}_id": draw(text),
        "model_provider": draw(maybe_text),
        "model_name": draw(maybe_text),
        "model_id": draw(maybe_text),
        "db_type": draw(maybe_text),
        "parser_model": draw(model_ref),
        "output_model": draw(model_ref),
        "member_count": draw(st.none() | st.integers(-5, 10_000)),
        **{
            f"has_{name}": draw(st.none() | st.booleans())
            for name in draw(st.lists(st.from_regex(r"[a-zA-Z0-9_ -]{1,20}", fullmatch=True), max_size=6))
        },
    }
    for field in DATA_FIELDS:
        if draw(st.booleans()):
            del data[field]
    event = {
        **draw(
            st.dictionaries(
                st.text(max_size=12).filter(lambda k: k not in ENVELOPE_FIELDS), finite_json_values, max_size=3
            )
        ),
        "session_id": draw(text),
        "run_id": draw(text),
        "type": kind,
        "sdk_version": draw(maybe_text),
        "data": data,
    }
    if kind == "os" or draw(st.booleans()):
        event["os_id"] = draw(text)
    allowed = {
        v
        for k, v in data.items()
        if k in ("model_provider", "model_name", "model_id", "db_type") and isinstance(v, str)
    }
    for ref in ("parser_model", "output_model"):
        if isinstance(data.get(ref), dict):
            allowed |= {v for k, v in data[ref].items() if k in ("model_provider", "model_id") and isinstance(v, str)}
    if isinstance(event["sdk_version"], str):
        allowed.add(event["sdk_version"])
    return event, allowed


@settings(max_examples=300, deadline=None)
@given(valid_events())
def test_a_valid_event_projects_only_allow_listed_values(case):
    event, allowed = case
    result, quality = project(encode(event))
    assert type(result) is tuple, result
    window_start, projected = result
    if event["type"] in PATTERNS:
        projected = projected[:-1]  # the pattern: see the launch, team and workflow pattern tests
    assert window_start == WINDOW_START and len(projected) == len(DIMENSIONS)
    assert projected[0] == event["type"]
    markers = {NONE, INVALID, REDACTED, RARE} | KINDS | MEMBER_BUCKETS
    for value in projected[:-1]:
        assert type(value) is str and (value in markers or value in allowed), value
    features = projected[-1]
    assert list(features) == sorted(features) and all(name.startswith("has_") or name == RARE for name in features)
    # every true flag is counted: under its name when admitted, else under RARE (a malformed or
    # secret-looking name is dropped, and counted)
    named = {k for k, v in event["data"].items() if k.startswith("has_") and v is True and clean_flag_name(k)}
    admitted = {name for name in named if ADMITTED.admits("flag", name)}
    assert set(features) == admitted | ({RARE} if named - admitted else set())
    # the quality notes of a counted event are only about its values or names
    assert {reason for (_, _, reason) in quality} <= {Reason.INVALID_VALUE, Reason.REDACTED_VALUE, Reason.RARE_VALUE}


@pytest.mark.parametrize("marker, reason", [(REDACTED, Reason.REDACTED_VALUE), (INVALID, Reason.INVALID_VALUE)])
def test_a_value_the_client_already_replaced_keeps_its_marker(marker, reason):
    result, quality = project(run("agent", {"model_id": marker}))
    assert result == (WINDOW_START, ("agent", "1.0.0", NONE, NONE, marker, *[NONE] * 6, ()))
    assert quality == {(WINDOW_START, "agent", reason): 1}


# --- client reports ----------------------------------------------------------------------------------


def report(dropped: object, **envelope) -> bytes:
    return encode({"type": "client_report", "sdk_version": "2.4.1", "data": {"dropped": dropped}, **envelope})


def test_a_client_report_projects_onto_its_reasons_and_counts():
    result, quality = project(report({"queue_full": 3, "send_failed": 0, "unsent_at_exit": 7, "a_new_reason": 1}))
    assert result == (
        WINDOW_START,
        ("client_report", "2.4.1", (("a_new_reason", 1), ("queue_full", 3), ("unsent_at_exit", 7))),
    )
    assert quality == {}
    assert project(encode({"type": "client_report", "sdk_version": "2.4.1"}))[0] == (
        WINDOW_START,
        ("client_report", "2.4.1", ()),
    )  # no session needed, nothing dropped


@pytest.mark.parametrize(
    "dropped, path, detail",
    [
        ({"queue_full": -1}, "$.data.dropped[...]", "Expected `int` >= 0"),
        ({"queue_full": "3"}, "$.data.dropped[...]", "Expected `int`, got `str`"),
        ([3], "$.data.dropped", "Expected `object | null`, got `array`"),
    ],
)
def test_a_malformed_client_report_is_dead_lettered_with_its_path(dropped, path, detail):
    result, quality = project(report(dropped))
    assert (result.reason, result.path, result.detail, result.kind) == (
        Reason.WRONG_TYPE,
        path,
        detail,
        "client_report",
    )
    assert quality == {(WINDOW_START, "client_report", Reason.WRONG_TYPE): 1}


def test_a_client_reports_names_follow_the_value_rules():
    result, quality = project(report({"sk-live-0123456789abcdef": 2, "bad\nreason": 1}, sdk_version="user@x.io"))
    assert result == (WINDOW_START, ("client_report", INVALID, ((INVALID, 1), (REDACTED, 2))))
    assert quality == {
        (WINDOW_START, "client_report", Reason.INVALID_VALUE): 2,
        (WINDOW_START, "client_report", Reason.REDACTED_VALUE): 1,
    }
