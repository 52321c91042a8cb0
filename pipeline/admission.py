"""k-anonymous values: which values of the free-text fields are stored as they are.

A value (a model id, a model class, a provider, a db type, an SDK version, a flag name) is stored verbatim
when the registry knows it (`known_values.py`) or once it has been seen from at least k distinct
installations in one day (`KERN_K_ANONYMITY`, default 10); until then its runs count under `RARE`. Totals
never change: runs move to `RARE`, they do not disappear. Installations, not sessions or processes: a
developer who runs a script ten times a day, or a server with ten workers, is one installation (the SDK
client sends its installation's pseudonym of the day: `kern_telemetry_client/installation.py`); an event
of an older SDK, without one, admits nothing.

Admission works without identifiers. Sessions and installations are counted by keyed hashes: BLAKE2b keyed
per day with a key derived from the operator's master secret (`KERN_HASH_SECRET`, never stored in
ClickHouse or Kafka), so every worker and every replay derives the same hash, while hashes of different
days cannot be linked by anyone without the secret. A candidate value reaches ClickHouse only as a keyed
hash of itself, with the keyed hashes of the installations that sent it (`value_candidates`, a few days);
once k installations of one day are there, the worker that sees the value next writes it in a new
admission epoch (`admitted_values`).

Admission changes rows, and a replayed flush must give the rows of its first attempt: a rollup uses one
admission epoch from its first record to its flush, the epoch is recorded with the flush's intent, and a
replay projects with the admission of that epoch (`Admissions.at`). Epochs are written with a
deduplication token per epoch number, so two workers that write the same epoch at once cannot both win.

k-anonymity protects against accidental leaks by honest clients. Pseudonyms are chosen by clients, so it
is no defence against a client that invents installations; the cardinality guard is (`pipeline/rollup.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

from pipeline import known_values

RARE = "(rare)"
DAY_S = 86_400  # a day of keyed session hashes (UTC)


class Keys:
    """The keyed hashes derived from the master secret, as 64-bit integers (ClickHouse UInt64)."""

    def __init__(self, secret: bytes):
        self._secret = secret
        self._values = self._keyed(b"kern-telemetry/values")
        self._days: dict[tuple[bytes, int], Any] = {}  # (what, day) -> that day's key: used per event

    def _keyed(self, label: bytes):
        return hashlib.blake2b(key=self._key(label), digest_size=8)

    def _key(self, label: bytes) -> bytes:
        return hmac.digest(self._secret, label, "sha256")

    def day_key(self, what: bytes, day: int) -> bytes:
        """The key of a day's hashes of `what` (b"sessions", b"installations"; days since the epoch, UTC),
        for the native fold (`pipeline/native/fold.c`), which digests as `session` and `installation` do."""
        return self._key(_daily_label(what, day))

    def session(self, window_start: int, session: str) -> int:
        """The keyed hash of a session seen on the day of `window_start` (the day's own key). Once per
        counted event, as the fold meets it (the raw id is never kept): one dict lookup and one digest."""
        return _digest(self._of_day(b"sessions", window_start), session)

    def installation(self, window_start: int, installation: str) -> int:
        """The keyed hash of an installation's pseudonym on the day of `window_start`, as the fold meets it
        (the pseudonym is never kept): with its own keys, unlinkable to the sessions' and across days."""
        return _digest(self._of_day(b"installations", window_start), installation)

    def _of_day(self, what: bytes, window_start: int):
        day = window_start // DAY_S
        keyed = self._days.get((what, day))
        if keyed is None:
            if len(self._days) > 32:
                self._days.clear()
            keyed = self._days[what, day] = self._keyed(_daily_label(what, day))
        return keyed

    def value(self, field: str, value: str) -> int:
        return _digest(self._values, f"{field}\0{value}")


_U64 = struct.Struct("<Q")


def _daily_label(what: bytes, day: int) -> bytes:
    return b"kern-telemetry/%s/%d" % (what, day)


def _digest(keyed, text: str) -> int:
    """The 64-bit keyed digest of `text` (a session's or an installation's on the fold's per-event path)."""
    hasher = keyed.copy()
    hasher.update(text.encode("utf-8", "surrogatepass"))
    return _U64.unpack(hasher.digest())[0]


class Admitted(NamedTuple):
    epoch: int
    field: str
    value: str


class Admission:
    """The values stored verbatim at one epoch: the registry's and those admitted up to that epoch."""

    def __init__(self, epoch: int = 0, admitted: dict[str, frozenset[str]] | None = None):
        self.epoch = epoch
        self._admitted = admitted or {}

    def admits(self, field: str, value: str) -> bool:
        return value in self._admitted.get(field, ()) or known_values.known(field, value)


class Admissions:
    """Every admitted value with the epoch that admitted it; `at(epoch)` is that epoch's admission."""

    def __init__(self, rows: Iterable[Admitted] = ()):
        self.rows: list[Admitted] = sorted(rows)
        self.latest = self.rows[-1].epoch if self.rows else 0

    def at(self, epoch: int) -> Admission:
        admitted: dict[str, set[str]] = {}
        for row in self.rows:
            if row.epoch <= epoch:
                admitted.setdefault(row.field, set()).add(row.value)
        return Admission(epoch, {field: frozenset(values) for field, values in admitted.items()})
