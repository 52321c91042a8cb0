"""An installation's daily pseudonym: what lets the pipeline count people's installations, not processes,
without an identifier that lasts.

k-anonymity needs a value to be seen from k different *installations* before it is stored: ten processes
of one developer, one server with ten workers, or ten restarts in a day must count once. So the client
keeps a random secret beside its first-run notice marker (`installation-secret` in the config directory,
mode 0600, made once per user account) and sends, with each usage event, the pseudonym of the UTC day:
HMAC-SHA256(secret, "kern-telemetry/installation/<day>"), 16 bytes as 32 hex characters. It is the same
all day for every process of the installation, another one the next day, and without the secret (which
never leaves the machine) nobody can link two days' pseudonyms, or an installation's to another's. The
pipeline keeps only keyed hashes of it, per day (`pipeline/admission.py`).

Where no secret can be read or written (a read-only home, a sandbox), each process keeps its own random
secret: it counts as an installation of its own, as every process did before pseudonyms. In debug mode
(`KERN_TELEMETRY_DEBUG`: payloads printed, nothing sent) an existing secret is used, but none is made.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from pathlib import Path
from typing import Callable

from .environment import ON, config_dir, mode

SECRET_FILE = "installation-secret"
DAY_S = 86_400
_SECRET_BYTES = 32


def _secret_path() -> Path:
    return config_dir() / SECRET_FILE


class Installation:
    """Today's pseudonym of this installation. Without `secret`, the installation's is read (or made) at the
    first call."""

    def __init__(
        self,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
        secret_path: Callable[[], Path] = _secret_path,
    ):
        self._secret = secret
        self._clock = clock
        self._secret_path = secret_path
        self._lock = threading.Lock()
        self._day = -1
        self._pseudonym = ""

    def today(self) -> str:
        """The pseudonym of the current UTC day. Cheap after the first call of a day (one clock read)."""
        day = int(self._clock() // DAY_S)
        if day != self._day:
            with self._lock:
                if self._secret is None:
                    self._secret = _load_or_make(self._secret_path)
                self._pseudonym = hmac.new(
                    self._secret, b"kern-telemetry/installation/%d" % day, hashlib.sha256
                ).hexdigest()[:32]
                self._day = day
        return self._pseudonym


def _load_or_make(path_of: Callable[[], Path]) -> bytes:
    """The installation's secret: read, or made once. It is written whole to a file of this process and
    linked into place, so no process ever reads half of it, and of two processes that make it at once the
    first link wins and both read that one. A process-own random secret when none can be read or made.
    Never raises."""
    try:
        path = path_of()
        if not path.exists():
            if mode()[0] != ON:
                return os.urandom(_SECRET_BYTES)  # debug mode writes nothing
            path.parent.mkdir(parents=True, exist_ok=True)
            draft = path.with_name(f".{path.name}.{os.getpid()}")
            descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(descriptor, "wb") as file:
                    file.write(os.urandom(_SECRET_BYTES))
                os.link(draft, path)
            except FileExistsError:
                pass  # another process made it first: read theirs
            finally:
                draft.unlink()
        secret = path.read_bytes()
        if len(secret) >= _SECRET_BYTES:
            return secret[:_SECRET_BYTES]
    except Exception:  # noqa: BLE001 - unreadable, unwritable, no hard links, anything: this process is its own
        pass
    return os.urandom(_SECRET_BYTES)
