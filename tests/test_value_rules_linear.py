"""Cost is bounded by size, never by shape (issue 17): the value rules are capped and linear.

Every rule that judges a client's string (the public functions of `formats` and `values`, the registry's
`known`, the admission, the SDK client's builders, the worker's projector) runs on every adversarial shape
of `bench.value_rules` at MAX_RAW_LENGTH, the longest raw value any rule looks at; its worst shape, best of
5, must take at most BUDGET. Every compiled pattern applied to client text runs on its 20 worst shapes at
GROWTH times that length, where a linear pattern still costs well under a millisecond and one whose
quantifiers overlap costs tens of milliseconds or more: the patterns are linear themselves, not only
capped. A 1 MB string is INVALID at once, and no cache of the client or the worker keeps it.
"""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import msgspec
import pytest
from kern_telemetry_client import contract, formats, payloads, values
from kern_telemetry_client.formats import free_text, normalize, sdk_version
from kern_telemetry_client.values import INVALID, MAX_RAW_LENGTH, clean_flag_name, clean_value

from bench.value_rules import RULES, best_time, shaped, slowest_shapes
from pipeline import known_values, projector
from pipeline.admission import Admission, Keys
from pipeline.dimensions import DIMENSIONS
from pipeline.known_values import known
from pipeline.projector import EventProjector, Tally

#: Seconds per call: 25 to 100 times what the worst linear rule costs at the cap (50-200 µs on this machine,
#: the projector's JSON encoding and decoding included), while a rule that backtracks costs seconds.
BUDGET = 0.005
GROWTH = 8
MEGABYTE = 1 << 20

ALL_RULES = {
    **RULES,
    "formats.free_text": lambda: free_text,
    "formats.sdk_version": lambda: sdk_version,
    "formats.normalize (model_name)": lambda: lambda value: normalize("model_name", value),
    "clean_value (db_type)": lambda: lambda value: clean_value(value, "db_type"),
    "known (model_id)": lambda: lambda value: known("model_id", value),
    "known (sdk_version)": lambda: lambda value: known("sdk_version", value),
    "Admission.admits (model_id)": lambda: lambda value: Admission().admits("model_id", value),
}

#: How each compiled pattern of the value rules is applied to client text. Every pattern of these modules
#: is listed (see the test below), so a new one is timed too.
APPLIED = {
    formats._PEP440: "fullmatch",
    formats._SEMVER: "fullmatch",
    formats._ARN_RESOURCE_TYPE: "match",
    formats._SYSTEM_PROFILE: "fullmatch",
    formats._NUMBER_RUNS: "findall",
    formats._IPV6_RUNS: "findall",
    formats._HOST_RUNS: "findall",
    formats._UUID: "search",
    values._VALUE_CHARS: "fullmatch",
    values._FLAG_NAME: "fullmatch",
    values._SECRET_PATTERNS: "search",
    values._LONG_TOKENS: "findall",
    known_values.MODEL_FAMILIES: "fullmatch",
    known_values.SDK_VERSIONS: "fullmatch",
    projector._MSGSPEC_PATH: "search",  # msgspec's messages, which name paths and types, never values
}


@pytest.mark.parametrize("name", ALL_RULES)
def test_every_rule_takes_at_most_the_budget_on_its_worst_shape_at_the_cap(name):
    rule = ALL_RULES[name]
    shape = slowest_shapes(rule(), MAX_RAW_LENGTH)[0]
    seconds = best_time(rule, shaped(MAX_RAW_LENGTH, *shape))
    print(f"\n{name}: {seconds * 1e6:.0f} µs at {MAX_RAW_LENGTH} characters, worst shape {shape!r}")
    assert seconds <= BUDGET, (name, shape, seconds)


def test_every_pattern_of_the_value_rules_is_timed():
    compiled = {
        obj
        for module in (formats, values, known_values, projector)
        for obj in vars(module).values()
        if isinstance(obj, re.Pattern)
    }
    assert compiled == set(APPLIED)


@pytest.mark.parametrize("pattern", APPLIED, ids=lambda pattern: pattern.pattern[:40])
def test_every_pattern_is_linear_far_past_the_cap(pattern):
    apply = getattr(pattern, APPLIED[pattern])
    length = GROWTH * MAX_RAW_LENGTH
    worst = max(
        (best_time(lambda: apply, shaped(length, *shape)), shape) for shape in slowest_shapes(apply, MAX_RAW_LENGTH, 20)
    )
    print(
        f"\n{pattern.pattern[:40]!r}.{APPLIED[pattern]}: {worst[0] * 1e6:.0f} µs at {length} characters, {worst[1]!r}"
    )
    assert worst[0] <= BUDGET, worst


