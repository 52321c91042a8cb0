"""A request body into the events it carries: bounded gunzip, framing, limits. Never looks inside an event.

Framing is the collector's, content the workers': a JSON array must be well-formed JSON (msgspec finds
the elements' bounds in C, as `Raw` slices, without building objects); an NDJSON body is split at
newlines, and empty lines are skipped. Each element is passed on as it is, one Kafka record; an element
that is not a valid event (not JSON, not an object, a wrong type) is the workers' to dead-letter with
its reason, as if an SDK had produced it to Kafka. A batch that breaks a limit or its framing is refused
whole: nothing of it is produced.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import msgspec

JSON, NDJSON = "application/json", "application/x-ndjson"
MEDIA_TYPES = {JSON: JSON, NDJSON: NDJSON, "application/jsonl": NDJSON, "application/x-jsonlines": NDJSON}
_GZIP = 16 + zlib.MAX_WBITS
_elements = msgspec.json.Decoder(list[msgspec.Raw]).decode


class Refused(Exception):
    """A request the collector does not produce: its HTTP status, a reason code, words for a human, and
    headers for the answer (Retry-After, WWW-Authenticate)."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers


@dataclass(frozen=True)
class Limits:
    batch_bytes: int  # after gunzip
    batch_events: int
    event_bytes: int  # the workers' KERN_MAX_EVENT_BYTES


def media_type(content_type: str, content_encoding: str) -> str:
    """The framing of a body from its headers (JSON or NDJSON), or 415."""
    framing = MEDIA_TYPES.get(content_type)
    if framing is None:
        raise Refused(
            415,
            "unsupported_media_type",
            f"Content-Type must be {JSON} (an array of events) or {NDJSON} (one event per line), not {content_type!r}",
        )
    if content_encoding not in ("", "identity", "gzip"):
        raise Refused(415, "unsupported_media_type", f"Content-Encoding must be gzip or none, not {content_encoding!r}")
    return framing


def gunzip(body: bytes, limit: int) -> bytes:
    """Inflate at most `limit` + 1 bytes: a gzip bomb is refused after that much, never inflated whole."""
    inflater = zlib.decompressobj(_GZIP)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise Refused(400, "bad_gzip", f"the body is not gzip: {error}") from None
    if len(inflated) > limit:
        raise Refused(413, "batch_too_large", f"the batch inflates to more than {limit} bytes")
    if not inflater.eof or inflater.unused_data:
        raise Refused(400, "bad_gzip", "the gzip stream is truncated, or followed by other data")
    return inflated


def events(body: bytes, framing: str, limits: Limits) -> list[msgspec.Raw] | list[bytes]:
    """The elements of a (gunzipped) batch: `Raw` slices of a JSON array, or the lines of NDJSON."""
    elements: list[msgspec.Raw] | list[bytes]
    if len(body) > limits.batch_bytes:
        raise Refused(413, "batch_too_large", f"the batch is larger than {limits.batch_bytes} bytes")
    if framing == JSON:
        try:
            elements = _elements(body)
        except (msgspec.MsgspecError, RecursionError) as error:  # RecursionError: nested deeper than msgspec goes
            raise Refused(400, "bad_framing", f"the body is not a JSON array: {error}") from None
    else:
        elements = [line for line in body.split(b"\n") if line]
    if not elements:
        raise Refused(400, "no_events", "the batch holds no event")
    if len(elements) > limits.batch_events:
        raise Refused(413, "too_many_events", f"{len(elements)} events; at most {limits.batch_events} per batch")
    if max(map(len, elements)) > limits.event_bytes:
        index = next(i for i, element in enumerate(elements) if len(element) > limits.event_bytes)
        raise Refused(
            413, "event_too_large", f"event {index} is larger than {limits.event_bytes} bytes (KERN_MAX_EVENT_BYTES)"
        )
    return elements
