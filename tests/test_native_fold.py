"""The native fold (`pipeline/native/fold.c`) against the Python fold: for any events, in any batches, a
rollup folded with it holds exactly what one folded by `EventProjector.project` alone holds (every
session hash in order, installations, quality counts, candidates, the guard's state, dead letters, late
events), and it takes most of a realistic mix itself."""

from __future__ import annotations

import copy
import json
import time
from array import array
from typing import Any, NamedTuple

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.run import hostile_values
from devstack.loadgen import EventGenerator
from pipeline import _fold
from pipeline.admission import Admission, Keys
from pipeline.projector import NO_SESSION, EventProjector, Tally
from pipeline.rollup import PartitionRollup

NOW_MS = int(time.time() * 1000) // 1000 * 1000
KEYS = Keys(b"native-fold-parity")


class Record(NamedTuple):
    offset: int
    timestamp: int
    value: Any


def projector(native: bool, **kwargs: Any) -> EventProjector:
    options: dict[str, Any] = {"k": 3, "max_new_values": 4, "keys": KEYS, "native": native, **kwargs}
    return EventProjector(60, 300, 60, 4_000, Admission(), **options)


def state(rollup: PartitionRollup) -> dict:
    """Everything a flush writes from a rollup, and the guard's state."""
    return {
        "sessions": {key: list(hashes) for key, hashes in rollup.sessions.items()},
        "installations": dict(rollup.installations),
        "quality": rollup.quality,
        "candidates": rollup.candidates,
        "tracked": rollup.tracked,
        "suppressed": rollup.suppressed,
        "dead_letters": list(rollup.dead_letters),
        "counts": (rollup.events, rollup.late, rollup.dead_lettered, rollup.end_offset),
    }


def fold_both(values: list, batches: list[int], timestamps: list[int] | None = None) -> tuple[dict, dict, Any]:
    """Fold the same records with and without the native fold, in the same batches (sizes cycled)."""
    records = [Record(i, NOW_MS if timestamps is None else timestamps[i], v) for i, v in enumerate(values)]
    results = []
    for native in (False, True):
        fold = projector(native)
        rollup = PartitionRollup("parity", 0, 0)
        start, turn = 0, 0
        while start < len(records):
            size = batches[turn % len(batches)]
            rollup.add(records[start : start + size], fold)
            start, turn = start + size, turn + 1
        results.append((state(rollup), fold))
    return results[0][0], results[1][0], results[1][1]


_BASES = [json.loads(v) for v in EventGenerator(seed=7).events(3_000) if v.startswith(b'{"session_id"')]

_HUGE = "(1e400)"  # written as the number 1e400, which no encoder of floats makes

# Changes an SDK, a bug or an attacker could make to an event; each must fold as the Python fold has it.
_FIELD_VALUES = st.sampled_from(
    [
        None, 0, -0.0, 1, 24, -5, 10**9, 3.0, "3", "", "gpt-4o", "acme-secret-model-x", "x" * 300,
        [], ["a2a"], ["agent", 1],
        {"model_provider": "openai", "model_id": "o3"}, {"model_provider": 5}, {"model_provider": "openai", "x": [1]},
        True, False, _HUGE, 123456789012345678901234567890, "has_tools", "café", "a\\u0041", 'q"uote',
    ]
)  # fmt: skip
_TIMESTAMPS = st.sampled_from(
    [
        None, NOW_MS // 1000, NOW_MS, NOW_MS / 1000 + 0.123, NOW_MS // 1000 - 200, NOW_MS // 1000 - 4_000,
        NOW_MS // 1000 + 30, NOW_MS // 1000 + 500, 5, 4_102_444_800, "2026-12-07T10:00:00+00:00", "yesterday",
        _HUGE, -1, 12345678901234567890123,
    ]
)  # fmt: skip
_KEYS = st.sampled_from(
    ["session_id", "os_id", "installation", "sdk_version", "type", "timestamp", "run_id", "has_tools", "data"]
)
_DATA_KEYS = st.sampled_from(
    [
        "model_provider", "model_name", "model_id", "db_type", "parser_model", "output_model", "member_count",
        "has_tools", "has_memory", "has_secret_project", "coordination", "member_team_count", "nesting_depth",
        "step_count", "step_kinds", "agent_count", "interfaces", "db_types", "agent_id", "extra",
    ]
)  # fmt: skip


