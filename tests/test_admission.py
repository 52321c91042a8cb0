"""k-anonymous values without a broker or ClickHouse: keyed hashes, admission epochs, how the projector stores
a rare value, the cardinality guard, and the caches a flood cannot fill."""

from __future__ import annotations

import json
import time
from array import array
from collections import namedtuple

import msgspec
from kern_telemetry_client.values import NONE

import pipeline.admission
from pipeline.admission import RARE, Admission, Admissions, Admitted, Keys
from pipeline.projector import NO_SESSION, EventProjector, Tally
from pipeline.rejections import Reason, Rejection
from pipeline.rollup import PartitionRollup
from pipeline.sink import _session_rows

NOW_MS = int(time.time() * 1000)
WINDOW_START = NOW_MS // 1000 - NOW_MS // 1000 % 60
DAY_S = 86_400


def event(model_id: str, session: str = "s-1", installation: str | None = "i-1", **data) -> bytes:
    envelope = {"type": "agent", "session_id": session, "sdk_version": "2.4.1"}
    if installation is not None:
        envelope["installation"] = installation
    return json.dumps({**envelope, "data": {"model_provider": "openai", "model_id": model_id, **data}}).encode()


KEYS = Keys(b"secret")


def projector(admission: Admission | None = None, max_new_values: int = 20, k: int = 3) -> EventProjector:
    return EventProjector(60, 3600, 300, 65536, admission=admission, k=k, max_new_values=max_new_values, keys=KEYS)


def hashed(window_start: int, *sessions: str | None) -> array:
    """The session hashes a tally keeps for `sessions` (None: an event without one)."""
    return array("Q", (NO_SESSION if s is None else KEYS.session(window_start, s) for s in sessions))


def installed(window_start: int, *installations: str) -> set[int]:
    """The installation hashes a tally keeps for `installations`."""
    return {KEYS.installation(window_start, i) for i in installations}


# --- keyed hashes --------------------------------------------------------------------------------------


def test_session_and_installation_hashes_are_the_same_for_every_worker_and_unlinkable_across_days():
    first, second = Keys(b"master"), Keys(b"master")
    today = WINDOW_START
    assert first.session(today, "s-1") == second.session(today + 59, "s-1") != first.session(today, "s-2")
    assert first.session(today, "s-1") != first.session(today + DAY_S, "s-1")  # another day, another key
    assert first.session(today, "s-1") != Keys(b"other").session(today, "s-1")  # needs the secret
    assert (
        first.installation(today, "i-1") == second.installation(today + 59, "i-1") != first.installation(today, "i-2")
    )
    assert first.installation(today, "i-1") != first.installation(today + DAY_S, "i-1")
    assert first.installation(today, "s-1") != first.session(today, "s-1")  # keys of their own
    assert (
        first.value("model_id", "acme-bot")
        == second.value("model_id", "acme-bot")
        != first.value("model_name", "acme-bot")
    )
    assert all(0 <= first.session(today, s) < 2**64 for s in ("s-1", "ünïcode", "\udcff"))


def test_an_epoch_admits_what_it_and_the_epochs_before_it_admitted():
    admissions = Admissions(
        [Admitted(2, "model_id", "acme-bot"), Admitted(1, "db_type", "AcmeDb"), Admitted(3, "model_id", "beta-bot")]
    )
    assert admissions.latest == 3
    at_2 = admissions.at(2)
    assert at_2.epoch == 2 and at_2.admits("model_id", "acme-bot") and at_2.admits("db_type", "AcmeDb")
    assert not at_2.admits("model_id", "beta-bot") and admissions.at(3).admits("model_id", "beta-bot")
    assert not admissions.at(1).admits("model_id", "acme-bot")
    assert Admission().admits("model_id", "gpt-4o-2024-08-06")  # the registry's families, from epoch 0


# --- projection -----------------------------------------------------------------------------------------


