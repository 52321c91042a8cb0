"""The Kafka sink: hands encoded events to kafka-python, whose own I/O thread batches, compresses and
sends them. kafka-python is imported, and its producer built, on the worker thread at the first event.

Producer settings (PRODUCER_DEFAULTS) and why:

- `api_version` pinned: without it the constructor probes the broker for up to 30 s (and then raises).
- `max_block_ms` 1 s: `send()` otherwise waits up to 60 s for metadata while the broker is unreachable;
  with it, the worker learns of an outage within a second and backs off.
- no message key: nothing in Kafka identifies anyone, and keyless records spread over the partitions.
- gzip compression (standard library only). Without the optional `crc32c` package (the `fast` extra)
  kafka-python computes record CRCs in pure Python on its I/O thread: compressed batches are smaller,
  so that costs less; `make bench-sdk` measures both.
- at most once: `acks=all`, no retries, no idempotence. A record the broker does not acknowledge is
  counted `send_failed`, never sent again, so no event reaches the topic twice. (kafka-python 3.0.12's
  idempotent producer resets its producer id when batches expire during an outage, and here, in about
  one run in thirty, never asked for a new one once the broker was back: its records then waited
  forever, neither delivered nor failed.)
- `batch_size` 256 KiB: with kafka-python's 16 KiB, a burst queues several batches per partition, and
  then every `send()` wakes the I/O thread through a socket (measured: 41 -> 15 µs CPU per event).
- metrics off: per-record sensor updates cost CPU that nobody here reads.

A batch leaves (`sending`, for the transport's account) once the producer knows the topic's partitions:
while the broker is unreachable, `partitions_for` waits up to `max_block_ms` for them and the batch has
not left, so a close during that wait counts it unsent, not unknown.

Keeping kafka-python's noise out of the host:

- its records logged on this client's threads (the worker, and the producer's I/O thread, named after
  the client id) are dropped by a filter on the `kafka.*` loggers; records it logs on any other thread
  (the host's own kafka-python use) pass untouched; the warnings it raises there (hundreds of
  DeprecationWarnings at import) are ignored whatever the host's filters (`transport.OwnThreadWarning`);
- its `atexit` hook (a close that flushes for 1 s and silences its module's logger) is unregistered and
  its `__del__` (the same close) disabled: the transport's exit deadline decides instead;
- a socket whose connection failed is closed (`_closing_sockets`): kafka-python 3.0.12 leaves it to the
  garbage collector, whose ResourceWarning, on whatever thread collects it or at exit, reached the host's
  stderr under `-X dev` while the broker was down.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Callable

from .transport import THREAD_NAME, on_own_thread

if TYPE_CHECKING:
    import socket

DEFAULT_TOPIC = "kern.telemetry.events"

PRODUCER_DEFAULTS: dict[str, Any] = {
    "api_version": (2, 8),
    "max_block_ms": 1_000,
    "request_timeout_ms": 10_000,
    "delivery_timeout_ms": 60_000,  # a record not acknowledged by then fails: counted send_failed
    "reconnect_backoff_max_ms": 5_000,
    "linger_ms": 50,
    "batch_size": 256 * 1024,
    "compression_type": "gzip",
    "acks": "all",
    "retries": 0,
    "enable_idempotence": False,
    "metrics_enabled": False,
}

# Held while kafka-python is imported and the producer built. A fork waits for it: a child forked in
# the middle of that import would inherit module locks held by a thread it does not have, and its own
# worker would wait for them forever.
_IMPORTING = threading.Lock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_IMPORTING.acquire, after_in_parent=_IMPORTING.release, after_in_child=_IMPORTING.release
    )


class _OwnThreads(logging.Filter):
    """Drops records made on this client's threads: the host's logs stay the host's. (The filter runs on
    the thread that logs; `record.threadName` is None when the host turned `logging.logThreads` off.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        return not on_own_thread()


_OWN_THREADS = _OwnThreads()


def _quiet_kafka_loggers() -> int:
    """Put the filter on every `kafka.*` logger (a logger filter applies to the records made on that
    logger, so each one needs it). Returns the number of loggers seen, to notice new ones cheaply."""
    loggers = logging.root.manager.loggerDict
    for logger_name, logger in list(loggers.items()):
        if isinstance(logger, logging.Logger) and (logger_name == "kafka" or logger_name.startswith("kafka.")):
            logger.addFilter(_OWN_THREADS)  # a no-op when it has it already
    return len(loggers)


