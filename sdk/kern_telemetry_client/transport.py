"""The machinery behind the capture calls: one bounded queue, one worker thread, the account of what became
of every event, and a pluggable sink that does the sending.

The caller's thread only puts a small dict into the queue (no lock, no I/O, no encoding); a full queue
drops the event and counts it. The worker takes batches of up to BATCH_SIZE, runs the host's `before_send`
hook on each event (if any), JSON-encodes them and hands them to the sink's channel, which sends on its
own terms (Kafka: kafka-python's I/O thread; HTTP: one POST per batch) and reports each record delivered
or failed. While the sink cannot take records the worker keeps its batch, waits with exponential backoff,
lengthened to what the channel asks for (an HTTP Retry-After), logs one warning per outage, then stays
quiet, and lets the queue absorb, then drop and count, what comes meanwhile. A channel that asks to wait
forever (an HTTP collector's "stop sending") turns telemetry off for the rest of the process.

Every event is, at any moment, in exactly one place: the queue, the worker's hands (`_held`), in flight
(`_in_flight`: from when the channel says a batch is leaving until the sink settles each record), or
settled: delivered, or dropped for one reason. `close` settles the rest for good: what never left is
`unsent_at_exit`, what was in flight `unknown_at_exit` (it may or may not have arrived), and nothing moves
after that, whatever the sink reports later. So each event is counted once, and the counts never exceed
what was captured.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import logging
import math
import queue
import random
import threading
import warnings
from collections import Counter
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Callable, Optional, Protocol

from . import contract, ledger, payloads

log = logging.getLogger(__name__)

Event = dict[str, Any]
#: `before_send(event) -> event or None`: see `Telemetry`.
BeforeSend = Callable[[Event], Optional[Event]]

# What becomes of an event: delivered, dropped for a reason, or unknown (in flight when close gave up).
DELIVERED = "delivered"
QUEUE_FULL = "queue_full"  # captured while the queue was full
SEND_FAILED = "send_failed"  # refused, unacknowledged, or the sink failed
OVERSIZED = "oversized"  # larger than MAX_EVENT_BYTES encoded
UNSENT_AT_EXIT = "unsent_at_exit"  # never left the client before close gave up
BEFORE_SEND = "before_send"  # the host's hook vetoed it, raised, or returned what cannot be sent
STOPPED = "stopped"  # discarded when the collector asked this client to stop sending
UNKNOWN_AT_EXIT = "unknown_at_exit"
#: Why the client drops events (`Stats.dropped`).
REASONS = (QUEUE_FULL, SEND_FAILED, OVERSIZED, UNSENT_AT_EXIT, BEFORE_SEND, STOPPED)
#: What client reports (and the ledger) carry: the outcomes the contract names. The others are counted in
#: `stats()` only (`stopped`: the collector wants nothing more, reports included).
REPORTED = frozenset(contract.DROP_REASONS)

#: Names the worker thread; sinks name their own threads with it too (see `kafka_sink`), which is how
#: records their libraries log, and warnings they raise, on them are told apart from the host's.
THREAD_NAME = "kern-telemetry-client"
BATCH_SIZE = 100  # events per hand-over (and per request for a batching sink)
MAX_EVENT_BYTES = 64 * 1024  # what the pipeline accepts (KERN_MAX_EVENT_BYTES); ours are ~1 KB
MAX_IN_FLIGHT = 10_000  # records handed to the channel and not yet settled: its buffer is bounded too
_IN_FLIGHT_PAUSE = 0.05

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def on_own_thread() -> bool:
    """Whether the running thread is this client's (its worker, or a thread its sink's library runs)."""
    return threading.current_thread().name.startswith(THREAD_NAME)


class _OwnThreads(type):
    def __subclasscheck__(cls, subclass: type) -> bool:
        try:
            return issubclass(subclass, Warning) and on_own_thread()
        except Exception:  # noqa: BLE001 - late in interpreter shutdown: never raise from a warning
            return False


class OwnThreadWarning(Warning, metaclass=_OwnThreads):
    """In a warnings filter, matches every warning raised on this client's threads, and no other.

    kafka-python's import raises hundreds of DeprecationWarnings, so under `-W error` it failed, and under
    `-X dev` they reached the host's stderr. `warnings.catch_warnings` is process-wide (not thread-safe)
    and a filter by module misses warnings a library makes the standard library raise; a filter whose
    category is this class ignores what the client's threads raise, whatever the host's filters say about
    its own.
    """


def quiet_own_warnings() -> None:
    """Put the filter first (again: the host may have added filters before it since)."""
    warnings.filterwarnings("ignore", category=OwnThreadWarning)


class Channel(Protocol):
    """A sink's open connection, used by the worker thread only."""

    #: Read after a `send` that did not take every record: how long the sink asks to wait before the next
    #: try (an HTTP Retry-After; 0: the transport's backoff decides alone). `math.inf`: never send again.
    retry_after: float

    def send(
        self,
        records: list[bytes],
        delivered: Callable[[object], None],
        failed: Callable[[object], None],
        sending: Callable[[], None] = ...,
    ) -> int:
        """Take records for sending; return how many were taken (the rest: the sink cannot take them
        now, try again later). Each taken record gets exactly one call, from any thread, possibly before
        `send` returns: `delivered(result)` or `failed(error)`. Raising means no record was taken. Call
        `sending()` once before the first record leaves (after connecting, before any other callback):
        until then, the batch counts as never sent (the transport always passes it; a caller with no
        account to keep, as a load generator, need not)."""

    def flush(self, timeout: float) -> bool:
        """Wait until every taken record is settled; False on timeout."""

    def close(self) -> None:
        """Release everything now; records not yet settled are abandoned (the transport counted them)."""