def test_a_rare_value_is_stored_as_rare_and_becomes_a_candidate_with_its_installation():
    tally = Tally()
    window, dims = projector().project(event("acme-support-bot", "s-7", "i-7"), NOW_MS, tally)
    assert dims[4] == RARE and dims[2] == "openai"  # model_id is rare, the provider is known
    assert tally.candidates == {(window, "model_id", "acme-support-bot"): installed(window, "i-7")}
    assert tally.quality == {(window, "agent", Reason.RARE_VALUE): 1}
    assert tally.sessions == {(window, dims): hashed(window, "s-7")} and tally.installations == {
        (window, dims): installed(window, "i-7")
    }


def test_an_event_without_an_installation_is_counted_and_admits_nothing():
    tally = Tally()
    window, dims = projector().project(event("acme-support-bot", "s-7", installation=None), NOW_MS, tally)
    assert dims[4] == RARE and tally.sessions == {(window, dims): hashed(window, "s-7")}
    assert tally.candidates == {} and tally.installations == {}


def test_an_installation_longer_than_any_pseudonym_is_kept_out_and_noted_and_its_event_counted():
    tally = Tally()
    window, dims = projector().project(event("acme-support-bot", "s-7", "i" * 65), NOW_MS, tally)
    assert tally.sessions == {(window, dims): hashed(window, "s-7")}
    assert tally.candidates == {} and tally.installations == {}
    assert tally.quality == {(window, "agent", Reason.RARE_VALUE): 1, (window, "agent", Reason.INVALID_VALUE): 1}
    projector().project(event("acme-support-bot", "s-8", "i" * 64), NOW_MS, tally)
    assert tally.installations == {(window, dims): installed(window, "i" * 64)}


def test_once_admitted_the_value_is_stored_as_it_is():
    admitted = projector(Admissions([Admitted(1, "model_id", "acme-support-bot")]).at(1))
    tally = Tally()
    _, dims = admitted.project(event("acme-support-bot"), NOW_MS, tally)
    assert dims[4] == "acme-support-bot" and tally.candidates == {} and tally.quality == {}


def test_a_candidate_keeps_at_most_k_distinct_installations_per_flush():
    tally = Tally()
    rare = projector(k=3)
    for session in range(50):  # one installation's many sessions count once
        rare.project(event("acme-support-bot", f"s-{session}", "i-0"), NOW_MS, tally)
    for installation in range(5):
        rare.project(event("acme-support-bot", "s-x", f"i-{installation}"), NOW_MS, tally)
    assert list(tally.candidates.values()) == [installed(WINDOW_START, "i-0", "i-1", "i-2")]


def test_a_new_flag_from_few_sessions_is_rare_and_a_private_flag_name_is_never_named():
    tally = Tally()
    _, dims = projector().project(event("gpt-5.2", has_tools=True, has_acme_secret_project=True), NOW_MS, tally)
    assert dims[-1] == (RARE, "has_tools")
    try:
        projector().project(event("gpt-5.2", has_acme_secret_project="yes"), NOW_MS, Tally())
    except Rejection as rejection:
        assert rejection.path == "$.data.(unknown flag)"
    else:
        raise AssertionError("a non-bool flag is a wrong type")


def test_the_guard_tracks_a_bounded_number_of_new_values_and_suppresses_the_rest():
    tally = Tally()
    flood = projector(max_new_values=5)
    keys = {flood.project(event(f"bot-{i}", f"s-{i}", f"i-{i}"), NOW_MS, tally) for i in range(1000)}
    assert len(keys) == 1  # every one of them is (rare): one row, whatever the input
    assert len(tally.candidates) == 5 and tally.suppressed == {"model_id": 995}
    assert tally.quality == {(WINDOW_START, "agent", Reason.RARE_VALUE): 1000}
    assert len(tally.tracked[(WINDOW_START, "model_id")]) == 5


def test_a_flood_of_rare_values_leaves_the_caches_as_they_were():
    shared = projector()
    for known in ("gpt-5.2", "gpt-4.1", "claude-sonnet-4-5"):
        shared.project(event(known), NOW_MS, Tally())
    projections, admitted = len(shared._projections), sum(map(len, shared._admitted.values()))
    for i in range(5000):
        shared.project(event(f"bot-{i}", f"s-{i}"), NOW_MS, Tally())
    # one more projection (the one with a rare model id, shared by all 5000), no rare value cached
    assert (len(shared._projections), sum(map(len, shared._admitted.values()))) == (projections + 1, admitted)
    _, dims = shared.project(event("gpt-5.2"), NOW_MS, Tally())
    assert dims[4] == "gpt-5.2"


