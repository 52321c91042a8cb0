"""Decode, validate and project one SDK telemetry event onto its dimensions (`pipeline/dimensions.py`).

`EventProjector.project` is the per-event hot path. For a countable event it returns the rollup key
`(window_start, dimensions)`; anything else raises a `Rejection` (reason code, JSON path, value-free
detail), already counted in the quality table. The key's first dimension is the kind, and a client report
(`client_report`: what an SDK client could not deliver) has its own dimensions: `(kind, sdk_version,
((reason, count), ...))`; the sink writes it to its own table (`pipeline/sink.py`). The dimensions of a
kind with a pattern (`dimensions.PATTERNS`: an AgentOS launch's configuration, a team's coordination, a
workflow's shape) end with one more: the pattern, for its own tables.

The typed decoder is derived from the dimensions and the contract (`kern_telemetry_client.contract`):
msgspec checks the types of exactly the `data` fields the dimensions read, in C, and skips everything
else (identifiers, prompts) without creating it.

`EventProjector.fold` counts a batch: the native fold (`pipeline/native/fold.c`) counts each plain event
whose projection it has learned, without a Python object per event, and hands every other event to
`project`, which teaches it the projections it may reuse.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Annotated, Any, NamedTuple

import msgspec
from kern_telemetry_client import contract
from kern_telemetry_client.payloads import MAX_NAMES
from kern_telemetry_client.values import INVALID, MAX_RAW_LENGTH, NONE, REDACTED, clean_flag_name, clean_value

from pipeline import _fold
from pipeline.admission import RARE, Admission, Keys
from pipeline.dimensions import DATA_FIELDS, DIMENSIONS, MODEL_KEYS, NAME_FIELDS, PATTERNS, Dimension, member_bucket
from pipeline.rejections import Reason, Rejection

KINDS = frozenset(contract.KINDS)
_CLIENT_REPORT = contract.CLIENT_REPORT
_UNKNOWN_KIND = f"expected one of {', '.join(contract.KINDS)}"

#: Flags the current SDKs send are typed fields; others (`has_*` keys the contract does not name yet) are
#: counted too, on the slower dict path: see `EventProjector._dict_projection`.
KNOWN_FLAGS = contract.FLAGS

_CACHE_LIMIT = 50_000
#: Twice an SDK's installation pseudonym (32 hex characters, `kern_telemetry_client.installation`). A longer
#: one is no pseudonym an SDK makes; kept until the flush, it would make a rollup's bytes grow with a
#: crafted value's length rather than with its events.
MAX_INSTALLATION_CHARS = 64
_FLAG, _REASON = "flag", "reason"  # the fields of flag names and of client reports' reasons
UNKNOWN_FLAG = "(unknown flag)"  # how a path names a flag that is neither the contract's nor admitted


def _model_ref_type(keys: tuple[str, ...]) -> type:
    return msgspec.defstruct("_ModelRef", [(key, str | None, None) for key in keys], frozen=True)  # hashable


_MODEL_REFS = {keys: _model_ref_type(keys) for keys in set(MODEL_KEYS.values())}
_FIELD_TYPES: dict[str, Callable[[str], object]] = {
    "string": lambda field: str | None,
    "int": lambda field: int | None,
    "model": lambda field: _MODEL_REFS[MODEL_KEYS[field]] | None,
}
# `data` with the fields the dimensions read, then every flag the contract names. A flag defaults to UNSET,
# so that a null flag still counts as present.
_Data = msgspec.defstruct(
    "_Data",
    [
        *((field, _FIELD_TYPES[contract.field(field).type](field), None) for field in DATA_FIELDS),
        *((flag, bool | None | msgspec.UnsetType, msgspec.UNSET) for flag in KNOWN_FLAGS),
    ],
)
_NO_DATA = (None,) * len(DATA_FIELDS)

_KIND, _VALUE, _BUCKET, _FLAGS = "kind", "value", "bucket", "flags"
_NOTES = {RARE: Reason.RARE_VALUE, INVALID: Reason.INVALID_VALUE, REDACTED: Reason.REDACTED_VALUE}
#: The strings of typed `data`, stored before projecting (see `_typed_projection`): the plain string fields
#: (index in DATA_FIELDS, name) and the model references (index, keys).
_PLAIN = tuple((i, field) for i, field in enumerate(DATA_FIELDS) if contract.field(field).type == "string")
_REFS = tuple((i, MODEL_KEYS[field]) for i, field in enumerate(DATA_FIELDS) if field in MODEL_KEYS)
#: Each dimension compiled for the typed fields: (source, field, index in DATA_FIELDS or None for the
#: envelope's sdk_version, model reference key or None, kinds, JSON path).
_PLAN: tuple[tuple[Any, ...], ...] = tuple(
    (
        {"kind": _KIND, "value": _VALUE, "bucket": _BUCKET, "flags": _FLAGS}[d.source],
        d.path[-1] if d.path else "",
        DATA_FIELDS.index(d.path[1]) if d.path[:1] == ("data",) and len(d.path) > 1 else None,
        d.path[2] if len(d.path) == 3 else None,
        d.kinds,
        "$." + ".".join(d.path),
    )
    for d in DIMENSIONS
)


_PATTERN_TYPES = {
    "bucket": int | None,
    "enum": str | None,
    "names": tuple[str, ...] | None,
    "enums": tuple[str, ...] | None,
}  # lists as tuples: a pattern is a cache key


class _PatternReader(NamedTuple):
    """How a kind's pattern (`dimensions.PATTERNS`) is read: its fields typed, or (when one is mistyped)
    each as it is, to be judged on its own; and per dimension (source, the field admitting its names, the
    enumeration of its values)."""

    decode: Callable[[bytes], Any]
    decode_lenient: Callable[[bytes], Any]
    plan: tuple[tuple[str, str, frozenset[str]], ...]
    missing: tuple  # the pattern's values when the event has no `data`

    @classmethod
    def of(cls, kind: str, dimensions: tuple[Dimension, ...]) -> _PatternReader:
        def struct(name: str, types: Callable[[Dimension], object]) -> type:
            data = msgspec.defstruct(f"{name}Data", [(d.path[1], types(d), None) for d in dimensions])
            return msgspec.defstruct(name, [("data", data | None, None)])

        typed = struct(f"_{kind.title()}Pattern", lambda d: _PATTERN_TYPES[d.source])
        lenient = struct(f"_{kind.title()}LenientPattern", lambda d: Any)
        return cls(
            msgspec.json.Decoder(typed).decode,
            msgspec.json.Decoder(lenient, float_hook=Decimal).decode,
            tuple(
                (d.source, NAME_FIELDS.get(d.name, ""), frozenset(contract.field(d.path[1]).values)) for d in dimensions
            ),
            (None,) * len(dimensions),
        )


_PATTERN_READERS = {kind: _PatternReader.of(kind, dimensions) for kind, dimensions in PATTERNS.items()}


def _native_fields() -> tuple[tuple[str, ...], ...]:
    """The typed `data` fields by JSON type, as the native fold checks them: strings, ints, the contract's
    flags, model references, lists of strings (each also null)."""
    by_type: dict[str, list[str]] = {"string": [], "int": [], "model": []}
    for field in DATA_FIELDS:
        by_type[contract.field(field).type].append(field)
    lists: list[str] = []
    for dimensions in PATTERNS.values():
        for d in dimensions:
            into = {"enum": by_type["string"], "bucket": by_type["int"]}.get(d.source, lists)
            if d.path[1] not in into:
                into.append(d.path[1])
    fields = (tuple(by_type["string"]), tuple(by_type["int"]), KNOWN_FLAGS, tuple(by_type["model"]), tuple(lists))
    names = [name for group in fields for name in group]
    if len(names) != len(set(names)) or DIMENSIONS[0].source != _KIND:
        raise RuntimeError("the native fold needs one type per data field and the kind as the first dimension")
    return fields


_NATIVE_FIELDS = _native_fields()
_NATIVE_OTHER_KINDS = tuple(k for k in contract.KINDS if k not in contract.RUN_KINDS and k != _CLIENT_REPORT)


def _envelope(name: str, data_type: Any) -> type:
    """Known top-level fields with their allowed types. Unknown fields (run_id, ...) are skipped by the
    decoder, so they never exist as Python objects."""
    return msgspec.defstruct(
        name,
        [
            ("type", str | None | msgspec.UnsetType, msgspec.UNSET),
            ("session_id", str | None | msgspec.UnsetType, msgspec.UNSET),
            ("os_id", str | None | msgspec.UnsetType, msgspec.UNSET),
            ("installation", str | None, None),
            ("sdk_version", str | None, None),
            ("timestamp", int | float | str | None, None),
            ("data", data_type | None, None),
        ],
    )


_TypedEnvelope = _envelope("_TypedEnvelope", _Data)
_Envelope = _envelope("_Envelope", dict[str, Any])  # for events with flags outside KNOWN_FLAGS


class _Dropped(msgspec.Struct):
    dropped: dict[str, Annotated[int, msgspec.Meta(ge=0)]] | None = None


class _ClientReport(msgspec.Struct):
    data: _Dropped | None = None


class _KindOnly(msgspec.Struct):
    type: Any = None


def _remember(cache: dict, key: object, value: Any) -> Any:
    """Cache `value` (returned) under `key`; a cache at `_CACHE_LIMIT` entries starts over (the projector's
    caches hold only admitted values, so whatever fills one is real and comes back at once). Bounded in
    bytes too: each value in a key is a marker or an admitted raw value of at most MAX_RAW_LENGTH
    characters (`_store` makes a longer one INVALID before any cache sees it), and a key holds at most 9
    of them (a projection) or 2 x MAX_NAMES (a configuration)."""
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


#: The session hash of a counted event without a session (a client report, a launch without one).
NO_SESSION = 0
SESSION_HASHES = partial(array, "Q")  # a new key's session hashes (unsigned 64-bit)


class Tally:
    """What projecting events leaves (a partition's rollup is one): the keyed hashes of the counted events'
    sessions per key (their count is the runs; the distinct ones go to the session sketches) and of their
    installations' daily pseudonyms, the quality counts, the candidate values with the (hashed)
    installations that sent them, and the cardinality guard's state, all for one flush. Hashed as folded:
    no session id or pseudonym is kept until the flush."""

    __slots__ = ("candidates", "installations", "quality", "sessions", "suppressed", "tracked")

    def __init__(self) -> None:
        self.quality: dict[tuple, int] = {}  # (window_start, kind, reason) -> events
        # (window_start, dims) -> the session hash of each counted event with those dims (`NO_SESSION`:
        # without one), so that counting an event is one dict lookup: its runs are the array's length. Hashed
        # as folded, 8 bytes an event: a catching-up flush holds hundreds of thousands, and raw ids kept until
        # the flush cost the worker ~70 MB of peak RSS (`make bench`, 1M events of one session each).
        self.sessions: dict[tuple, array] = defaultdict(SESSION_HASHES)
        # (window_start, dims) -> the keyed hashes of its events' distinct installations (older SDKs send none)
        self.installations: dict[tuple, set] = defaultdict(set)
        # (window_start, field, value) -> the hashes of the installations that sent it, at most k: k-anonymity
        # counts installations, so an event without one (an older SDK) admits nothing
        self.candidates: dict[tuple, set] = {}
        self.tracked: dict[tuple, dict] = {}  # (window_start, field) -> {raw value: stored value}: the guard
        self.suppressed: Counter = Counter()  # field -> rare values the guard did not track


class EventProjector:
    """Validates events and projects them onto rollup keys, with one admission epoch. One per worker and
    epoch; holds only caches (of admitted values: a flood of rare values cannot fill them)."""

    def __init__(
        self,
        window_seconds: int,
        allowed_lateness_seconds: int,
        future_tolerance_seconds: int,
        max_event_bytes: int,
        admission: Admission | None = None,
        k: int = 10,
        max_new_values: int = 20,
        *,
        keys: Keys,
        native: bool = True,
    ):
        self.window_seconds = window_seconds
        self.allowed_lateness = allowed_lateness_seconds
        self.future_tolerance = future_tolerance_seconds
        self.max_event_bytes = max_event_bytes
        self.admission = admission or Admission()
        self.k = k  # installations a candidate needs: more are not kept
        self.max_new_values = max_new_values  # rare values a flush tracks per window and field
        self._decode_typed: Callable[[bytes], Any] = msgspec.json.Decoder(_TypedEnvelope).decode
        # Untyped floats (unknown fields) as Decimal: 1e400 there must not reject what the typed decode,
        # which skips those fields, accepts.
        self._decode_dict: Callable[[bytes], Any] = msgspec.json.Decoder(_Envelope, float_hook=Decimal).decode
        # (kind, sdk_version, typed data fields) -> (flags present, dimensions, reasons of bad values): a
        # hit is one tuple hash, and there are about as many entries as distinct dimension sets. Only
        # projections without a rare value are kept.
        self._projections: dict[tuple, tuple[int, tuple, tuple[Reason, ...]]] = {}
        self._admitted: dict[str, dict[str, str]] = defaultdict(dict)  # field -> raw value -> admitted value
        self._flags: dict[tuple, tuple[int, tuple]] = {}  # typed flags -> (flags present, true flag names)
        self._patterns: dict[tuple, tuple] = {}  # (kind, typed pattern) -> (stored pattern, reasons, ())
        self._notes: dict = {}  # one event's quality notes, kept only if the event is counted (or late)
        # The native fold (None: every event through `project`, as the parity test compares) and what the
        # last projected event lets it reuse: (dims, reasons of replaced values), or None.
        self._native = (
            _fold.Fold(
                window_seconds,
                allowed_lateness_seconds,
                future_tolerance_seconds,
                max_event_bytes,
                MAX_INSTALLATION_CHARS,
                keys.day_key,
                contract.RUN_KINDS,
                _NATIVE_OTHER_KINDS,
                *_NATIVE_FIELDS,
            )
            if native
            else None
        )
        self._reusable: tuple | None = None
        # The events the Python fold counts are hashed as `keys` hashes them, by the native fold when there is
        # one (its day states and installations' cache: no hasher object per event)
        hashes = keys if self._native is None else self._native
        self._session_hash = hashes.session
        self._installation_hash = hashes.installation

    @classmethod
    def from_settings(cls, settings: Any, keys: Keys, admission: Admission | None = None) -> EventProjector:
        return cls(
            settings.window_seconds,
            settings.allowed_lateness_seconds,
            settings.future_tolerance_seconds,
            settings.max_event_bytes,
            admission,
            settings.k_anonymity,
            settings.max_new_values_per_flush,
            keys=keys,
        )

    @property
    def native_events(self) -> int:
        """The events the native fold has counted (0 without it)."""
        return 0 if self._native is None else self._native.stats()["counted"]

    @property
    def epoch(self) -> int:
        return self.admission.epoch

    def admits_flag(self, name: str) -> bool:
        return self.admission.admits(_FLAG, name)

    def fold(self, messages: Sequence, tally: Tally) -> list[tuple[Any, Rejection]]:
        """Count the events of `messages` (records with .value and .timestamp, in log order) into `tally`;
        return the records not counted, each with its rejection. The native fold counts events until one
        it cannot (`pipeline/native/fold.c`); `project` counts that one, and when its projection is one
        every event of the same signature shares, the native fold learns it."""
        native = self._native
        rejected: list[tuple[Any, Rejection]] = []
        i, n = 0, len(messages)
        while i < n:
            if native is not None:
                i = native.fold(messages, i, tally.sessions, tally.installations, tally.quality)
                if i == n:
                    break
            message = messages[i]
            self._reusable = None
            try:
                self.project(message.value, message.timestamp, tally, native is not None and native.checked())
            except Rejection as rejection:
                # kept past this frame: without the traceback and the error it replaced, whose frames (this
                # one among them) would make a cycle holding the batch until the cyclic GC found it
                rejection.__traceback__ = rejection.__context__ = None
                rejected.append((message, rejection))
            else:
                if native is not None and self._reusable is not None:
                    native.learn(*self._reusable)
            i += 1
        return rejected

    def project(self, raw: bytes | None, record_ms: int, tally: Tally, checked: bool = False) -> tuple:
        """Count an event under its key `(window_start, dims)` (in `tally.sessions`) and return the key; raise
        `Rejection` for an event that is not counted. Every event not
        counted, and notes about counted ones (redacted or rare values, replaced timestamps), are added to
        `tally.quality[(window_start, kind, reason)]`. The per-event hot path: keep it flat. `checked`: the
        native fold checked the event's bytes in full (`Fold.checked`), so the checks of its bytes are made."""
        if raw is None or (
            not checked and (len(raw) > self.max_event_bytes or (not raw.isascii() and not _is_utf8(raw)))
        ):
            raise self._rejected(_raw_rejection(raw, self.max_event_bytes), record_ms, tally.quality)
        try:
            key = self._project(self._decode_typed(raw), raw, record_ms, tally, checked)
        except Exception as exc:  # noqa: BLE001 - classified by `_rejected`: a validator bug must not stop a partition
            raise self._rejected(_rejection(exc, raw), record_ms, tally.quality) from None
        if self._notes:
            _merge(tally.quality, self._notes)
        return key

    def _rejected(self, rejection: Rejection, record_ms: int, quality: dict) -> Rejection:
        """Count a rejection in the record's window. An event's notes count only if it is late (quality
        only); an event that is dead-lettered has no notes."""
        if rejection.dead_letter:
            record_s = record_ms // 1000
            _count(quality, (record_s - record_s % self.window_seconds, rejection.kind, rejection.reason))
            self._notes.clear()
        elif self._notes:
            _merge(quality, self._notes)
        return rejection

    def _project(self, event: Any, raw: bytes, record_ms: int, tally: Tally, checked: bool) -> tuple:
        """Envelope checks, event time, then the dimensions: cached per distinct typed `data`, or from the
        dict decode when the bytes hold a flag the typed decode did not see."""
        kind = event.type
        if kind is msgspec.UNSET or kind is None:
            if event.os_id is msgspec.UNSET:  # AgentOS launches of older SDKs carry os_id and no type
                raise Rejection(Reason.MISSING_FIELD, "$.type")
            kind = contract.OS
        elif kind not in KINDS:
            raise Rejection(Reason.UNKNOWN_KIND, "$.type", _UNKNOWN_KIND)
        session = event.session_id
        if type(session) is not str:
            if kind in contract.RUN_KINDS:
                raise Rejection(Reason.MISSING_FIELD, "$.session_id", kind=kind)
            session = event.os_id if type(event.os_id) is str else None  # launches without a session

        notes = self._notes
        if event.timestamp is None:
            record_s = record_ms // 1000
            window_start = record_s - record_s % self.window_seconds
        else:
            window_start = self._window_start(event.timestamp, record_ms, kind, notes)

        if kind == _CLIENT_REPORT:
            report = (window_start, self._client_report(raw, event.sdk_version, window_start, tally))
            tally.sessions[report].append(NO_SESSION)
            return report
        data = event.data
        typed = (kind, event.sdk_version, _NO_DATA if data is None else msgspec.structs.astuple(data))
        cached = self._projections.get(typed)
        present, dims, bad, rare = cached or self._typed_projection(typed, window_start, tally)
        # Every `"has_` in the bytes must be a known flag the typed decode saw; otherwise (a new flag, a
        # duplicate key, an escaped key) decode again into a dict, which keeps every key. (An event the native
        # fold checked has no backslash, and each of its `"has_` is a known flag.)
        if not checked and (raw.count(b'"has_') != present or (b"\\" in raw and b"\\u" in raw)):  # memchr first
            dims, bad, rare = self._dict_projection(raw, kind, event.sdk_version, window_start, tally)
            cached = None
        if kind in _PATTERN_READERS:  # the run dimensions, then the pattern
            pattern, pattern_bad, pattern_rare, pattern_cached = self._pattern(kind, raw, window_start, tally)
            dims, bad, rare = (*dims, pattern), bad + pattern_bad, rare + pattern_rare
            cached = cached if pattern_cached else None
        if cached is not None:  # from the caches: the same for every event of this signature and epoch
            self._reusable = dims, bad
        for reason in bad:
            _count(notes, (window_start, kind, reason))
        key = (window_start, dims)
        tally.sessions[key].append(NO_SESSION if session is None else self._session_hash(window_start, session))
        installation = event.installation
        if installation is not None:
            if len(installation) > MAX_INSTALLATION_CHARS:  # counted, as an event without one; noted
                _count(notes, (window_start, kind, Reason.INVALID_VALUE))
                return key
            hashed = self._installation_hash(window_start, installation)
            tally.installations[key].add(hashed)
            for candidate in rare:
                self._sighting(tally, (window_start, *candidate), hashed)
        return key

    def _typed_projection(self, key: tuple, window_start: int, tally: Tally) -> tuple:
        """Cache miss. A string (of a plain field or a model reference) that is not admitted as sent (a
        rare value, a marker, a value admitted once normalised) is stored first (`_store`: the guard, the
        candidate); the projection then comes from the key with the stored values, which is cached: a flood
        of unique values costs a lookup per string, not a projection per event, and a cached key holds no
        string that was not admitted."""
        kind, sdk_version, fields = key
        admitted = self._admitted
        rare: list[tuple[str, str]] = []
        if sdk_version is not None and sdk_version not in admitted["sdk_version"]:
            sdk_version = self._store(sdk_version, "sdk_version", [], rare, window_start, tally)
        stored = None
        for index, field in _PLAIN:
            value = fields[index]
            if value is not None and value not in admitted[field]:
                stored = stored or list(fields)
                stored[index] = self._store(value, field, [], rare, window_start, tally)
        for index, keys in _REFS:
            ref = fields[index]
            if ref is not None:
                values = msgspec.structs.astuple(ref)
                if any(
                    value is not None and value not in admitted[key] for key, value in zip(keys, values, strict=True)
                ):
                    stored = stored or list(fields)
                    stored[index] = type(ref)(
                        *(
                            value
                            if value is None or value in admitted[key]
                            else self._store(value, key, [], rare, window_start, tally)
                            for key, value in zip(keys, values, strict=True)
                        )
                    )
        if stored is None and sdk_version is key[1]:
            return self._projection(key, window_start, tally)
        key = (kind, sdk_version, fields if stored is None else tuple(stored))
        present, dims, bad, _ = self._projections.get(key) or self._projection(key, window_start, tally)
        return present, dims, bad, tuple(rare)

    def _projection(self, key: tuple, window_start: int, tally: Tally) -> tuple:
        """The projection of typed `data` fields (`DATA_FIELDS`, then `KNOWN_FLAGS`), cached when it has no
        rare value."""
        kind, sdk_version, fields = key
        flags = fields[len(DATA_FIELDS) :]
        present, features = self._flags.get(flags) or self._flag_summary(flags)
        projection = (present, *self._dimensions(kind, sdk_version, fields, features, [], window_start, tally))
        if not projection[3]:  # without a rare value: the same for every event of this epoch
            _remember(self._projections, key, projection)
        return projection

    def _flag_summary(self, flags: tuple) -> tuple[int, tuple]:
        """How many known flags are present (null counts), and the sorted names of those that are true. No
        `data` at all: no flags (`_NO_DATA` is shorter than `KNOWN_FLAGS`)."""
        summary = (
            sum(value is not msgspec.UNSET for value in flags),
            tuple(sorted(flag for flag, value in zip(KNOWN_FLAGS, flags, strict=False) if value is True)),
        )
        self._flags[flags] = summary  # at most 3 ** len(KNOWN_FLAGS) combinations, a few hundred in practice
        return summary

    def _dict_projection(
        self, raw: bytes, kind: str, sdk_version: str | None, window_start: int, tally: Tally
    ) -> tuple:
        """The dimensions of an event whose `data` has flags outside `KNOWN_FLAGS` (not cached)."""
        try:
            data = self._decode_dict(raw).data or {}
        except Exception as exc:  # noqa: BLE001 - classified by `_rejection`
            raise _rejection(exc, raw) from None
        features: set[str] = set()
        bad: list[Reason] = []
        rare: list[tuple[str, str]] = []
        for key, value in data.items():
            if key[:4] != contract.FLAG_PREFIX or value is False or value is None:
                continue
            if value is not True:
                raise Rejection(Reason.WRONG_TYPE, self._flag_path(key), "expected bool or null", kind)
            name = self._store(key, _FLAG, bad, rare, window_start, tally)
            if name is not INVALID:
                features.add(name)
        fields = tuple(_typed(data.get(field), field, kind) for field in DATA_FIELDS)
        return self._dimensions(kind, sdk_version, fields, tuple(sorted(features)), bad, window_start, tally, rare)

    def _flag_path(self, key: str) -> str:
        """The JSON path of a flag: its name when the contract or the admission knows it, never a private one."""
        return f"$.data.{key if self.admits_flag(key) else UNKNOWN_FLAG}"

    def _dimensions(
        self,
        kind: str,
        sdk_version: object,
        fields: tuple,
        features: tuple,
        bad: list[Reason],
        window_start: int,
        tally: Tally,
        rare: list | None = None,
    ) -> tuple:
        """The dimensions in `DIMENSIONS` order (from `fields`, the data fields in `DATA_FIELDS` order, model
        references as structs), the reasons for the values it had to replace, and the rare values among
        them ((field, value) pairs)."""
        rare = [] if rare is None else rare
        dims: list[object] = []
        append = dims.append
        admitted = self._admitted
        for source, field, index, key, kinds, path in _PLAN:
            if kinds is not None and kind not in kinds:
                append(NONE)
            elif source is _VALUE:
                value = sdk_version if index is None else fields[index]
                if key is not None and value is not None:
                    value = getattr(value, key)
                if value is None:
                    append(NONE)
                elif type(value) is not str:
                    raise Rejection(Reason.WRONG_TYPE, path, "expected string or null", kind)
                else:
                    append(admitted[field].get(value) or self._store(value, field, bad, rare, window_start, tally))
            elif source is _KIND:
                append(kind)
            elif source is _FLAGS:
                append(features)
            else:
                append(_bucket(fields[index], path, kind, bad))
        return tuple(dims), tuple(bad), tuple(rare)

    def _pattern(self, kind: str, raw: bytes, window_start: int, tally: Tally) -> tuple[tuple, tuple, tuple, bool]:
        """The pattern of an event of `kind` in `PATTERNS[kind]` order, the reasons for the values it
        replaced, its rare values, and whether it came from the cache. Never rejects the event
        (`pipeline/dimensions.py`). A pattern whose every value is stored as sent, with at most MAX_NAMES
        elements per list (what the SDK client sends), is cached."""
        reader = _PATTERN_READERS[kind]
        try:
            data = reader.decode(raw).data
        except msgspec.ValidationError:  # a mistyped field
            data = reader.decode_lenient(raw).data  # as deep as the typed decode allowed: cannot fail
            values = reader.missing if data is None else msgspec.structs.astuple(data)
            return *self._judged(reader, values, window_start, tally), False
        values = reader.missing if data is None else msgspec.structs.astuple(data)
        key = (kind, values)
        stored = self._patterns.get(key)
        if stored is not None:
            return *stored, True
        stored = self._judged(reader, values, window_start, tally)
        if not stored[1] and all(type(value) is not tuple or len(value) <= MAX_NAMES for value in values):
            _remember(self._patterns, key, stored)
        return *stored, False

    def _judged(
        self, reader: _PatternReader, values: tuple, window_start: int, tally: Tally
    ) -> tuple[tuple, tuple, tuple]:
        """Counts as buckets, an enumeration's value as it is, names and enumerations' values as sorted sets
        of stored values; null or missing is `none`, a value of the wrong type or outside its enumeration
        `invalid` (with a note)."""
        pattern: list[object] = []
        bad: list[Reason] = []
        rare: list[tuple[str, str]] = []
        for (source, field, allowed), value in zip(reader.plan, values, strict=True):
            many = source == "names" or source == "enums"
            if value is None:
                pattern.append((NONE,) if many else NONE)
            elif source == "bucket":
                bucket = member_bucket(value) if type(value) is int else INVALID
                if bucket is INVALID:
                    bad.append(Reason.INVALID_VALUE)
                pattern.append(bucket)
            elif source == "enum":
                if type(value) is not str or value not in allowed:
                    bad.append(Reason.INVALID_VALUE)
                    value = INVALID
                pattern.append(value)
            elif type(value) is tuple or type(value) is list:
                names = set()
                for name in value:
                    if type(name) is not str or (source == "enums" and name not in allowed):
                        bad.append(Reason.INVALID_VALUE)
                        names.add(INVALID)
                    else:
                        names.add(
                            name if source == "enums" else self._store(name, field, bad, rare, window_start, tally)
                        )
                pattern.append(tuple(sorted(names)))
            else:
                bad.append(Reason.INVALID_VALUE)
                pattern.append((INVALID,))
        return tuple(pattern), tuple(bad), tuple(rare)

    def _client_report(self, raw: bytes, sdk_version: str | None, window_start: int, tally: Tally) -> tuple:
        """A client's account of the events it dropped: `data.dropped` maps a reason to a count (reasons
        the contract does not name yet are stored like any free text)."""
        data = msgspec.json.decode(raw, type=_ClientReport).data
        dropped = (data.dropped if data is not None else None) or {}
        bad: list[Reason] = []
        version = NONE if sdk_version is None else self._store(sdk_version, "sdk_version", bad, [], window_start, tally)
        counts: dict[str, int] = {}
        for reason, count in dropped.items():
            if count:
                stored = self._store(reason, _REASON, bad, [], window_start, tally)
                counts[stored] = counts.get(stored, 0) + count
        for reason in bad:
            _count(self._notes, (window_start, contract.CLIENT_REPORT, reason))
        return contract.CLIENT_REPORT, version, tuple(sorted(counts.items()))

    def _store(self, value: str, field: str, bad: list[Reason], rare: list, window_start: int, tally: Tally) -> str:
        """What is stored for a string of `field`: the admitted value (cached), a marker (INVALID, REDACTED)
        or RARE. A rare value becomes a candidate (`rare`), within the cardinality guard: past
        `max_new_values` values per window and field in this flush, a value is no longer tracked, and a
        rare one is suppressed (stored as RARE, not a candidate). What is stored never depends on the
        guard, so never on where flushes cut the log: a value is cleaned first (the rules are linear and
        capped), so a marker stays a marker and a value admitted once normalised (an `ft:` model id of an
        organisation) is stored as admitted, however full the guard. A value over MAX_RAW_LENGTH is INVALID
        at once (as `clean_value` has it), before any cache or pattern sees it."""
        if len(value) > MAX_RAW_LENGTH:
            bad.append(Reason.INVALID_VALUE)
            return INVALID
        stored = self._admitted[field].get(value)
        if stored is not None:
            return stored
        if value is RARE or value is INVALID or value is REDACTED:  # stored already (`_typed_projection`)
            bad.append(_NOTES[value])
            return value
        if self.admission.admits(field, value) and _is_clean(value, field):
            return _remember(self._admitted[field], value, value)
        tracked = tally.tracked.setdefault((window_start, field), {})
        cleaned = tracked.get(value)
        if cleaned is None:
            cleaned = (clean_flag_name(value) or INVALID) if field == _FLAG else clean_value(value, field)
            if (
                cleaned is not value
                and cleaned is not INVALID
                and cleaned is not REDACTED
                and self.admission.admits(field, cleaned)
            ):  # a value the rules kept as it is was not admitted above
                return _remember(self._admitted[field], value, cleaned)
            if len(tracked) < self.max_new_values:
                tracked[value] = cleaned
            elif cleaned is not INVALID and cleaned is not REDACTED:
                tally.suppressed[field] += 1
                bad.append(Reason.RARE_VALUE)
                return RARE
        if cleaned is INVALID or cleaned is REDACTED:
            bad.append(_NOTES[cleaned])
            return cleaned
        bad.append(Reason.RARE_VALUE)
        rare.append((field, cleaned))
        return RARE

    def _sighting(self, tally: Tally, candidate: tuple, installation: int) -> None:
        installations = tally.candidates.setdefault(candidate, set())
        if len(installations) < self.k:
            installations.add(installation)

    def _window_start(self, timestamp: float | str, record_ms: int, kind: str, notes: dict) -> int:
        """Event time for a payload that carries a timestamp: that time when valid, else the Kafka
        record's. Raises a LATE rejection when late.

        Lateness is measured against the record's own timestamp (when the broker got it), not against
        the partition's progress: the verdict depends on the record alone, so a replayed range always
        projects the same way.
        """
        record_s = record_ms // 1000
        width = self.window_seconds
        event_s = _epoch_seconds(timestamp)
        if event_s is None:
            _count(notes, (record_s - record_s % width, kind, Reason.BAD_TIMESTAMP))
            return record_s - record_s % width
        if event_s > record_s + self.future_tolerance:
            _count(notes, (record_s - record_s % width, kind, Reason.FUTURE_TIMESTAMP))
            return record_s - record_s % width
        if event_s < record_s - self.allowed_lateness:
            _count(notes, (record_s - record_s % width, kind, Reason.LATE))
            raise Rejection(Reason.LATE, "$.timestamp", kind=kind)
        return event_s - event_s % width


def _typed(value: object, field: str, kind: str) -> object:
    """A `data` value of the dict path as the typed path has it: a model reference as its struct."""
    if field not in MODEL_KEYS or value is None:
        return value
    if type(value) is not dict:
        raise Rejection(Reason.WRONG_TYPE, f"$.data.{field}", "expected object or null", kind)
    keys = MODEL_KEYS[field]
    return _MODEL_REFS[keys](*(value.get(key) for key in keys))


def _is_clean(value: str, field: str) -> bool:
    """Whether the value rules store an admitted value as it is (the registry admits families by pattern,
    and a pattern match may still hold a secret)."""
    if field == _FLAG:
        return clean_flag_name(value) == value
    return clean_value(value, field) == value


def _bucket(count: object, path: str, kind: str, bad: list[Reason]) -> str:
    if count is None:
        return NONE
    if type(count) is not int:
        raise Rejection(Reason.WRONG_TYPE, path, "expected int or null", kind)
    bucket = member_bucket(count)
    if bucket is INVALID:
        bad.append(Reason.INVALID_VALUE)
    return bucket


def _count(counter: dict, key: tuple) -> None:
    counter[key] = counter.get(key, 0) + 1


def _merge(quality: dict, notes: dict) -> None:
    for key, n in notes.items():
        quality[key] = quality.get(key, 0) + n
    notes.clear()


_MIN_EPOCH_S = 946_684_800  # 2000-01-01: anything earlier is a broken clock, not an old event
_MAX_EPOCH_S = 4_102_444_800  # 2100-01-01


def _epoch_seconds(timestamp: float | str) -> int | None:
    """Seconds since the epoch from a number (s or ms) or an ISO-8601 string; None when invalid."""
    if type(timestamp) is str:
        try:
            parsed = datetime.fromisoformat(timestamp)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None  # a naive time has no defined instant
        seconds = parsed.timestamp()
    else:
        seconds = float(timestamp)
        if seconds > 1e11:  # milliseconds
            seconds /= 1000
    if not _MIN_EPOCH_S <= seconds < _MAX_EPOCH_S:  # also false for NaN and inf
        return None
    return int(seconds)


_MSGSPEC_PATH = re.compile(r" - at `(\$[^`]*)`$")


def _rejection(exc: Exception, raw: bytes) -> Rejection:
    """The Rejection for an exception raised while projecting `raw`."""
    if isinstance(exc, Rejection):
        return exc
    if isinstance(exc, msgspec.ValidationError):  # includes numbers out of range (1e400)
        return _validation_rejection(str(exc), raw)
    if isinstance(exc, (msgspec.DecodeError, UnicodeDecodeError)):
        return _raw_rejection(raw, None)
    if isinstance(exc, RecursionError):
        return Rejection(Reason.NOT_JSON, detail="nesting too deep")
    return Rejection(Reason.UNPROCESSABLE, detail=f"validator error: {type(exc).__name__}")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _validation_rejection(message: str, raw: bytes) -> Rejection:
    """A msgspec type error as a Rejection. msgspec messages name types and paths, never values."""
    match = _MSGSPEC_PATH.search(message)
    path = match.group(1) if match else "$"
    detail = message[: match.start()] if match else message
    if path == "$":
        return Rejection(Reason.NOT_OBJECT, "$", detail)
    try:
        kind = msgspec.json.decode(raw, type=_KindOnly).type
    except msgspec.MsgspecError:
        kind = None
    return Rejection(Reason.WRONG_TYPE, path, detail, kind if type(kind) is str and kind in KINDS else "unknown")


def _raw_rejection(raw: bytes | None, max_event_bytes: int | None) -> Rejection:
    """Bytes that are no JSON document at all: null, too large, empty, not UTF-8, or not JSON."""
    if raw is None:
        return Rejection(Reason.TOMBSTONE)
    if max_event_bytes is not None and len(raw) > max_event_bytes:
        return Rejection(Reason.OVERSIZED, detail=f"{len(raw)} bytes > {max_event_bytes}")
    if not raw.strip():
        return Rejection(Reason.EMPTY)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(Reason.NOT_UTF8, detail=f"invalid byte at position {exc.start}")
    return Rejection(Reason.NOT_JSON, detail="not a JSON document (RFC 8259)")