class Sink(Protocol):
    """What the transport sends through: configuration, cheap to build on the caller's thread."""

    def open(self) -> Channel:
        """Called on the worker thread (imports and connections happen there, never on the host's)."""


@dataclass(frozen=True)
class Stats:
    """What became of the events this process captured (`Telemetry.stats()`), at one moment:
    `captured` = `delivered` + the sum of `dropped` + `unknown_at_exit` + `pending`.

    - `delivered`: acknowledged by the broker (Kafka) or the collector (HTTP);
    - `dropped`: by reason (REASONS), never sent or refused, each counted once (of these, only a
      `send_failed` whose acknowledgement was lost may still have arrived);
    - `unknown_at_exit`: in flight when `close` (or interpreter exit) gave up: it may or may not arrive;
    - `pending`: queued or in flight now; 0 once closed.
    """

    captured: int = 0
    delivered: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    unknown_at_exit: int = 0
    pending: int = 0


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
    """A flush or close request, queued behind the events it must see settled. Its future is set once,
    by the worker (or by whoever empties the queue); threads wait on it, an event loop awaits it."""

    __slots__ = ("_done", "deadline", "final")

    def __init__(self, timeout: float, final: bool):
        self.deadline = monotonic() + timeout
        self.final = final
        self._done: concurrent.futures.Future[bool] = concurrent.futures.Future()

    def settle(self, ok: bool) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # an awaiting task gave up on it
            self._done.set_result(ok)

    def wait(self, timeout: float) -> bool:
        try:
            return self._done.result(timeout)
        except concurrent.futures.TimeoutError:
            return False

    async def wait_async(self, timeout: float) -> bool:
        """`wait` for a coroutine: the loop runs on while the worker thread does the waiting."""
        import asyncio  # the host's loop has it imported already; a thread-only host never pays for it

        try:
            return await asyncio.wait_for(asyncio.wrap_future(self._done), timeout)
        except asyncio.TimeoutError:
            return False