def test_a_rollup_folds_with_its_own_epoch_only():
    rollup = PartitionRollup("t", 0, 0, epoch=1)
    try:
        rollup.add([type("R", (), {"offset": 0, "timestamp": NOW_MS, "value": event("gpt-5.2")})()], projector())
    except ValueError as error:
        assert "epoch 1" in str(error)
    else:
        raise AssertionError("a rollup of epoch 1 folded with epoch 0")


def test_launches_count_their_os_as_the_session_and_client_reports_have_none():
    tally = Tally()
    launch = json.dumps({"type": "os", "os_id": "os-9", "sdk_version": "2.4.1", "data": {}}).encode()
    key = projector().project(launch, NOW_MS, tally)
    report = json.dumps(
        {"type": "client_report", "sdk_version": "2.4.1", "data": {"dropped": {"queue_full": 3}}}
    ).encode()
    report_key = projector().project(report, NOW_MS, tally)
    assert tally.sessions == {key: hashed(key[0], "os-9"), report_key: hashed(key[0], None)}
    assert key[1][1] == "2.4.1" and key[1][2] == NONE


def test_a_full_guard_never_suppresses_a_value_admitted_as_sent():
    tally = Tally()
    guarded = projector(max_new_values=3)
    for i in range(10):  # the guard of this window's flags is full
        guarded.project(event("gpt-5.2", f"s-{i}", **{f"has_private_{i}": True}), NOW_MS, tally)
    _, dims = guarded.project(event("gpt-5.2", has_input_schema=True, has_private_x=True), NOW_MS, tally)
    assert dims[-1] == (RARE, "has_input_schema")  # a known flag, never seen before in this projector


def test_session_rows_hash_each_distinct_session_and_installation_once():
    """Sessions in order of first sight, installations sorted: a replay writes the same rows."""
    record = namedtuple("record", "offset timestamp value")
    launch = json.dumps({"type": "os", "sdk_version": "2.4.1", "data": {}}).encode()  # no session
    values = [
        event("gpt-5.2", "s-2", "i-9"),
        event("gpt-5.2", "s-1", "i-3"),
        event("gpt-5.2", "s-2", "i-9"),
        event("gpt-5.2", "s-4", None),
        launch,
    ]
    rollup = PartitionRollup("t", 0, 0)
    rollup.add([record(i, NOW_MS, value) for i, value in enumerate(values)], projector())
    day = NOW_MS // 1000 // DAY_S
    ((row_day, kind, provider, model, features, hashes, installations),) = _session_rows([rollup], KEYS)
    assert (row_day, kind, provider, model, features) == (day, "agent", "openai", "gpt-5.2", ())
    assert msgspec.json.decode(bytes(hashes)) == list(hashed(day * DAY_S, "s-2", "s-1", "s-4"))
    assert installations == sorted(installed(day * DAY_S, "i-3", "i-9"))
    assert sum(rollup.runs.values()) == 5  # the launch counts, without a session


def test_a_flush_digests_nothing_sessions_and_installations_were_hashed_as_folded(monkeypatch):
    record = namedtuple("record", "offset timestamp value")
    models = ("gpt-5.2", "gpt-4o", "o3")
    rollups = []
    for partition in range(2):
        rollup = PartitionRollup("t", partition, 0)
        values = [event(model, f"s-{i}", f"i-{i % 4}") for i, model in enumerate(models * 4)]
        rollup.add([record(i, NOW_MS, value) for i, value in enumerate(values)], projector())
        rollups.append(rollup)
    digested: list[str] = []
    digest = pipeline.admission._digest
    monkeypatch.setattr(pipeline.admission, "_digest", lambda keyed, text: digested.append(text) or digest(keyed, text))
    rows = list(_session_rows(rollups, KEYS))
    day = NOW_MS // 1000 // DAY_S
    assert len(rows) == 6 and digested == []
    for row in rows:
        assert row[-1] == sorted(installed(day * DAY_S, "i-0", "i-1", "i-2", "i-3"))