@st.composite
def shapes(draw: st.DrawFn) -> dict:
    """An event's signature: its kind, sdk_version and `data`, changed or not, and its unknown fields."""
    event = json.loads(json.dumps(draw(st.sampled_from(_BASES))))
    for _ in range(draw(st.integers(0, 3))):
        change = draw(st.integers(0, 4))
        if change == 0:
            event[draw(_KEYS)] = copy.deepcopy(draw(_FIELD_VALUES))
        elif change == 1 and isinstance(event.get("data"), dict):
            event["data"][draw(_DATA_KEYS)] = copy.deepcopy(draw(_FIELD_VALUES))
        elif change == 2:
            event.pop(draw(_KEYS), None)
        elif change == 3:
            event["type"] = draw(st.sampled_from(["agent", "team", "workflow", "os", "client_report", "assistant"]))
        else:
            event["unknown"] = draw(st.sampled_from([{"a": [1, {"b": None}]}, [[[]]], "x", -1.5e-3, {"has_x": 1}]))
    return event


@st.composite
def events(draw: st.DrawFn, shapes: list[dict]) -> bytes:
    """An event of one of `shapes`, with what differs from one event of a signature to the next."""
    event = dict(draw(st.sampled_from(shapes)))
    if draw(st.integers(0, 3)):
        event["session_id"] = draw(st.sampled_from(["s-1", "s-2", "s-3", "a-session-of-forty-characters-01234567"]))
    if draw(st.booleans()):
        event["installation"] = draw(st.sampled_from(["i-1", "i-2", "i-3", "i" * 64, "i" * 65, None, 7]))
    if draw(st.booleans()):
        event["timestamp"] = draw(_TIMESTAMPS)
    if draw(st.integers(0, 5)) == 0:
        event["os_id"] = draw(st.sampled_from(["launch-1", None, 3]))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    text = json.dumps(event, separators=separators).replace(f'"{_HUGE}"', "1e400")
    if draw(st.integers(0, 15)) == 0:  # bytes no encoder makes
        cut = draw(st.integers(0, len(text)))
        noise = draw(st.sampled_from(['"type":"agent",', " ", "\t", "}", ",", '"', "\x01", "é"]))
        text = text[:cut] + noise + text[cut:]
    return text.encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.lists(shapes(), min_size=1, max_size=6), st.lists(st.integers(1, 25), min_size=1, max_size=4))
def test_the_native_fold_counts_every_event_as_the_python_fold_does(
    data: st.DataObject, signatures: list[dict], batches: list[int]
) -> None:
    """A few signatures, many events of each: the native fold learns them and counts the rest."""
    values = data.draw(st.lists(events(signatures), min_size=1, max_size=80))
    python, native, _ = fold_both(values, batches)
    assert native == python


def test_the_native_fold_takes_most_of_the_load_generators_mix_and_counts_it_exactly() -> None:
    values = list(EventGenerator(seed=11).events(6_000)) + hostile_values(EventGenerator(seed=12), 2_000, every=20)
    spread = [NOW_MS + i * 37 for i in range(len(values))]  # several windows
    python, native, fold = fold_both(values * 2, [500, 137], spread * 2)
    assert native == python
    taken = fold._native.stats()["counted"]
    assert taken > 0.85 * len(values)  # the second pass: nearly every countable event