class Transport:
    def __init__(
        self,
        sink: Sink,
        sdk_version: str | None,
        capacity: int = 10_000,
        report_interval: float = 60.0,
        backoff: Backoff | None = None,
        before_send: BeforeSend | None = None,
    ):
        self._sink = sink
        self._version = sdk_version
        self._capacity = capacity
        self._report_interval = report_interval
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._encoded: Callable[[Event], bytes | None] = (
            _encoded if before_send is None else functools.partial(_hooked, before_send)
        )
        self._queue: queue.SimpleQueue[Event | _Marker] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the state below; never taken on the capture path unless dropping
        self._taking = threading.Lock()  # held while the worker moves events from the queue to its hands
        self._wake = threading.Event()  # cuts a backoff pause short (flush, close)
        self._outcomes: Counter[str] = Counter()  # delivered, each drop reason, unknown_at_exit
        self._unreported: Counter[tuple[str | None, str]] = Counter()  # (sdk_version, reason) -> drops
        self._markers = 0  # markers in the queue (its size counts them too)
        self._held = 0
        self._in_flight = 0
        self._offline = False
        self._closed = False  # by close, or the sink said stop sending: nothing moves any more
        # the final marker is done: the worker closes its channel, and closing kafka-python's producer fails
        # what is still in flight; those are unknown_at_exit (`_end`), not send_failed
        self._exiting = False
        self._channel: Channel | None = None
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    # --- the caller's side ----------------------------------------------------------------------

    def put(self, event: Event) -> None:
        """Enqueue an event; a full queue drops it (counted). Never blocks."""
        if self._closed:
            return
        if self._queue.qsize() < self._capacity:
            self._queue.put(event)
        else:
            with self._lock:
                self._count(QUEUE_FULL, 1)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s until every event put before the call is settled."""
        return self._mark(timeout, final=False).wait(timeout)

    async def aflush(self, timeout: float) -> bool:
        return await self._mark(timeout, final=False).wait_async(timeout)

    def close(self, timeout: float) -> None:
        """Deliver what is queued within `timeout` s (no wait at all during a known outage), then stop
        and count what is left (see `_end`)."""
        deadline = monotonic() + timeout
        marker = self._mark(timeout, final=True)  # it also wakes a worker waiting for events
        if self._thread.is_alive() and not self._offline and marker.wait(timeout):
            self._thread.join(max(0.0, deadline - monotonic()))  # it closes its channel
        self._end()

    async def aclose(self, timeout: float) -> None:
        """`close` for a coroutine: the wait does not block the event loop (the worker closes its channel
        in the background)."""
        marker = self._mark(timeout, final=True)
        if self._thread.is_alive() and not self._offline:
            await marker.wait_async(timeout)
        self._end()

    def stats(self) -> Stats:
        with self._lock:
            outcomes = self._outcomes.copy()
            # a marker the worker is taking is briefly out of the queue and still counted: hence the max
            pending = max(0, self._queue.qsize() - self._markers) + self._held + self._in_flight
        delivered, unknown = outcomes[DELIVERED], outcomes[UNKNOWN_AT_EXIT]
        dropped = {reason: outcomes[reason] for reason in REASONS}
        return Stats(delivered + sum(dropped.values()) + unknown + pending, delivered, dropped, unknown, pending)

    def _mark(self, timeout: float, final: bool) -> _Marker:
        marker = _Marker(timeout, final)
        with self._lock:  # queued under the lock: `_empty_queue` settles every marker queued before it
            if self._closed:
                marker.settle(True)  # every event is accounted for
                return marker
            self._markers += 1
            self._queue.put(marker)
        self._wake.set()
        return marker

    def _end(self) -> None:
        """Settle for good what is not settled yet: in the queue or the worker's hands, `unsent_at_exit`;
        in flight, `unknown_at_exit`. Every drop not reported by then goes to the ledger."""
        with self._taking, self._lock:  # no event is between the queue and the worker's hands
            if self._closed:
                return
            self._closed = True
            self._count(UNSENT_AT_EXIT, self._held + self._empty_queue())
            self._count(UNKNOWN_AT_EXIT, self._in_flight)
            self._held = self._in_flight = 0
            leftover = +self._unreported
        self._wake.set()  # a worker still pausing sees `_closed` and stops
        ledger.save(leftover)

    # --- accounting (any thread) -----------------------------------------------------------------

    def _count(self, outcome: str, n: int) -> None:
        """Count n events (the lock held)."""
        if n:
            self._outcomes[outcome] += n
            if outcome in REPORTED:
                self._unreported[(self._version, outcome)] += n

    def _settle(self, n: int, reason: str, held: bool = False) -> bool:
        """n events in the worker's hands (`held`) or in flight are dropped for `reason`. Nothing moves
        once closed (it counted them): then False."""
        with self._lock:
            if self._closed:
                return False
            if held:
                self._held -= n
            else:
                self._in_flight -= n
            self._count(reason, n)
        return True

    def _leave(self, n: int) -> None:
        """n events go from the worker's hands to in flight (negative: back)."""
        with self._lock:
            if not self._closed:
                self._held -= n
                self._in_flight += n

    def _empty_queue(self) -> int:
        """Take every item out of the queue (the lock held), settling the markers; the events' number."""
        events = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                self._markers = 0
                return events
            if isinstance(item, _Marker):
                item.settle(True)
            else:
                events += 1

    def _delivered(self, _result: object = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._in_flight -= 1
            self._outcomes[DELIVERED] += 1
            recovered, self._offline = self._offline, False
        if recovered:
            log.debug("telemetry: the sink is reachable again")

    def _failed(self, error: object = None) -> None:
        if not self._exiting and self._settle(1, SEND_FAILED):
            self._unreachable(error)

    def _unreachable(self, error: object = None) -> None:
        """The sink cannot take or deliver records: an outage begins, unless one is under way."""
        with self._lock:
            first, self._offline = not self._offline, True
        if first:
            log.warning(
                "Kern telemetry cannot deliver to its collector; it retries quietly in the background "
                "and drops (and counts) what does not fit its queue. KERN_TELEMETRY=false turns "
                "telemetry off."
            )
            log.debug("telemetry: the sink is unavailable: %r", error)

    def _reported(self, version: str | None, counts: dict[str, int], _result: object = None) -> None:
        with self._lock:
            self._unreported.subtract({(version, reason): n for reason, n in counts.items()})
            for key in [key for key, n in self._unreported.items() if n <= 0]:
                del self._unreported[key]

    # --- the worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            quiet_own_warnings()
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
                except Exception:  # noqa: BLE001 - whatever a sink raises on close stays here
                    log.debug("telemetry: closing the sink failed", exc_info=True)

    def _serve(self) -> None:
        next_report = monotonic() + self._report_interval
        while not self._closed:
            events, marker = self._take(max(0.0, next_report - monotonic()))
            if events:
                self._deliver(self._records(events))
            if monotonic() >= next_report:
                self._report()
                next_report = monotonic() + self._report_interval
            if marker is not None:
                self._complete(marker)
                if marker.final:
                    self._exiting = True
                    return

    def _take(self, timeout: float) -> tuple[list[Event], _Marker | None]:
        """Up to BATCH_SIZE events, waiting up to `timeout` for the first; stops at a marker."""
        events: list[Event] = []
        marker = None
        with self._taking:
            if self._closed:
                return events, marker
            try:
                item = self._queue.get(timeout=timeout)
                while True:
                    if isinstance(item, _Marker):
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

    def _records(self, events: list[Event]) -> list[bytes]:
        """The events encoded (after the before_send hook); those it vetoes and oversized ones are dropped."""
        records: list[bytes] = []
        vetoed = oversized = 0
        for event in events:
            record = self._encoded(event)
            if record is None:
                vetoed += 1
            elif len(record) > MAX_EVENT_BYTES:
                oversized += 1
            else:
                records.append(record)
        if vetoed:
            self._settle(vetoed, BEFORE_SEND, held=True)
        if oversized:
            self._settle(oversized, OVERSIZED, held=True)
        return records

    def _open(self) -> Channel:
        if self._channel is None:
            self._channel = self._sink.open()
        return self._channel

    def _deliver(self, records: list[bytes]) -> None:
        """Hand records to the channel; while it cannot take them, pause with backoff and try again."""
        while records and not self._closed:
            if self._in_flight >= MAX_IN_FLIGHT:  # let the channel drain first
                self._pause(_IN_FLIGHT_PAUSE)
                continue
            left = False

            def sending(n: int = len(records)) -> None:
                nonlocal left
                left = True
                self._leave(n)

            try:
                channel = self._open()
                taken = channel.send(records, self._delivered, self._failed, sending)
            except Exception:  # noqa: BLE001 - a sink failing in a way it does not classify: drop the batch
                log.debug("telemetry: the sink failed; %d events dropped", len(records), exc_info=True)
                self._settle(len(records), SEND_FAILED, held=not left)
                return
            if left:
                self._leave(taken - len(records))  # what the channel did not take is back in hand
            records = records[taken:]
            if not records:
                self._backoff.reset()
            elif channel.retry_after == math.inf:
                return self._stop()
            else:
                self._unreachable()
                self._pause(max(self._backoff.delay(), channel.retry_after))

    def _stop(self) -> None:
        """The sink asked never to be sent to again: telemetry turns off as an opt-out would. What is held,
        queued or unreported is discarded (counted `stopped` in `stats()` only: the collector wants nothing
        more, client reports included), nothing is left for a later process, and captures from now on do
        nothing."""
        log.info(
            "Kern telemetry: the collector asked this client to stop sending; telemetry is off for "
            "the rest of this process"
        )
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._count(STOPPED, self._held + self._in_flight + self._empty_queue())
            self._held = self._in_flight = 0
            self._unreported.clear()

    def _pause(self, seconds: float) -> None:
        if self._wake.wait(seconds):
            self._wake.clear()

    def _report(self) -> None:
        """Send the drops not yet reported as client reports, one per SDK version. Best effort: what
        the sink does not acknowledge stays unreported, for the next report or the ledger at exit."""
        with self._lock:
            unreported = list(self._unreported.items())
        if not unreported or self._offline or self._closed:
            return
        by_version: dict[str | None, dict[str, int]] = {}
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
        ok = False
        try:
            ok = self._channel is None or self._channel.flush(max(0.0, marker.deadline - monotonic()))
        except Exception:  # noqa: BLE001 - whatever a sink raises on flush: the flush reports failure
            log.debug("telemetry: flushing the sink failed", exc_info=True)
        marker.settle(ok)


def _encoded(event: Event) -> bytes | None:
    return _encode(event).encode()


def _hooked(before_send: BeforeSend, event: Event) -> bytes | None:
    """The record of what the host's `before_send` made of an event: None when it returned None (a veto),
    anything but a dict, a dict JSON cannot encode, or raised."""
    try:
        changed = before_send(event)
        return _encode(changed).encode() if isinstance(changed, dict) else None
    except Exception:  # noqa: BLE001 - the host's hook must never break the client, nor the client the host
        log.debug("telemetry: before_send raised; the event is dropped", exc_info=True)
        return None
