"""Which strings may be stored as a telemetry value: the rules both the SDK client (before it sends) and
the pipeline (before it stores) apply. Plain Python without dependencies.

A raw value longer than `MAX_RAW_LENGTH` is INVALID at once. A value is then reduced by the format rules
of its field (`formats.py`, whose table lists every rule: fine-tuned and cloud model ids, namespaces,
SDK versions; URLs, paths, e-mail and IP addresses, host names and identifiers become REDACTED), then
kept as it is or replaced by a marker: `NONE` for null or absent, `INVALID` for too long or with
characters outside the allowed set, `REDACTED` for what looks like a secret (API keys, provider tokens,
bearer tokens, long high-entropy tokens).
"""

from __future__ import annotations

import math
import re

from .formats import INVALID, MAX_RAW_LENGTH, REDACTED, normalize

NONE = "none"  # null or absent: a value of its own
MAX_VALUE_LENGTH = 100
_MARKERS = {INVALID: INVALID, REDACTED: REDACTED}  # the very objects, which the pipeline compares by identity
_FORMATTED = frozenset({"sdk_version"})  # a value that passed this field's format holds no secret (2.4.0.1)

# Linear: no two quantifiers can match the same characters at the same place.
_VALUE_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:/@+\-]*")
_FLAG_NAME = re.compile(r"has_[a-z0-9_]{1,60}")
# One scan for every key and token format: the generic ones case-insensitive, the providers' formats
# case-sensitive and exact, so names like "ghost-writer" or "hf_internal_model" pass.
_SECRET_PATTERNS = re.compile(
    r"""
      (?i:(?:^|[^a-z])(?:sk|pk|rk|ak)[-_][A-Za-z0-9_\-]{8,}   # API keys: sk-..., pk_live_...
        | \b(?:bearer|basic|token)\s+(?=[^\s\d]*\d)\S{12,})  # Authorization headers (a token has digits)
    | gh[pousr]_[A-Za-z0-9]{16,} | glpat-[A-Za-z0-9_\-]{16,} | xox[abprs]-[A-Za-z0-9\-]{10,} | AKIA[0-9A-Z]{16}
    | AIza[0-9A-Za-z_\-]{30,} | hf_[A-Za-z0-9]{20,}
    """,
    re.VERBOSE,
)
# Tokens of 20 characters or more between separators (findall: each is consumed once; a shorter run is
# left after at most 19 characters tried).
_LONG_TOKENS = re.compile(r"[^-_ ./:@+]{20,}")


def _looks_secret(value: str) -> bool:
    """Keys and tokens, in a value its callers have capped."""
    if _SECRET_PATTERNS.search(value):
        return True
    # Long high-entropy tokens (hex digests, base64 keys, JWT parts) are not model or db names.
    for token in _LONG_TOKENS.findall(value):
        if _entropy_bits_per_char(token) >= 3.5 and any(c.isdigit() for c in token):
            return True
    return False


def _entropy_bits_per_char(token: str) -> float:
    counts: dict[str, int] = {}
    for char in token:
        counts[char] = counts.get(char, 0) + 1
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def clean_value(value: str, field: str = "") -> str:
    """The value stored for a raw string of `field` (a data field or model reference key, whose format
    rules apply first): itself normalised, INVALID or REDACTED. A marker stays what it is (a client applies
    these rules before it sends, the pipeline again before it stores)."""
    if len(value) > MAX_RAW_LENGTH:
        return INVALID
    marker = _MARKERS.get(value)
    if marker is not None:
        return marker
    value = normalize(field, value)
    if value is INVALID or value is REDACTED:
        return value
    if len(value) > MAX_VALUE_LENGTH or not _VALUE_CHARS.fullmatch(value):
        return INVALID
    if field not in _FORMATTED and _looks_secret(value):
        return REDACTED
    return value


def clean_flag_name(name: str) -> str | None:
    """A `has_*` key as a feature name, or None when the key is malformed or secret-looking."""
    if len(name) > 64 or not _FLAG_NAME.fullmatch(name) or _looks_secret(name[4:]):
        return None
    return name
