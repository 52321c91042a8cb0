"""`Telemetry`: the object an SDK holds and calls at each run and launch.

Nothing happens until the first event: then the environment decides (off, debug, on), and only when on
does the first-run notice show and the transport start its worker thread. Off (an opt-out variable,
`telemetry=False` on the object, `Telemetry(enabled=False)` or `disable()`) means nothing at all: no
thread, socket, import of kafka-python, queued event, file, output or log record above debug.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
import threading
import weakref
from time import monotonic
from typing import Any, Callable

from . import contract, environment, notice, payloads
from .transport import BeforeSend, Event, Sink, Stats, Transport

log = logging.getLogger(__name__)

DEFAULT_EXIT_TIMEOUT = 1.0


def _off(event: Event) -> None:
    """Where events go when telemetry is off: nowhere (never called; compared against)."""


def _debug_print(event: Event) -> None:
    """KERN_TELEMETRY_DEBUG: show the payload that would be sent; send nothing."""
    with contextlib.suppress(Exception):  # a broken stderr is the host's business
        sys.stderr.write(f"kern-telemetry debug: {json.dumps(event, separators=(',', ':'))}\n")


def _opted_out(obj: Any) -> bool:
    """`telemetry=False` on the object. An object whose `telemetry` attribute raises is left alone."""
    try:
        return getattr(obj, "telemetry", True) is False
    except Exception:  # noqa: BLE001 - a property that raises anything: this object is not reported
        return True


class Telemetry:
    """Usage telemetry for one SDK in one process: hold one, call it at each run and launch.

    `sdk_version` goes into every event; `sink` sends them (`HttpSink(url)`, or `KafkaSink("host:9092")`
    inside the operator's network). `queue_size` bounds the events waiting to be sent (more are dropped
    and counted); `exit_timeout` is the longest interpreter exit waits for queued events; client reports
    of drops go out every `report_interval` s. `before_send(event)` runs on the worker thread, never the
    caller's, on each usage event before it is encoded: it returns the event to send (changed or not), or
    None to drop it (counted `before_send`, as when it raises or returns anything but a dict).
    `enabled=False`: this instance does nothing at all (for tests; `disable()` for the whole process).
    """

    def __init__(
        self,
        sdk_version: str,
        sink: Sink,
        *,
        queue_size: int = 10_000,
        exit_timeout: float = DEFAULT_EXIT_TIMEOUT,
        report_interval: float = 60.0,
        before_send: BeforeSend | None = None,
        enabled: bool = True,
    ):
        self.sdk_version = payloads.name(sdk_version, "sdk_version")
        self.exit_timeout = exit_timeout
        self._sink = sink
        self._queue_size = queue_size
        self._report_interval = report_interval
        self._before_send = before_send
        self._ids = payloads.IDENTIFIERS
        self._lock = threading.Lock()
        # None until the first event decides
        self._emit: Callable[[Event], None] | None = None if enabled else _off
        self._transport: Transport | None = None

    # --- what the SDK calls -------------------------------------------------------------------------

    def agent_run(self, agent: Any, session_id: object, run_id: object = None) -> None:
        """One agent run: call once per run, at the same point of every run."""
        self._run(contract.AGENT, agent, session_id, run_id)

    def team_run(self, team: Any, session_id: object, run_id: object = None) -> None:
        self._run(contract.TEAM, team, session_id, run_id)

    def workflow_run(self, workflow: Any, session_id: object, run_id: object = None) -> None:
        self._run(contract.WORKFLOW, workflow, session_id, run_id)

    def os_launch(self, agent_os: Any) -> None:
        """An AgentOS started serving."""
        if not _opted_out(agent_os):
            emit = self._emit or self._decide()
            if emit is not _off:
                emit(payloads.launch_event(agent_os, self.sdk_version, self._ids))

    def flush(self, timeout: float = DEFAULT_EXIT_TIMEOUT) -> bool:
        """Wait up to `timeout` s until the events captured so far are settled (delivered, or dropped and
        counted); False on timeout. A forked child that ends with `os._exit` (multiprocessing does)
        should call this first."""
        transport = self._transport
        return transport is None or transport.flush(timeout)

    async def aflush(self, timeout: float = DEFAULT_EXIT_TIMEOUT) -> bool:
        """`flush` for asyncio code: the event loop runs on while it waits."""
        transport = self._transport
        return transport is None or await transport.aflush(timeout)

    def close(self, timeout: float = DEFAULT_EXIT_TIMEOUT) -> None:
        """Stop: deliver what is queued within `timeout` s; what is left is counted (`stats()`) and the
        drops kept for a later process to report. Later calls do nothing. Interpreter exit calls it."""
        transport = self._closing()
        if transport is not None:
            transport.close(timeout)

    async def aclose(self, timeout: float = DEFAULT_EXIT_TIMEOUT) -> None:
        """`close` for asyncio code: the event loop runs on while it waits."""
        transport = self._closing()
        if transport is not None:
            await transport.aclose(timeout)

    def stats(self) -> Stats:
        """What became of the events this process captured so far (`Stats`); all zeros when telemetry is
        off or in debug mode, or before the first event."""
        transport = self._transport
        return Stats() if transport is None else transport.stats()

    # --- inside -----------------------------------------------------------------------------------

    def _run(self, kind: str, obj: Any, session_id: object, run_id: object) -> None:
        if not _opted_out(obj):
            emit = self._emit or self._decide()
            if emit is not _off:
                emit(payloads.run_event(kind, obj, session_id, run_id, self.sdk_version, self._ids))

    def _decide(self) -> Callable[[Event], None]:
        """The first event: read the environment and start (or not)."""
        with self._lock:
            if self._emit is None:
                try:
                    self._emit = self._start()
                except Exception:  # noqa: BLE001 - e.g. no new thread at interpreter shutdown: stay off
                    log.debug("telemetry could not start", exc_info=True)
                    self._emit = _off
            return self._emit

    def _start(self) -> Callable[[Event], None]:
        if _disabled:
            log.debug("telemetry off (disable())")
            return _off
        mode, variable = environment.mode()
        if mode == environment.OFF:
            log.debug("telemetry off (%s)", variable)
            return _off
        _LIVE.add(self)
        if mode == environment.DEBUG:
            return _debug_print
        notice.show_once()
        self._transport = Transport(
            self._sink, self.sdk_version, self._queue_size, self._report_interval, before_send=self._before_send
        )
        return self._transport.put

    def _mute(self) -> None:
        with self._lock:
            self._emit = _off

    def _closing(self) -> Transport | None:
        """No more events from this instance, nor an exit handler; its transport, to close."""
        self._mute()
        _LIVE.discard(self)
        return self._transport

    def _forget_after_fork(self) -> None:
        """In a forked child: the parent's queue (its events are the parent's to send) and thread (gone)
        are dropped; the first event here starts the child's own."""
        self._lock = threading.Lock()
        self._transport = None
        if self._emit is not _off:
            self._emit = None


_LIVE: weakref.WeakSet[Telemetry] = weakref.WeakSet()  # instances that capture (on, or in debug mode)
_disabled = False


def disable() -> None:
    """Turn telemetry off for the rest of this process, whatever the environment says (e.g. in a test
    suite's conftest): no instance starts anything from now on, and those that capture stop capturing
    (what they hold is still delivered, or counted, when they close or at exit)."""
    global _disabled
    _disabled = True
    for telemetry in list(_LIVE):
        telemetry._mute()


def _close_all_at_exit() -> None:
    """Interpreter exit: give every live instance its exit timeout, from one common start."""
    start = monotonic()
    for telemetry in list(_LIVE):
        telemetry.close(max(0.0, start + telemetry.exit_timeout - monotonic()))


def _after_fork_in_child() -> None:
    for telemetry in list(_LIVE):
        telemetry._forget_after_fork()
    _LIVE.clear()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
