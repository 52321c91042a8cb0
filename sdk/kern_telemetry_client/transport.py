"""The machinery behind the capture calls: one bounded queue, one worker thread, the accounting of what
was dropped and why, and a pluggable sink that does the sending.

The caller's thread only puts a small dict into the queue (no lock, no I/O, no encoding); a full queue
drops the event and counts it. The worker takes batches of up to BATCH_SIZE, JSON-encodes them and
hands them to the sink's channel, which sends on its own terms (Kafka: kafka-python's I/O thread; HTTP:
one POST per batch) and reports each record delivered or failed. While the sink cannot take records the
worker keeps its batch, waits with exponential backoff, lengthened to what the channel asks for (an HTTP
Retry-After), logs one warning per outage, then stays quiet, and lets the queue absorb, then drop and
count, what comes meanwhile. A channel that asks to wait forever (an HTTP collector's "stop sending")
turns telemetry off for the rest of the process.

Every event is, at any moment, in exactly one place: the queue, the worker's hands (`_held`), or the
channel (`_in_flight`). Whatever is still in one of them when `close` gives up is `unsent_at_exit`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import queue
import random
import threading
from collections import Counter
from time import monotonic
from typing import Callable, List, Optional, Protocol

from . import ledger, payloads
from .contract import DROP_REASONS

log = logging.getLogger(__name__)

QUEUE_FULL, SEND_FAILED, OVERSIZED, UNSENT_AT_EXIT = DROP_REASONS

#: Names the worker thread; sinks name their own threads with it too (see `kafka_sink`), which is how
#: records their libraries log on them are told apart from the host's.
THREAD_NAME = "kern-telemetry-client"
BATCH_SIZE = 100  # events per hand-over (and per request for a batching sink)
MAX_EVENT_BYTES = 64 * 1024  # what the pipeline accepts (KERN_MAX_EVENT_BYTES); ours are ~1 KB
MAX_IN_FLIGHT = 10_000  # records handed to the channel and not yet settled: its buffer is bounded too
_IN_FLIGHT_PAUSE = 0.05

_encode = json.JSONEncoder(separators=(",", ":")).encode


class Channel(Protocol):
    """A sink's open connection, used by the worker thread only."""

    #: Read after a `send` that did not take every record: how long the sink asks to wait before the next
    #: try (an HTTP Retry-After; 0: the transport's backoff decides alone). `math.inf`: never send again.
    retry_after: float

    def send(self, records: List[bytes], delivered: Callable[[object], None],
             failed: Callable[[object], None]) -> int:
        """Take records for sending; return how many were taken (the rest: the sink cannot take them
        now, try again later). Each taken record gets exactly one call, from any thread, possibly before
        `send` returns: `delivered(result)` or `failed(error)`. Raising means no record was taken."""

    def flush(self, timeout: float) -> bool:
        """Wait until every taken record is settled; False on timeout."""

    def close(self) -> None:
        """Release everything now; records not yet settled are abandoned (the transport counted them)."""


class Sink(Protocol):
    """What the transport sends through: configuration, cheap to build on the caller's thread."""

    def open(self) -> Channel:
        """Called on the worker thread (imports and connections happen there, never on the host's)."""


class Backoff:
    """Exponential delays with jitter: `start`, doubling up to `cap`, each drawn from [d/2, d]."""

    def __init__(self, start: float, cap: float):
        self._start, self._cap = start, cap
        self._next = start

    def reset(self) -> None:
        self._next = self._start

    def delay(self) -> float:
        delay, self._next = self._next, min(self._cap, self._next * 2)
        return delay * random.uniform(0.5, 1.0)


class _Marker:
    """A flush or close request, queued behind the events it must see settled."""

    __slots__ = ("deadline", "final", "done", "ok")

    def __init__(self, timeout: float, final: bool):
        self.deadline = monotonic() + timeout
        self.final = final
        self.done = threading.Event()
        self.ok = False