@functools.cache
def _producer_class() -> type:
    from kafka import KafkaProducer

    class Producer(KafkaProducer):  # type: ignore[misc]  # kafka-python has no type hints
        def __del__(self) -> None:
            """kafka-python's closes with a 1 s flush (raising at exit when the broker is gone) and replaces
            its module's logger for every producer in the process; this client closes explicitly."""

    return Producer


@functools.cache
def _closing_sockets() -> dict[str, Any]:
    """Producer options under which a socket that failed to connect is closed at once. kafka-python's one
    hook on how its sockets connect is the scheme registry of `proxy_url`: this client's scheme names a
    direct connection that closes its socket on failure. A `proxy_url` of the host's own wins."""
    try:
        from kafka.net.inet import KafkaNetSocket
    except ImportError:  # a kafka-python without this layer
        return {}

    class ClosingSocket(KafkaNetSocket):  # type: ignore[misc]  # kafka-python has no type hints
        SCHEMES = (THREAD_NAME,)

        async def sock_connect(self, net: Any, sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().sock_connect(net, sock, *args, **kwargs)
            except BaseException:
                sock.close()
                raise

    return {"proxy_url": f"{THREAD_NAME}://"}


class KafkaSink:
    """Kafka as the transport's sink: `bootstrap_servers` ("host:port,..."), the events topic, and any
    kafka-python producer options (security_protocol, sasl_*, ssl_context, ...) over PRODUCER_DEFAULTS."""

    def __init__(self, bootstrap_servers: str, topic: str = DEFAULT_TOPIC, **producer_options: Any):
        self.topic = topic
        self.options = {
            **PRODUCER_DEFAULTS,
            **producer_options,
            "bootstrap_servers": bootstrap_servers.split(","),
            "client_id": THREAD_NAME,
        }

    def open(self) -> _KafkaChannel:
        with _IMPORTING:
            from kafka.errors import KafkaTimeoutError

            producer_class = _producer_class()
            loggers = _quiet_kafka_loggers()
            producer = producer_class(**{**_closing_sockets(), **self.options})
        producer._unregister_cleanup()  # its atexit close: see the module docstring
        return _KafkaChannel(producer, self.topic, KafkaTimeoutError, loggers)


class _KafkaChannel:
    retry_after = 0.0  # the broker never asks for a pause: the transport's backoff alone decides

    def __init__(self, producer: Any, topic: str, timeout_error: type[Exception], loggers: int):
        self._producer = producer
        self._topic = topic
        self._timeout_error = timeout_error
        self._loggers = loggers

    def send(
        self,
        records: list[bytes],
        delivered: Callable[[object], None],
        failed: Callable[[object], None],
        sending: Callable[[], None] = lambda: None,
    ) -> int:
        if len(logging.root.manager.loggerDict) != self._loggers:  # kafka-python imported a module lazily
            self._loggers = _quiet_kafka_loggers()
        send, topic = self._producer.send, self._topic
        try:
            self._producer.partitions_for(topic)  # the broker's metadata: at once once known
        except self._timeout_error:  # none within max_block_ms: the broker is unreachable
            return 0
        sending()
        for taken, record in enumerate(records):
            try:
                future = send(topic, record)
            except self._timeout_error:  # no metadata within max_block_ms: the broker is unreachable
                return taken
            except Exception as error:  # noqa: BLE001 - refused by kafka-python (a closed producer, an unwritable topic)
                failed(error)
                continue
            future.add_callback(delivered)
            future.add_errback(failed)
        return len(records)

    def flush(self, timeout: float) -> bool:
        try:
            self._producer.flush(timeout)
        except self._timeout_error:
            return False
        return True

    def close(self) -> None:
        try:
            self._producer.close(timeout=0)
        except self._timeout_error:
            # Records still unacknowledged: kafka-python's close() flushes first and raises before it
            # stops its I/O thread. This is the stop it would reach after a join timeout.
            self._producer._sender.force_close()