def test_the_native_fold_reads_the_session_hash_of_each_day() -> None:
    """Windows of three days: each day's sessions and installations are hashed with that day's key, as
    `Keys.session` and `Keys.installation` do."""
    event = next(v for v in EventGenerator(seed=3).events(200) if v.startswith(b'{"session_id"'))
    day_ms = 86_400_000
    python, native, fold = fold_both([event] * 9, [4], [NOW_MS + (i // 3) * day_ms for i in range(9)])
    assert native == python
    assert fold._native.stats()["counted"] >= 6
    assert len({hashes[0] for hashes in native["sessions"].values()}) == 3
    assert len({frozenset(hashes) for hashes in native["installations"].values()}) == 3  # cached per day


def test_the_native_folds_hashes_of_the_python_folds_events_are_the_keys_own() -> None:
    """The Python fold's events are hashed by the native fold (`Fold.session`, `Fold.installation`): the
    same ints as `Keys.session` and `Keys.installation`, for any text (non-ASCII, a lone surrogate, none,
    a block of BLAKE2b or more, longer than the installations' cache holds) on any day."""
    fold = projector(True)._native
    texts = ["s-1", "", "é-session", "\ud800-lone", "日本語", "x" * 64, "y" * 65, "z" * 128, "w" * 129, "v" * 300]
    for window_start in (0, -60, 1_700_000_040, 1_700_086_440):
        for text in texts:
            assert fold.session(window_start, text) == KEYS.session(window_start, text)
            for _ in range(2):  # the second from the cache
                assert fold.installation(window_start, text) == KEYS.installation(window_start, text)
    assert fold.session(0, "s-1") != fold.installation(0, "s-1")


def test_the_native_fold_vouches_only_for_events_it_checked_in_full() -> None:
    """`Fold.checked` (the Python fold then skips its byte checks) is true only where the native fold stopped
    at a plain event whose signature it has not learned: never at a flag it does not know, an escape, a
    byte outside ASCII or an oversized event, which the Python fold must check itself."""
    base = next(b for b in _BASES if b["type"] == "agent")
    plain = json.dumps(dict(base, session_id="s-1")).encode()
    others = [
        json.dumps(dict(base, data=dict(base["data"], has_new_flag=True))).encode(),
        plain.replace(b'"session_id"', b'"session\\u005fid"'),
        plain.replace(b'"s-1"', '"s-é"'.encode()),
        plain + b" " * 4_000,
    ]
    fold = projector(True)._native
    tally = Tally()
    for value, checked in [(plain, True), *((other, False) for other in others)]:
        assert fold.fold([Record(0, NOW_MS, value)], 0, tally.sessions, tally.installations, tally.quality) == 0
        assert fold.checked() is checked


def test_the_native_fold_counts_the_notes_of_a_learned_projection_per_event() -> None:
    """A projection that replaced a value (a member count out of range) is learned with its reason: every
    event of it is noted in its own window, as the Python fold notes it."""
    team = next(dict(b, data=dict(b["data"], member_count=-5)) for b in _BASES if b["type"] == "team")
    values = [json.dumps(dict(team, session_id=f"s-{i}")).encode() for i in range(8)]
    python, native, fold = fold_both(values, [3], [NOW_MS + i * 20_000 for i in range(8)])
    assert native == python
    assert fold._native.stats()["counted"] >= 6
    assert sum(python["quality"].values()) == 8


def test_the_native_folds_table_starts_over_at_its_bound_and_counts_on() -> None:
    """50,000 signatures at most (as the Python projection cache): the next one empties the table, and the
    events after it are learned again and counted exactly. Each signature comes three times: the Python fold
    caches its projection, then the native fold learns it, then counts it."""
    team = next(b for b in _BASES if b["type"] == "team")
    shapes = [json.dumps(dict(team, data=dict(team["data"], member_count=i))).encode() for i in range(50_100)]
    python, native, fold = fold_both([value for value in shapes for _ in range(3)], [500])
    assert native == python
    stats = fold._native.stats()
    assert stats["learned"] == 50_100
    assert stats["entries"] == 100
    assert stats["counted"] == 50_100


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.just(0), st.integers(1, 40), st.integers(0, 2**64 - 1)), max_size=300))
def test_distinct_json_is_the_json_of_the_distinct_sessions_in_order_of_first_sight(hashes: list[int]) -> None:
    """What the sink wrote before it was made in C: `dict.fromkeys` of a sketch's hashes without `NO_SESSION`,
    encoded by msgspec, to the byte (small values repeat, so duplicates are drawn often)."""
    distinct = [value for value in dict.fromkeys(hashes) if value != NO_SESSION]
    assert _fold.distinct_json(array("Q", hashes)) == msgspec.json.encode(distinct)


def test_distinct_json_of_a_long_array_made_without_the_gil_is_the_same() -> None:
    """From 65,536 hashes the GIL is released: the same bytes, duplicates and `NO_SESSION` among them."""
    hashes = [(i * 0x9E3779B97F4A7C15) % 2**64 for i in range(100_000)] * 2 + [NO_SESSION] * 5
    distinct = [value for value in dict.fromkeys(hashes) if value != NO_SESSION]
    assert _fold.distinct_json(array("Q", hashes)) == msgspec.json.encode(distinct)


def test_distinct_json_refuses_anything_but_unsigned_64_bit_values() -> None:
    for wrong in (array("q", [1]), array("L" if array("L").itemsize != 8 else "I", [1]), b"12345678", [1, 2]):
        with pytest.raises(TypeError):
            _fold.distinct_json(wrong)