class Transport:
    def __init__(self, sink: Sink, sdk_version: Optional[str], capacity: int = 10_000,
                 report_interval: float = 60.0, backoff: Optional[Backoff] = None):
        self._sink = sink
        self._version = sdk_version
        self._capacity = capacity
        self._report_interval = report_interval
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # the counters below; never taken on the capture path unless dropping
        self._wake = threading.Event()  # cuts a backoff pause short (flush, close)
        self._unreported: Counter = Counter()  # (sdk_version, reason) -> drops not yet reported
        self._markers = 0  # markers in the queue (its size counts them too)
        self._held = 0
        self._in_flight = 0
        self._offline = False
        self._closed = False
        self._stopped = False  # the sink said stop sending: off for the rest of the process
        self._channel: Optional[Channel] = None
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    # --- the caller's side ----------------------------------------------------------------------

    def put(self, event: dict) -> None:
        """Enqueue an event; a full queue drops it (counted). Never blocks."""
        if self._stopped:
            return
        if self._queue.qsize() < self._capacity:
            self._queue.put(event)
        else:
            self._count(QUEUE_FULL)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s until every event put before the call is settled."""
        marker = self._mark(timeout, final=False)
        return marker.done.wait(timeout) and marker.ok

    def close(self, timeout: float) -> None:
        """Deliver what is queued within `timeout` s (no wait at all during a known outage), then stop.
        What is left is counted `unsent_at_exit`; every drop not reported by then goes to the ledger."""
        deadline = monotonic() + timeout
        if self._closed:
            return
        if self._thread.is_alive() and not self._offline:
            if self._mark(timeout, final=True).done.wait(timeout):
                self._thread.join(max(0.0, deadline - monotonic()))  # it closes its channel
        with self._lock:
            self._closed = True
            unsent = self._queue.qsize() - self._markers + self._held + self._in_flight
            if unsent > 0:
                self._unreported[(self._version, UNSENT_AT_EXIT)] += unsent
            leftover = +self._unreported
        self._wake.set()  # a worker still pausing sees `_closed` and stops
        ledger.save(leftover)

    def _mark(self, timeout: float, final: bool) -> _Marker:
        marker = _Marker(timeout, final)
        with self._lock:  # queued under the lock: `_stop` releases every marker queued before it
            if self._stopped:
                marker.ok = True
                marker.done.set()
                return marker
            self._markers += 1
            self._queue.put(marker)
        self._wake.set()
        return marker

    # --- accounting (any thread) -----------------------------------------------------------------

    def _count(self, reason: str, n: int = 1, held: bool = False) -> None:
        with self._lock:
            self._unreported[(self._version, reason)] += n
            if held:
                self._held -= n

    def _delivered(self, _result: object = None) -> None:
        with self._lock:
            self._in_flight -= 1
            recovered, self._offline = self._offline, False
        if recovered:
            log.debug("telemetry: the sink is reachable again")

    def _failed(self, error: object = None) -> None:
        with self._lock:
            if self._closed:  # already counted unsent_at_exit
                return
            self._in_flight -= 1
            self._unreported[(self._version, SEND_FAILED)] += 1
        self._unreachable(error)

    def _unreachable(self, error: object = None) -> None:
        """The sink cannot take or deliver records: an outage begins, unless one is under way."""
        with self._lock:
            first, self._offline = not self._offline, True
        if first:
            log.warning("Kern telemetry cannot deliver to its collector; it retries quietly in the background "
                        "and drops (and counts) what does not fit its queue. KERN_TELEMETRY=false turns "
                        "telemetry off.")
            log.debug("telemetry: the sink is unavailable: %r", error)

    def _reported(self, version: Optional[str], counts: dict, _result: object = None) -> None:
        with self._lock:
            self._unreported.subtract({(version, reason): n for reason, n in counts.items()})
            for key in [key for key, n in self._unreported.items() if n <= 0]:
                del self._unreported[key]

    # --- the worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            claimed = ledger.claim()
            with self._lock:
                self._unreported.update(claimed)
            self._serve()
        except Exception:  # noqa: BLE001 - a bug here must never reach the host: telemetry just stops
            log.debug("telemetry: the worker failed and stopped", exc_info=True)
        finally:
            channel, self._channel = self._channel, None
            if channel is not None:
                try:
                    channel.close()
                except Exception:  # noqa: BLE001
                    log.debug("telemetry: closing the sink failed", exc_info=True)

    def _serve(self) -> None:
        next_report = monotonic() + self._report_interval
        while not self._closed:
            events, marker = self._take(max(0.0, next_report - monotonic()))
            if events:
                self._deliver(self._encoded(events))
            if monotonic() >= next_report:
                self._report()
                next_report = monotonic() + self._report_interval
            if marker is not None:
                self._complete(marker)
                if marker.final:
                    return

    def _take(self, timeout: float) -> tuple:
        """Up to BATCH_SIZE events, waiting up to `timeout` for the first; stops at a marker."""
        events: list = []
        marker = None
        try:
            item = self._queue.get(timeout=timeout)
            while True:
                if type(item) is _Marker:
                    marker = item
                    break
                events.append(item)
                if len(events) == BATCH_SIZE:
                    break
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            self._held += len(events)
            if marker is not None:
                self._markers -= 1
        return events, marker

    def _encoded(self, events: list) -> list:
        records = []
        for event in events:
            record = _encode(event).encode()
            if len(record) > MAX_EVENT_BYTES:
                self._count(OVERSIZED, held=True)
            else:
                records.append(record)
        return records

    def _open(self) -> Channel:
        if self._channel is None:
            self._channel = self._sink.open()
        return self._channel

    def _deliver(self, records: list) -> None:
        """Hand records to the channel; while it cannot take them, pause with backoff and try again."""
        while records and not self._closed:
            if self._in_flight >= MAX_IN_FLIGHT:  # let the channel drain first
                self._pause(_IN_FLIGHT_PAUSE)
                continue
            try:
                taken = self._open().send(records, self._delivered, self._failed)
            except Exception:  # noqa: BLE001 - a sink failing in a way it does not classify: drop the batch
                log.debug("telemetry: the sink failed; %d events dropped", len(records), exc_info=True)
                self._count(SEND_FAILED, len(records), held=True)
                return
            with self._lock:
                self._held -= taken
                self._in_flight += taken
            records = records[taken:]
            if not records:
                self._backoff.reset()
            elif self._channel.retry_after == math.inf:
                return self._stop()
            else:
                self._unreachable()
                self._pause(max(self._backoff.delay(), self._channel.retry_after))

    def _stop(self) -> None:
        """The sink asked never to be sent to again: telemetry turns off as an opt-out would. What is held,
        queued or unreported is discarded uncounted (the collector wants nothing more, client reports
        included), nothing is left for a later process, and captures from now on do nothing."""
        log.info("Kern telemetry: the collector asked this client to stop sending; telemetry is off for "
                 "the rest of this process")
        with self._lock:
            self._stopped = self._closed = True
            self._unreported.clear()
            self._held = self._in_flight = 0
        while True:  # release whoever waits on a flush or close marker
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if type(item) is _Marker:
                item.ok = True
                item.done.set()

    def _pause(self, seconds: float) -> None:
        if self._wake.wait(seconds):
            self._wake.clear()

    def _report(self) -> None:
        """Send the drops not yet reported as client reports, one per SDK version. Best effort: what
        the sink does not acknowledge stays unreported, for the next report or the ledger at exit."""
        with self._lock:
            unreported = list(self._unreported.items())
        if not unreported or self._offline:
            return
        by_version: dict = {}
        for (version, reason), n in unreported:
            by_version.setdefault(version, {})[reason] = n
        for version, counts in by_version.items():
            record = _encode(payloads.report_event(counts, version)).encode()
            try:
                self._open().send([record], functools.partial(self._reported, version, counts), self._unreachable)
            except Exception:  # noqa: BLE001 - the counts stay unreported
                log.debug("telemetry: sending a client report failed", exc_info=True)

    def _complete(self, marker: _Marker) -> None:
        """A flush or close marker: everything before it was handed over; wait for the channel."""
        if marker.final:
            self._report()
        try:
            marker.ok = self._channel is None or self._channel.flush(max(0.0, marker.deadline - monotonic()))
        except Exception:  # noqa: BLE001
            log.debug("telemetry: flushing the sink failed", exc_info=True)
        marker.done.set()
