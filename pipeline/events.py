"""The event contract: decode, validate and project one SDK telemetry event onto its allow-listed dimensions.

`EventProjector.project` is the per-event hot path. For a valid event it returns the rollup key
`(window_start, dimensions)`; for an invalid one a `Rejection` (reason code, JSON path, value-free shape).
Nothing outside `DIMENSIONS` survives projection: identifiers, prompts and unknown fields are never
copied anywhere, and every dimension string passes `clean_value` (bounded length and characters,
secret-looking values replaced by `REDACTED`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import msgspec
from kern_telemetry_client import contract
from kern_telemetry_client.values import INVALID, NONE, REDACTED, clean_flag_name, clean_value

KINDS = frozenset(contract.EVENT_KINDS)

#: Columns of the rollup key, in the order of the tuple `project` returns (after `window_start`).
DIMENSIONS = (
    "kind", "sdk_version", "model_provider", "model_name", "model_id", "db_type",
    "parser_provider", "parser_model_id", "output_provider", "output_model_id",
    "member_bucket", "features",
)


class Reason(StrEnum):
    """Why an event is not counted. DLQ reasons come first; the rest are quality counters only."""

    TOMBSTONE = "tombstone"  # record with a null value
    EMPTY = "empty"  # zero bytes or only whitespace
    OVERSIZED = "oversized"  # more than max_event_bytes
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"  # includes NaN/Infinity literals and nesting past the decoder's limit
    NOT_OBJECT = "not_object"  # JSON, but not an object
    WRONG_TYPE = "wrong_type"  # a known field has a type the contract does not allow
    MISSING_FIELD = "missing_field"  # session_id or type absent (or null)
    UNKNOWN_KIND = "unknown_kind"  # type is not agent/team/workflow/os
    UNPROCESSABLE = "unprocessable"  # the validator itself failed on it: dead-lettered, never dropped
    # Counted in the quality table, never dead-lettered:
    LATE = "late"  # event time older than its Kafka record by more than the allowed lateness
    FUTURE_TIMESTAMP = "future_timestamp"  # payload time too far ahead: the record time is used
    BAD_TIMESTAMP = "bad_timestamp"  # payload time unparseable or out of range: the record time is used
    REDACTED_VALUE = "redacted_value"  # a dimension value looked like a secret or personal data
    INVALID_VALUE = "invalid_value"  # a dimension value was too long or had disallowed characters
    # A range of offsets an operator skipped (`kern-telemetry skip`): counted by offsets, not by events.
    SKIPPED = "skipped"


QUALITY_ONLY = frozenset({Reason.LATE, Reason.FUTURE_TIMESTAMP, Reason.BAD_TIMESTAMP,
                          Reason.REDACTED_VALUE, Reason.INVALID_VALUE})


#: Flags the current SDKs send. Others (`has_*` keys the contract does not name yet) are counted too, on
#: the slower dict path: see `EventProjector._dict_projection`.
KNOWN_FLAGS = contract.FLAGS


class _ModelRef(msgspec.Struct, frozen=True):  # hashable: part of a cache key
    model_provider: str | None = None
    model_id: str | None = None


# `data` with every field the contract names, typed: msgspec checks the types in C and skips the rest
# (identifiers, prompts) without creating them. A flag defaults to UNSET so that a null flag still counts
# as present. The first seven fields are the model and db fields, in `_DATA_FIELDS` order.
_DATA_FIELDS = ("db_type", "model_provider", "model_name", "model_id", "parser_model", "output_model",
                "member_count")
_Data = msgspec.defstruct("_Data", [
    ("db_type", str | None, None), ("model_provider", str | None, None), ("model_name", str | None, None),
    ("model_id", str | None, None), ("parser_model", _ModelRef | None, None),
    ("output_model", _ModelRef | None, None), ("member_count", int | None, None),
    *((flag, bool | None | msgspec.UnsetType, msgspec.UNSET) for flag in KNOWN_FLAGS),
])
_NO_DATA = (None,) * len(_DATA_FIELDS)


def _envelope(name: str, data_type: object) -> type:
    """Known top-level fields with their allowed types. Unknown fields (run_id, ...) are skipped by the
    decoder, so they never exist as Python objects."""
    return msgspec.defstruct(name, [
        ("type", str | None | msgspec.UnsetType, msgspec.UNSET),
        ("session_id", str | None | msgspec.UnsetType, msgspec.UNSET),
        ("os_id", str | None | msgspec.UnsetType, msgspec.UNSET),
        ("sdk_version", str | None, None),
        ("timestamp", int | float | str | None, None),
        ("data", data_type | None, None),
    ])


_TypedEnvelope = _envelope("_TypedEnvelope", _Data)
_Envelope = _envelope("_Envelope", dict[str, Any])  # for events with flags outside KNOWN_FLAGS


class _KindOnly(msgspec.Struct):
    type: Any = None


class Rejection:
    """An invalid event: reason code, JSON path of the offending field, a value-free description."""

    __slots__ = ("reason", "path", "detail", "kind")

    def __init__(self, reason: Reason, path: str = "$", detail: str = "", kind: str = "unknown"):
        self.reason = reason
        self.path = path
        self.detail = detail
        self.kind = kind

    @property
    def dead_letter(self) -> bool:
        """False for late events: they are counted in the quality table but not dead-lettered."""
        return self.reason not in QUALITY_ONLY

    def __repr__(self) -> str:
        return f"Rejection({self.reason.value!r}, {self.path!r}, {self.detail!r})"


class _Invalid(Exception):
    """Raised inside projection; becomes a Rejection at the boundary."""

    def __init__(self, rejection: Rejection):
        self.rejection = rejection


_CACHE_LIMIT = 50_000


# --- shapes for the dead-letter topic -------------------------------------------------------------

_SHAPE_MAX_KEYS = 32
_SHAPE_MAX_DEPTH = 3
_TYPE_NAMES = {str: "string", bool: "bool", int: "int", float: "float", type(None): "null", list: "array", dict: "object"}


def shape_of(value: object, depth: int = 0) -> object:
    """Keys and types of a decoded JSON value, never its values. Keys are cleaned like values, so a key
    that is itself a secret shows as REDACTED."""
    if isinstance(value, dict):
        if depth >= _SHAPE_MAX_DEPTH:
            return "object"
        shape: dict[str, object] = {}
        for i, (key, item) in enumerate(value.items()):
            if i == _SHAPE_MAX_KEYS:
                shape["..."] = f"{len(value) - i} more keys"
                break
            shape[clean_value(key)] = shape_of(item, depth + 1)
        return shape
    if isinstance(value, list):
        return f"array[{len(value)}]"
    return _TYPE_NAMES.get(type(value), "unknown")


def shape_of_bytes(raw: bytes | None) -> object:
    """The shape of a raw record value, decoding it only as far as is safe."""
    if raw is None:
        return "null"
    try:
        return shape_of(msgspec.json.decode(raw))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return f"bytes[{len(raw)}]"


# --- projection -----------------------------------------------------------------------------------

_MSGSPEC_PATH = re.compile(r" - at `(\$[^`]*)`$")
_MEMBER_BUCKETS = ((0, "0"), (1, "1"), (2, "2"), (4, "3-4"), (8, "5-8"), (16, "9-16"), (32, "17-32"))


def member_bucket(count: int) -> str:
    if count < 0:
        return INVALID
    for upper, label in _MEMBER_BUCKETS:
        if count <= upper:
            return label
    return "33+"


def _member_bucket(count: object, kind: str, bad: list[Reason]) -> str:
    if count is None:
        return NONE
    if type(count) is not int:
        raise _Invalid(Rejection(Reason.WRONG_TYPE, "$.data.member_count", "expected int or null", kind))
    bucket = member_bucket(count)
    if bucket is INVALID:
        bad.append(Reason.INVALID_VALUE)
    return bucket


class EventProjector:
    """Validates events and projects them onto rollup keys. One per worker; holds only caches."""

    def __init__(self, window_seconds: int, allowed_lateness_seconds: int, future_tolerance_seconds: int,
                 max_event_bytes: int):
        self.window_seconds = window_seconds
        self.allowed_lateness = allowed_lateness_seconds
        self.future_tolerance = future_tolerance_seconds
        self.max_event_bytes = max_event_bytes
        self._decode_typed = msgspec.json.Decoder(_TypedEnvelope).decode
        # Untyped floats (unknown fields) as Decimal: 1e400 there must not reject what the typed decode,
        # which skips those fields, accepts.
        self._decode_dict = msgspec.json.Decoder(_Envelope, float_hook=Decimal).decode
        # (kind, sdk_version, typed data fields) -> (flags present, dimensions, reasons of bad values): a
        # hit is one tuple hash, and there are about as many entries as distinct dimension sets.
        self._projections: dict[tuple, tuple[int, tuple, tuple[Reason, ...]]] = {}
        self._cleaned: dict[str, str] = {}  # raw value -> clean_value(raw value)
        self._flag_names: dict[str, str | None] = {}  # `has_*` key -> clean_flag_name(key)
        self._notes: dict = {}  # one event's quality notes, kept only if the event is counted

    @classmethod
    def from_settings(cls, settings: Any) -> EventProjector:
        return cls(settings.window_seconds, settings.allowed_lateness_seconds,
                   settings.future_tolerance_seconds, settings.max_event_bytes)

    def project(self, raw: bytes | None, record_ms: int, quality: dict) -> tuple | Rejection:
        """`(window_start, dims)` for a countable event, else a Rejection. Every event not counted, and
        notes about counted ones (redacted values, replaced timestamps), are added to
        `quality[(window_start, kind, reason)]`. The per-event hot path: keep it flat."""
        if raw is None:
            result = Rejection(Reason.TOMBSTONE)
        elif len(raw) > self.max_event_bytes:
            result = Rejection(Reason.OVERSIZED, detail=f"{len(raw)} bytes > {self.max_event_bytes}")
        elif not raw.isascii() and not _is_utf8(raw):  # msgspec skips unknown fields unchecked
            result = _decode_rejection(raw)
        else:
            try:
                event = self._decode_typed(raw)
            except Exception as exc:  # noqa: BLE001 - classified by `_decode_failure`
                event = _decode_failure(exc, raw)
            if type(event) is Rejection:
                result = event
            else:
                notes = self._notes  # kept only if the event is counted (or late): a rejection gets none
                try:
                    result = self._project(event, raw, record_ms, notes)
                except _Invalid as invalid:
                    result = invalid.rejection
                except Exception as exc:  # noqa: BLE001 - a validator bug must not stop the partition
                    result = Rejection(Reason.UNPROCESSABLE, detail=f"validator error: {type(exc).__name__}")
                if notes:
                    if type(result) is tuple or not result.dead_letter:
                        for key, n in notes.items():
                            quality[key] = quality.get(key, 0) + n
                    notes.clear()
                if type(result) is tuple:
                    return result
        if result.dead_letter:
            record_s = record_ms // 1000
            _count(quality, (record_s - record_s % self.window_seconds, result.kind, result.reason))
        return result

    def _project(self, event: Any, raw: bytes, record_ms: int, notes: dict) -> tuple | Rejection:
        """Envelope checks, event time, then the dimensions: cached per distinct typed `data`, or from the
        dict decode when the bytes hold a flag the typed decode did not see."""
        kind = event.type
        if kind is msgspec.UNSET or kind is None:
            if event.os_id is msgspec.UNSET:  # AgentOS launches of older SDKs carry os_id and no type
                return Rejection(Reason.MISSING_FIELD, "$.type")
            kind = "os"
        elif kind not in KINDS:
            return Rejection(Reason.UNKNOWN_KIND, "$.type", "expected one of agent, team, workflow, os")
        if kind != "os" and (event.session_id is msgspec.UNSET or event.session_id is None):
            return Rejection(Reason.MISSING_FIELD, "$.session_id", kind=kind)

        if event.timestamp is None:
            record_s = record_ms // 1000
            window_start = record_s - record_s % self.window_seconds
        else:
            window_start = self._window_start(event.timestamp, record_ms, kind, notes)
            if window_start is None:
                return Rejection(Reason.LATE, "$.timestamp", kind=kind)

        data = event.data
        key = (kind, event.sdk_version, _NO_DATA if data is None else msgspec.structs.astuple(data))
        present, dims, bad = self._projections.get(key) or self._typed_projection(key)
        # Every `"has_` in the bytes must be a known flag the typed decode saw; otherwise (a new flag, a
        # duplicate key, an escaped key) decode again into a dict, which keeps every key.
        if raw.count(b'"has_') != present or b"\\u" in raw:
            dims, bad = self._dict_projection(raw, kind, event.sdk_version)
        if bad:
            for reason in bad:
                _count(notes, (window_start, kind, reason))
        return window_start, dims

    def _typed_projection(self, key: tuple) -> tuple[int, tuple, tuple[Reason, ...]]:
        """Cache miss: the projection of typed `data` fields (`_DATA_FIELDS`, then `KNOWN_FLAGS`)."""
        kind, sdk_version, fields = key
        flags = fields[len(_DATA_FIELDS):]
        present = sum(value is not msgspec.UNSET for value in flags)
        features = tuple(sorted(flag for flag, value in zip(KNOWN_FLAGS, flags) if value is True))
        projection = (present, *self._dimensions(kind, sdk_version, fields, features, []))
        if len(self._projections) < _CACHE_LIMIT:
            self._projections[key] = projection
        return projection

    def _dict_projection(self, raw: bytes, kind: str, sdk_version: str | None) -> tuple[tuple, tuple[Reason, ...]]:
        """The dimensions of an event whose `data` has flags outside `KNOWN_FLAGS` (not cached)."""
        try:
            data = self._decode_dict(raw).data or {}
        except Exception as exc:  # noqa: BLE001 - classified by `_decode_failure`
            raise _Invalid(_decode_failure(exc, raw)) from None
        features, bad = [], []
        for key, value in data.items():
            if key[:4] != "has_" or value is False or value is None:
                continue
            if value is not True:
                raise _Invalid(Rejection(Reason.WRONG_TYPE, f"$.data.{clean_value(key)}", "expected bool or null",
                                         kind))
            name = _remembered(self._flag_names, key, clean_flag_name)
            if name is None:
                bad.append(Reason.INVALID_VALUE)
            else:
                features.append(name)
        features.sort()
        return self._dimensions(kind, sdk_version, tuple(data.get(field) for field in _DATA_FIELDS),
                                tuple(features), bad)

    def _dimensions(self, kind: str, sdk_version: object, fields: tuple, features: tuple,
                    bad: list[Reason]) -> tuple[tuple, tuple[Reason, ...]]:
        """The `DIMENSIONS` tuple, and the reasons for the values it had to replace."""
        db_type, provider, name, model_id, parser, output, members = fields[:len(_DATA_FIELDS)]
        clean = self._clean
        dims = (
            kind,
            clean(sdk_version, "$.sdk_version", kind, bad),
            clean(provider, "$.data.model_provider", kind, bad),
            clean(name, "$.data.model_name", kind, bad),
            clean(model_id, "$.data.model_id", kind, bad),
            clean(db_type, "$.data.db_type", kind, bad),
            *self._model_ref(parser, "parser_model", kind, bad),
            *self._model_ref(output, "output_model", kind, bad),
            _member_bucket(members, kind, bad) if kind == "team" else NONE,
            features,
        )
        return dims, tuple(bad)

    def _clean(self, value: object, path: str, kind: str, bad: list[Reason]) -> str:
        if value is None:
            return NONE
        if type(value) is not str:
            raise _Invalid(Rejection(Reason.WRONG_TYPE, path, "expected string or null", kind))
        cleaned = _remembered(self._cleaned, value, clean_value)
        if cleaned is REDACTED:
            bad.append(Reason.REDACTED_VALUE)
        elif cleaned is INVALID:
            bad.append(Reason.INVALID_VALUE)
        return cleaned

    def _model_ref(self, ref: object, field: str, kind: str, bad: list[Reason]) -> tuple[str, str]:
        if ref is None:
            return NONE, NONE
        if type(ref) is _ModelRef:
            provider, model_id = ref.model_provider, ref.model_id
        elif type(ref) is dict:
            provider, model_id = ref.get("model_provider"), ref.get("model_id")
        else:
            raise _Invalid(Rejection(Reason.WRONG_TYPE, f"$.data.{field}", "expected object or null", kind))
        return (self._clean(provider, f"$.data.{field}.model_provider", kind, bad),
                self._clean(model_id, f"$.data.{field}.model_id", kind, bad))

    def _window_start(self, timestamp: object, record_ms: int, kind: str, quality: dict) -> int | None:
        """Event time for a payload that carries a timestamp: that time when valid, else the Kafka
        record's. None when late.

        Lateness is measured against the record's own timestamp (when the broker got it), not against
        the partition's progress: the verdict depends on the record alone, so a replayed range always
        projects the same way.
        """
        record_s = record_ms // 1000
        width = self.window_seconds
        event_s = _epoch_seconds(timestamp)
        if event_s is None:
            _count(quality, (record_s - record_s % width, kind, Reason.BAD_TIMESTAMP))
            return record_s - record_s % width
        if event_s > record_s + self.future_tolerance:
            _count(quality, (record_s - record_s % width, kind, Reason.FUTURE_TIMESTAMP))
            return record_s - record_s % width
        if event_s < record_s - self.allowed_lateness:
            _count(quality, (record_s - record_s % width, kind, Reason.LATE))
            return None
        return event_s - event_s % width


def _remembered(cache: dict, key: str, compute: Callable[[str], Any]) -> Any:
    """`compute(key)`, kept in `cache` while it holds fewer than `_CACHE_LIMIT` entries."""
    if key in cache:
        return cache[key]
    value = compute(key)
    if len(cache) < _CACHE_LIMIT:
        cache[key] = value
    return value


def _count(counter: dict, key: tuple) -> None:
    counter[key] = counter.get(key, 0) + 1


_MIN_EPOCH_S = 946_684_800  # 2000-01-01: anything earlier is a broken clock, not an old event
_MAX_EPOCH_S = 4_102_444_800  # 2100-01-01


def _epoch_seconds(timestamp: object) -> int | None:
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
        seconds = float(timestamp)  # type: ignore[arg-type]
        if seconds > 1e11:  # milliseconds
            seconds /= 1000
    if not _MIN_EPOCH_S <= seconds < _MAX_EPOCH_S:  # also false for NaN and inf
        return None
    return int(seconds)


def _decode_failure(exc: Exception, raw: bytes) -> Rejection:
    """The Rejection that bytes earn when a decoder raised `exc` on them."""
    if isinstance(exc, msgspec.ValidationError):  # includes numbers out of range (1e400)
        return _validation_rejection(str(exc), raw)
    if isinstance(exc, (msgspec.DecodeError, UnicodeDecodeError)):
        return _decode_rejection(raw)
    if isinstance(exc, RecursionError):
        return Rejection(Reason.NOT_JSON, detail="nesting too deep")
    return Rejection(Reason.UNPROCESSABLE, detail=f"decoder error: {type(exc).__name__}")


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


def _decode_rejection(raw: bytes) -> Rejection:
    if not raw.strip():
        return Rejection(Reason.EMPTY)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(Reason.NOT_UTF8, detail=f"invalid byte at position {exc.start}")
    return Rejection(Reason.NOT_JSON, detail="not a JSON document (RFC 8259)")
