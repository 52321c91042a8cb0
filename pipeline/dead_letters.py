"""The dead-letter topic's records: why an event was not counted, where it was, and its shape (keys and
types), never its values. Keyed by the source position, so a consumer of the DLQ can drop the duplicates
a crash may leave."""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
from kern_telemetry_client.values import clean_value

from pipeline.rejections import Reason, Rejection


class DeadLetter(NamedTuple):
    key: bytes
    value: bytes


def dead_letter(rejection: Rejection, message: Any, topic: str, partition: int) -> DeadLetter:
    """The DLQ record of an invalid event (a consumer record with .offset, .timestamp, .value)."""
    raw = message.value
    record = {
        "reason": rejection.reason.value,
        "path": rejection.path,
        "detail": rejection.detail,
        "kind": rejection.kind,
        "source": {"topic": topic, "partition": partition, "offset": message.offset,
                   "timestamp_ms": message.timestamp},
        "size": None if raw is None else len(raw),
        "shape": shape_of_bytes(raw) if raw is not None and len(raw) <= 1 << 20 else None,
    }
    return DeadLetter(f"{topic}/{partition}/{message.offset}".encode(), msgspec.json.encode(record))


def skipped_range(topic: str, partition: int, first_offset: int, last_offset: int, reason: str) -> DeadLetter:
    """The DLQ record of a range an operator skipped (`kern-telemetry skip`), with the operator's reason."""
    record = {"reason": Reason.SKIPPED.value, "path": "$", "detail": reason, "kind": "unknown",
              "source": {"topic": topic, "partition": partition, "offset": first_offset,
                         "through_offset": last_offset},
              "size": None, "shape": None}
    return DeadLetter(f"{topic}/{partition}/{first_offset}-{last_offset}".encode(), msgspec.json.encode(record))


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