OVER_CAP = [
    shaped(MEGABYTE, "arn:aws:b:r:1:", "a", "\n"),
    shaped(MEGABYTE, "llama", "-", "\n"),
    shaped(MEGABYTE, "ft:gpt-4o-mini:", "a", ""),
    "has_" + "a" * MEGABYTE,
]
CAPPED = {
    **{
        f"clean_value ({field})": (lambda field: lambda: lambda value: clean_value(value, field))(field)
        for field in ("model_id", "model_provider", "sdk_version", "interface", "reason", "")
    },
    "clean_flag_name": lambda: clean_flag_name,
    "formats.free_text": lambda: free_text,
    "formats.sdk_version": lambda: sdk_version,
    "known (model_id)": lambda: lambda value: known("model_id", value),
    "payloads.name (model_id)": lambda: lambda value: payloads.name(value, "model_id"),
}


@pytest.mark.parametrize("name", CAPPED)
def test_a_megabyte_is_invalid_at_once(name):
    for value in OVER_CAP:
        seconds = best_time(CAPPED[name], value)
        assert seconds <= BUDGET, (name, value[:20], seconds)
    expected = {"clean_flag_name": None, "known (model_id)": False}.get(name, INVALID)
    assert all(CAPPED[name]()(value) == expected for value in OVER_CAP)


def key_strings(obj: object):
    """Every string an object holds (cache keys: tuples, model reference structs, dicts, sets)."""
    if type(obj) is str:
        yield obj
    elif isinstance(obj, msgspec.Struct):
        yield from key_strings(msgspec.structs.astuple(obj))
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from key_strings(key)
            yield from key_strings(value)
    elif isinstance(obj, (tuple, list, set, frozenset)):
        for item in obj:
            yield from key_strings(item)


def test_the_clients_caches_never_keep_a_string_over_the_cap(monkeypatch):
    """1 MB names, class names, interface types and ids through the builders, then more distinct names
    than a cache holds: each cache keeps at most _CACHE_LIMIT strings of at most MAX_RAW_LENGTH."""
    monkeypatch.setattr(payloads, "_names", {})
    ids = payloads.Identifiers(bytes(32))
    for value in OVER_CAP:
        model = SimpleNamespace(provider=value, name=value, id=value)
        db = type(value[: MEGABYTE // 2], (), {})()
        agent = SimpleNamespace(model=model, parser_model=model, output_model=model, db=db)
        event = payloads.run_event(contract.AGENT, agent, value, value, payloads.name(value, "sdk_version"), ids)
        assert {event["data"][key] for key in ("model_provider", "model_name", "model_id", "db_type")} == {INVALID}
        launch = payloads.launch_event(
            SimpleNamespace(id=value, interfaces=[SimpleNamespace(type=value)], db=db), None, ids
        )
        assert launch["data"]["interfaces"] == launch["data"]["db_types"] == [INVALID]
    for i in range(payloads._CACHE_LIMIT + 100):
        name = f"{i:08d}-" + "n" * (MAX_RAW_LENGTH - 9)
        payloads.name(name, "model_name")
        ids.digest(name)
    for strings in ([raw for _, raw in payloads._names], list(ids._digests)):  # _names: (field, raw) keys
        assert 0 < len(strings) <= payloads._CACHE_LIMIT and max(map(len, strings)) <= MAX_RAW_LENGTH
        assert sum(map(len, strings)) <= payloads._CACHE_LIMIT * MAX_RAW_LENGTH  # 1 Mi characters


def test_the_workers_caches_never_keep_a_string_over_the_cap():
    """Events with a 1 MB string in every free-text field, flag name, launch name and client report reason:
    stored as INVALID, and no cache or candidate of the projector holds it."""
    worker = EventProjector(60, 3600, 300, 16 * MEGABYTE, keys=Keys(b"k"))
    tally = Tally()
    now_ms = int(time.time() * 1000)
    for value in OVER_CAP:
        model = {"model_provider": value, "model_name": value, "model_id": value}
        events = [
            {
                "type": "agent",
                "session_id": "s",
                "sdk_version": value,
                "data": {**model, "db_type": value, "parser_model": model, "output_model": model, f"has_{value}": True},
            },
            {"type": "team", "session_id": "s", "sdk_version": "1.0.0", "data": {"parser_model": model}},
            {"type": "os", "data": {"interfaces": [value, "slack"], "db_types": [value]}},
            {"type": "client_report", "sdk_version": value, "data": {"dropped": {value: 1}}},
        ]
        for event in events:
            for _ in range(2):  # the second time from the caches
                _, dims = worker.project(json.dumps(event).encode(), now_ms, tally)
                assert value not in key_strings(dims)
        _, dims = worker.project(json.dumps(events[0]).encode(), now_ms, tally)
        stored = dict(zip([d.name for d in DIMENSIONS], dims, strict=True))
        assert {
            stored[name]
            for name in (
                "sdk_version",
                "model_provider",
                "model_name",
                "model_id",
                "db_type",
                "parser_provider",
                "parser_model_id",
            )
        } == {INVALID}
    caches = (
        worker._projections,
        worker._admitted,
        worker._patterns,
        worker._flags,
        tally.tracked,
        tally.candidates,
        dict(tally.sessions),
    )
    assert max(map(len, key_strings(caches))) <= MAX_RAW_LENGTH
