"""The dead-letter topic's records: why an event was not counted, where it was, and its shape (keys and
types), never its values. Keyed by the source position, so a consumer of the DLQ can drop the duplicates
a crash may leave.

A key can itself be private (`{"<customer name>": 1}`): the shape names only the keys the contract knows
and the flags admitted as k-anonymous; the others are counted by type under `OTHER_KEYS`, never named."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
from kern_telemetry_client import contract

from pipeline.rejections import Reason, Rejection

OTHER_KEYS = "(other keys)"
#: Keys the contract names, at any depth: the envelope's, `data`'s and a model reference's.
KNOWN_KEYS = frozenset(
    {
        *(f.name for f in contract.ENVELOPE),
        *contract.OPTIONAL_ENVELOPE,
        *(f.name for f in contract.DATA),
        *contract.MODEL_REF_KEYS,
    }
)


class DeadLetter(NamedTuple):
    key: bytes
    value: bytes


def dead_letter(
    rejection: Rejection,
    message: Any,
    topic: str,
    partition: int,
    admitted_flag: Callable[[str], bool] = lambda name: False,
) -> DeadLetter:
    """The DLQ record of an invalid event (a consumer record with .offset, .timestamp, .value);
    `admitted_flag(name)` says whether a flag name beyond the contract's may be named."""
    raw = message.value
    record = {
        "reason": rejection.reason.value,
        "path": rejection.path,
        "detail": rejection.detail,
        "kind": rejection.kind,
        "source": {"topic": topic, "partition": partition, "offset": message.offset, "timestamp_ms": message.timestamp},
        "size": None if raw is None else len(raw),
        "shape": shape_of_bytes(raw, admitted_flag) if raw is not None and len(raw) <= 1 << 20 else None,
    }
    return DeadLetter(f"{topic}/{partition}/{message.offset}".encode(), msgspec.json.encode(record))


def gone_range(
    reason: Reason, topic: str, partition: int, first_offset: int, last_offset: int, detail: str
) -> DeadLetter:
    """The DLQ record of a range of offsets not counted (`rejections.GONE`: skipped by an operator, with the
    operator's reason; expired; lost), so that a consumer of the DLQ sees every offset the worker gave up."""
    record = {
        "reason": reason.value,
        "path": "$",
        "detail": detail,
        "kind": "unknown",
        "source": {"topic": topic, "partition": partition, "offset": first_offset, "through_offset": last_offset},
        "size": None,
        "shape": None,
    }
    return DeadLetter(f"{topic}/{partition}/{first_offset}-{last_offset}".encode(), msgspec.json.encode(record))


_SHAPE_MAX_KEYS = 32
_SHAPE_MAX_DEPTH = 3
_TYPE_NAMES = {
    str: "string",
    bool: "bool",
    int: "int",
    float: "float",
    type(None): "null",
    list: "array",
    dict: "object",
}


def shape_of(value: object, admitted_flag: Callable[[str], bool], depth: int = 0) -> object:
    """Keys and types of a decoded JSON value, never its values; other keys than the contract's (and
    admitted flags) are counted by type under OTHER_KEYS."""
    if isinstance(value, dict):
        if depth >= _SHAPE_MAX_DEPTH:
            return "object"
        shape: dict[str, object] = {}
        others: dict[str, int] = {}
        for i, (key, item) in enumerate(value.items()):
            if i == _SHAPE_MAX_KEYS:
                shape["..."] = f"{len(value) - i} more keys"
                break
            if key in KNOWN_KEYS or (key.startswith(contract.FLAG_PREFIX) and admitted_flag(key)):
                shape[key] = shape_of(item, admitted_flag, depth + 1)
            else:
                kind = _TYPE_NAMES.get(type(item), "unknown")
                others[kind] = others.get(kind, 0) + 1
        if others:
            shape[OTHER_KEYS] = others
        return shape
    if isinstance(value, list):
        return f"array[{len(value)}]"
    return _TYPE_NAMES.get(type(value), "unknown")


def shape_of_bytes(raw: bytes | None, admitted_flag: Callable[[str], bool]) -> object:
    """The shape of a raw record value, decoding it only as far as is safe."""
    if raw is None:
        return "null"
    try:
        return shape_of(msgspec.json.decode(raw), admitted_flag)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return f"bytes[{len(raw)}]"
