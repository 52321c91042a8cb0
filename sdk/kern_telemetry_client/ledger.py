"""Drops a process could not report before it exited, left for a later process to report.

At exit (or `close()`) the client writes what it has not reported - the events still unsent at the exit
deadline, and any drops whose client report the broker had not acknowledged - to a small JSON file in
the user's state directory. The next process with telemetry on claims such files by renaming them (of
processes racing for a file, exactly one rename succeeds), and reports their counts in its next client
report, each under the SDK version that dropped them. Nothing identifies the user: a file holds only
(sdk_version, reason, count) triples. A process killed before its exit handler runs leaves nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from typing import Optional

from . import contract
from .environment import state_dir
from .payloads import name

PREFIX = "unreported-"
#: Files one process claims: a backlog from many offline runs is worked off a little at a time.
CLAIM_LIMIT = 64
_MAX_COUNT = 2**31

#: (sdk_version, reason) -> count
Drops = Counter[tuple[Optional[str], str]]


def save(dropped: Drops) -> None:
    """Write {(sdk_version, reason): count} to a new file (atomically: a reader never sees half of it)."""
    if not dropped:
        return
    try:
        directory = state_dir()
        directory.mkdir(parents=True, exist_ok=True)
        stem = directory / f"{PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
        temporary = stem.with_suffix(".tmp")
        temporary.write_text(json.dumps({"dropped": [[v, r, n] for (v, r), n in dropped.items() if n > 0]}))
        os.replace(temporary, stem.with_suffix(".json"))
    except (OSError, ValueError):
        pass  # no writable state directory: these drops go unreported


def claim() -> Drops:
    """Claim and read up to CLAIM_LIMIT files; their {(sdk_version, reason): count}."""
    claimed: Drops = Counter()
    try:
        paths = sorted(state_dir().glob(f"{PREFIX}*.json"))[:CLAIM_LIMIT]
    except OSError:
        return claimed
    for path in paths:
        mine = path.with_suffix(f".claimed-{os.getpid()}")
        try:
            os.rename(path, mine)
        except OSError:
            continue  # another process claimed it first
        try:
            triples = json.loads(mine.read_text())["dropped"]
        except (OSError, ValueError, KeyError, TypeError):
            triples = ()  # not a file the client wrote: dropped with nothing claimed
        with contextlib.suppress(OSError):
            mine.unlink()
        for triple in triples if isinstance(triples, list) else ():
            entry = _entry(triple)
            if entry is not None:
                claimed[entry[:2]] += entry[2]
    return claimed


def _entry(triple: object) -> tuple[str | None, str, int] | None:
    """A (sdk_version, reason, count) triple read back, or None when it is not one the client wrote."""
    if not (isinstance(triple, list) and len(triple) == 3):
        return None
    version, reason, count = triple
    if reason not in contract.DROP_REASONS or type(count) is not int or not 0 < count < _MAX_COUNT:
        return None
    return name(version), reason, count
