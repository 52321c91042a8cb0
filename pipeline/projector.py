"""Decode, validate and project one SDK telemetry event onto its dimensions (`pipeline/dimensions.py`).

`EventProjector.project` is the per-event hot path. For a countable event it returns the rollup key
`(window_start, dimensions)`; anything else raises a `Rejection` (reason code, JSON path, value-free
detail), already counted in the quality table. The key's first dimension is the kind, and a client report
(`client_report`: what an SDK client could not deliver) has its own dimensions: `(kind, sdk_version,
((reason, count), ...))`; the sink writes it to its own table (`pipeline/sink.py`). The typed decoder is derived from the dimensions and the
contract (`kern_telemetry_client.contract`): msgspec checks the types of exactly the `data` fields the
dimensions read, in C, and skips everything else (identifiers, prompts) without creating it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from kern_telemetry_client import contract
from kern_telemetry_client.values import INVALID, NONE, REDACTED, clean_flag_name, clean_value

from pipeline.dimensions import DATA_FIELDS, DIMENSIONS, MODEL_KEYS, member_bucket
from pipeline.rejections import Reason, Rejection

KINDS = frozenset(contract.KINDS)
_UNKNOWN_KIND = f"expected one of {', '.join(contract.KINDS)}"

#: Flags the current SDKs send are typed fields; others (`has_*` keys the contract does not name yet) are
#: counted too, on the slower dict path: see `EventProjector._dict_projection`.
KNOWN_FLAGS = contract.FLAGS

_CACHE_LIMIT = 50_000


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
_Data = msgspec.defstruct("_Data", [
    *((field, _FIELD_TYPES[contract.field(field).type](field), None) for field in DATA_FIELDS),
    *((flag, bool | None | msgspec.UnsetType, msgspec.UNSET) for flag in KNOWN_FLAGS),
])
_NO_DATA = (None,) * len(DATA_FIELDS)


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


class _Dropped(msgspec.Struct):
    dropped: dict[str, Annotated[int, msgspec.Meta(ge=0)]] | None = None


class _ClientReport(msgspec.Struct):
    data: _Dropped | None = None


class _KindOnly(msgspec.Struct):
    type: Any = None


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
        self._notes: dict = {}  # one event's quality notes, kept only if the event is counted (or late)

    @classmethod
    def from_settings(cls, settings: Any) -> EventProjector:
        return cls(settings.window_seconds, settings.allowed_lateness_seconds,
                   settings.future_tolerance_seconds, settings.max_event_bytes)

    def project(self, raw: bytes | None, record_ms: int, quality: dict) -> tuple:
        """`(window_start, dims)` for a countable event; raises `Rejection` otherwise. Every event not
        counted, and notes about counted ones (redacted values, replaced timestamps), are added to
        `quality[(window_start, kind, reason)]`. The per-event hot path: keep it flat."""
        if raw is None or len(raw) > self.max_event_bytes or (not raw.isascii() and not _is_utf8(raw)):
            raise self._rejected(_raw_rejection(raw, self.max_event_bytes), record_ms, quality)
        try:
            key = self._project(self._decode_typed(raw), raw, record_ms)
        except Exception as exc:  # noqa: BLE001 - classified by `_rejected`: a validator bug must not stop a partition
            raise self._rejected(_rejection(exc, raw), record_ms, quality) from None
        if self._notes:
            _merge(quality, self._notes)
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

    def _project(self, event: Any, raw: bytes, record_ms: int) -> tuple:
        """Envelope checks, event time, then the dimensions: cached per distinct typed `data`, or from the
        dict decode when the bytes hold a flag the typed decode did not see."""
        kind = event.type
        if kind is msgspec.UNSET or kind is None:
            if event.os_id is msgspec.UNSET:  # AgentOS launches of older SDKs carry os_id and no type
                raise Rejection(Reason.MISSING_FIELD, "$.type")
            kind = contract.OS
        elif kind not in KINDS:
            raise Rejection(Reason.UNKNOWN_KIND, "$.type", _UNKNOWN_KIND)
        if kind in contract.RUN_KINDS and (event.session_id is msgspec.UNSET or event.session_id is None):
            raise Rejection(Reason.MISSING_FIELD, "$.session_id", kind=kind)

        notes = self._notes
        if event.timestamp is None:
            record_s = record_ms // 1000
            window_start = record_s - record_s % self.window_seconds
        else:
            window_start = self._window_start(event.timestamp, record_ms, kind, notes)

        if kind == contract.CLIENT_REPORT:
            return window_start, self._client_report(raw, event.sdk_version, window_start)
        data = event.data
        key = (kind, event.sdk_version, _NO_DATA if data is None else msgspec.structs.astuple(data))
        present, dims, bad = self._projections.get(key) or self._typed_projection(key)
        # Every `"has_` in the bytes must be a known flag the typed decode saw; otherwise (a new flag, a
        # duplicate key, an escaped key) decode again into a dict, which keeps every key.
        if raw.count(b'"has_') != present or b"\\u" in raw:
            dims, bad = self._dict_projection(raw, kind, event.sdk_version)
        for reason in bad:
            _count(notes, (window_start, kind, reason))
        return window_start, dims

    def _typed_projection(self, key: tuple) -> tuple[int, tuple, tuple[Reason, ...]]:
        """Cache miss: the projection of typed `data` fields (`DATA_FIELDS`, then `KNOWN_FLAGS`)."""
        kind, sdk_version, fields = key
        flags = fields[len(DATA_FIELDS):]
        present = sum(value is not msgspec.UNSET for value in flags)
        features = tuple(sorted(flag for flag, value in zip(KNOWN_FLAGS, flags) if value is True))
        projection = (present, *self._dimensions(kind, sdk_version, dict(zip(DATA_FIELDS, fields)), features, []))
        if len(self._projections) < _CACHE_LIMIT:
            self._projections[key] = projection
        return projection

    def _dict_projection(self, raw: bytes, kind: str, sdk_version: str | None) -> tuple[tuple, tuple[Reason, ...]]:
        """The dimensions of an event whose `data` has flags outside `KNOWN_FLAGS` (not cached)."""
        try:
            data = self._decode_dict(raw).data or {}
        except Exception as exc:  # noqa: BLE001 - classified by `_rejection`
            raise _rejection(exc, raw) from None
        features, bad = [], []
        for key, value in data.items():
            if key[:4] != contract.FLAG_PREFIX or value is False or value is None:
                continue
            if value is not True:
                raise Rejection(Reason.WRONG_TYPE, f"$.data.{clean_value(key)}", "expected bool or null", kind)
            name = _remembered(self._flag_names, key, clean_flag_name)
            if name is None:
                bad.append(Reason.INVALID_VALUE)
            else:
                features.append(name)
        features.sort()
        return self._dimensions(kind, sdk_version, data, tuple(features), bad)

    def _dimensions(self, kind: str, sdk_version: object, data: Mapping, features: tuple,
                    bad: list[Reason]) -> tuple[tuple, tuple[Reason, ...]]:
        """The dimensions in `DIMENSIONS` order, and the reasons for the values it had to replace."""
        dims = []
        for dimension in DIMENSIONS:
            if dimension.kinds is not None and kind not in dimension.kinds:
                dims.append(NONE)
            elif dimension.source == "kind":
                dims.append(kind)
            elif dimension.source == "flags":
                dims.append(features)
            else:
                value = _lookup(data, dimension.path[1:], kind) if dimension.path[0] == "data" else sdk_version
                path = "$." + ".".join(dimension.path)
                dims.append(self._clean(value, path, kind, bad) if dimension.source == "value"
                            else _bucket(value, path, kind, bad))
        return tuple(dims), tuple(bad)

    def _client_report(self, raw: bytes, sdk_version: str | None, window_start: int) -> tuple:
        """A client's account of the events it dropped: `data.dropped` maps a reason to a count (reasons
        the contract does not name yet are kept under their cleaned name, like new flags)."""
        data = msgspec.json.decode(raw, type=_ClientReport).data
        dropped = (data.dropped if data is not None else None) or {}
        bad: list[Reason] = []
        version = self._clean(sdk_version, "$.sdk_version", contract.CLIENT_REPORT, bad)
        counts = tuple(sorted((_remembered(self._cleaned, reason, clean_value), count)
                              for reason, count in dropped.items() if count))
        for reason in bad:
            _count(self._notes, (window_start, contract.CLIENT_REPORT, reason))
        return contract.CLIENT_REPORT, version, counts

    def _clean(self, value: object, path: str, kind: str, bad: list[Reason]) -> str:
        if value is None:
            return NONE
        if type(value) is not str:
            raise Rejection(Reason.WRONG_TYPE, path, "expected string or null", kind)
        cleaned = _remembered(self._cleaned, value, clean_value)
        if cleaned is REDACTED:
            bad.append(Reason.REDACTED_VALUE)
        elif cleaned is INVALID:
            bad.append(Reason.INVALID_VALUE)
        return cleaned

    def _window_start(self, timestamp: object, record_ms: int, kind: str, notes: dict) -> int:
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


def _lookup(data: Mapping, path: tuple[str, ...], kind: str) -> object:
    """`data[path[0]]`, or a key of the model reference there (a typed struct or, on the dict path, a dict)."""
    value = data.get(path[0])
    if len(path) == 1 or value is None:
        return value
    if type(value) is dict:
        return value.get(path[1])
    if isinstance(value, msgspec.Struct):
        return getattr(value, path[1])
    raise Rejection(Reason.WRONG_TYPE, f"$.data.{path[0]}", "expected object or null", kind)


def _bucket(count: object, path: str, kind: str, bad: list[Reason]) -> str:
    if count is None:
        return NONE
    if type(count) is not int:
        raise Rejection(Reason.WRONG_TYPE, path, "expected int or null", kind)
    bucket = member_bucket(count)
    if bucket is INVALID:
        bad.append(Reason.INVALID_VALUE)
    return bucket


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


def _merge(quality: dict, notes: dict) -> None:
    for key, n in notes.items():
        quality[key] = quality.get(key, 0) + n
    notes.clear()


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
