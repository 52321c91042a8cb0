"""The first-run notice: telemetry is on, what it sends, how to turn it off. Shown once per machine (per
user account: a marker file in the user's config directory, as Homebrew and Next.js do), on stderr, when
the first event is about to be sent; never when telemetry is off or in debug mode."""

from __future__ import annotations

import os
import sys

from .environment import config_dir

MARKER = "telemetry-notice-shown"

TEXT = """\
Kern collects anonymous usage telemetry: for each agent, team and workflow run and each AgentOS launch,
the model provider, model name and id, database type, feature flags (tools, memory, knowledge, ...) and
counts. Never prompts, responses, instructions, tool arguments, keys or user data; session and run ids
only as one-way digests. To turn it off: export KERN_TELEMETRY=false (or AGNO_TELEMETRY=false, or
DO_NOT_TRACK=1), or pass telemetry=False to an Agent, Team, Workflow or AgentOS. To see every payload
instead of sending it: export KERN_TELEMETRY_DEBUG=1. This notice is shown once.
"""


def show_once() -> None:
    """Print the notice unless the marker says it was shown; then write the marker. Never raises: if the
    marker cannot be written, the notice shows again in the next process, which is the honest failure."""
    marker = config_dir() / MARKER
    try:
        if marker.exists():
            return
    except OSError:
        pass
    try:
        sys.stderr.write(TEXT)
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a closed or broken stderr is the host's business
        pass
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        with open(marker, "x") as file:  # "x": a racing process that wrote it first wins, quietly
            file.write(f"shown by process {os.getpid()}\n")
    except OSError:
        pass
