# The native fold (pipeline/native/fold.c), built by every install.
from typing import Any

class Fold:
    def __init__(
        self,
        window_seconds: int,
        allowed_lateness: int,
        future_tolerance: int,
        max_event_bytes: int,
        max_installation: int,
        day_key: Any,
        run_kinds: tuple[str, ...],
        other_kinds: tuple[str, ...],
        strings: tuple[str, ...],
        ints: tuple[str, ...],
        flags: tuple[str, ...],
        models: tuple[str, ...],
        string_lists: tuple[str, ...],
    ) -> None: ...
    def fold(self, messages: list, start: int, sessions: dict, installations: dict, quality: dict) -> int: ...
    def learn(self, dims: tuple, reasons: tuple) -> bool: ...
    def session(self, window_start: int, session: str) -> int: ...
    def installation(self, window_start: int, installation: str) -> int: ...
    def checked(self) -> bool: ...
    def stats(self) -> dict[str, int]: ...

def counted() -> int: ...
