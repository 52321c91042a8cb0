"""What the environment says: whether telemetry is on, off or in debug mode, and where the client may
keep its two small files (the first-run notice marker and the drops left unreported at exit).

Read when the first event is captured, not at import, so a `.env` loaded after the SDK was imported
still counts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ON, OFF, DEBUG = "on", "off", "debug"

#: Variables that turn telemetry off when set to a false value (`AGNO_TELEMETRY` is the documented one).
OPT_OUT_VARIABLES = ("AGNO_TELEMETRY", "KERN_TELEMETRY")
_FALSE = frozenset({"false", "0", "no", "off"})

DEBUG_VARIABLE = "KERN_TELEMETRY_DEBUG"

APP_DIR = "kern"


def _value(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip().lower()


def mode(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """(ON, OFF or DEBUG, the variable that decided it). Any opt-out wins over debug mode.

    `DO_NOT_TRACK` (consoledonottrack.com) counts as set when it holds anything but a false value, so
    `DO_NOT_TRACK=1`, `=true` and `=yes` all opt out.
    """
    for name in OPT_OUT_VARIABLES:
        if _value(environ, name) in _FALSE:
            return OFF, name
    if _value(environ, "DO_NOT_TRACK") not in _FALSE | {""}:
        return OFF, "DO_NOT_TRACK"
    if _value(environ, DEBUG_VARIABLE) not in _FALSE | {""}:
        return DEBUG, DEBUG_VARIABLE
    return ON, ""


def _xdg_dir(environ: Mapping[str, str], variable: str, fallback: str) -> Path:
    base = environ.get(variable, "")
    # The XDG spec: a relative path is invalid and must be ignored.
    return (Path(base) if os.path.isabs(base) else Path.home() / fallback) / APP_DIR


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """`$XDG_CONFIG_HOME/kern` or `~/.config/kern`: where the notice marker lives."""
    return _xdg_dir(environ, "XDG_CONFIG_HOME", ".config")


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """`$XDG_STATE_HOME/kern` or `~/.local/state/kern`: where unreported drops wait for a later process."""
    return _xdg_dir(environ, "XDG_STATE_HOME", ".local/state")
