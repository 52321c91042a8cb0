"""Why an event is not counted: the reason codes, and the one way a rejection is reported (raising
`Rejection` from the projector; the rollup catches it)."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """DLQ reasons come first; the rest are quality counters only."""

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
    RARE_VALUE = "rare_value"  # a value seen from fewer than k sessions: stored as (rare)
    # Ranges of offsets without records to count, counted by offsets, not by events (`GONE`):
    SKIPPED = "skipped"  # an operator gave them up (`kern-telemetry skip`)
    EXPIRED = "expired"  # removed by the topic's retention before they were consumed
    LOST = "lost"  # gone from a truncated log before they were consumed


#: Outcomes of a range of offsets, not of events: each has its own column in the ledger (`ingest_flushes`).
GONE = (Reason.SKIPPED, Reason.EXPIRED, Reason.LOST)
QUALITY_ONLY = frozenset(
    {
        Reason.LATE,
        Reason.FUTURE_TIMESTAMP,
        Reason.BAD_TIMESTAMP,
        Reason.REDACTED_VALUE,
        Reason.INVALID_VALUE,
        Reason.RARE_VALUE,
    }
)


class Rejection(Exception):
    """An event that is not counted: reason code, JSON path of the offending field, a value-free
    description, and the kind when it is known."""

    def __init__(self, reason: Reason, path: str = "$", detail: str = "", kind: str = "unknown"):
        super().__init__(reason, path, detail, kind)
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
