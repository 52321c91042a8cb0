"""The HTTP sink: posts batches to a Kern telemetry collector (`kern-telemetry collect`), for SDKs that
cannot reach Kafka. Standard library only; the connection is made on the worker thread and kept alive.

One `send` is one POST to `<url>/v1/events` of up to BATCH_SIZE events: NDJSON, gzip'd. What each answer
means (the collector's contract, in the project README's "The HTTP collector") and what the sink does:

- 2xx (202): the broker acknowledged every event: delivered.
- 429, 503: nothing of the batch was written: kept; the transport waits at least `Retry-After` (capped at
  an hour), then it is posted again.
- 410: stop sending: telemetry turns off for the rest of the process (`Transport._stop`).
- no connection (refused, DNS, TLS, connect timeout), or the request could not be written: nothing was
  sent: kept; the transport backs off.
- any other status (413, 504, ...), or no answer once the request went out: refused, or the outcome is
  unknown: every event is counted `send_failed`, never posted again.

So the client posts an event at most once: only answers that say nothing was written lead to a retry.
A batch whose answer was lost may still have reached Kafka; it is counted as failed (an over-count of
drops, never a duplicate). Before reusing an idle connection the sink checks that the server has not
closed it, so a keep-alive timeout is a reconnect, not a lost answer. A batch leaves (`sending`, for the
transport's account) once connected, just before the request is written.

Proxies, as urllib has them (`urllib.request.getproxies` and `proxy_bypass`: `HTTPS_PROXY`, `HTTP_PROXY`,
`NO_PROXY`, or the system's settings on macOS and Windows): an https collector is reached through a CONNECT
tunnel (TLS end to end, the collector's certificate verified), an http one by asking the proxy for the
absolute URL; `user:password@` in the proxy URL is sent as `Proxy-Authorization: Basic`.

`http.client`, `ssl`, `gzip`, `urllib.request` and `email.utils` are imported on the worker thread, when
the channel opens: importing the package stays cheap for the host.
"""

from __future__ import annotations

import contextlib
import math
import time
import urllib.parse
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import http.client
    import ssl

PATH = "/v1/events"
HEADERS = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip", "User-Agent": "kern-telemetry-client"}
CONNECT_TIMEOUT = 5.0  # seconds to connect (TLS handshake included); nothing was sent when it runs out
MAX_RETRY_AFTER = 3600.0
GZIP_LEVEL = 1  # the host's CPU matters more than the last 20% of a small body


class HttpSink:
    """A collector as the transport's sink: its base URL (`https://telemetry.example.com`), an optional bearer
    `token` (private deployments), `timeout` (seconds to wait for an answer; the collector answers within its
    KERN_COLLECTOR_ACK_TIMEOUT_SECONDS, 5 s by default) and an `ssl_context` for https (default: the system's
    CA store, verified). Proxies: see the module's docstring."""

    def __init__(
        self, url: str, *, token: str | None = None, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
    ):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an http:// or https:// URL is needed, not {url!r}")
        self.url = url
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path.rstrip("/") + PATH
        self._headers = dict(HEADERS, **({"Authorization": f"Bearer {token}"} if token else {}))
        self._ssl_context = ssl_context

    def open(self) -> _HttpChannel:
        import http.client
        import urllib.request

        path, headers = self._path, self._headers
        address = (self._host, self._port)
        tunnel: tuple[str, int, dict[str, str]] | None = None
        proxy = (
            None
            if urllib.request.proxy_bypass(self._host)
            else urllib.request.getproxies().get("https" if self._https else "http")
        )
        if proxy:
            address, authorization = _proxy(proxy)
            if self._https:  # CONNECT: the proxy sees the collector's host and port, never the requests
                tunnel = (self._host, self._port, authorization)
            else:
                host = f"[{self._host}]" if ":" in self._host else self._host  # an IPv6 address
                path, headers = f"http://{host}:{self._port}{path}", {**headers, **authorization}

        def connect() -> http.client.HTTPConnection:
            if self._https:
                connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                    *address, timeout=CONNECT_TIMEOUT, context=self._ssl_context
                )
            else:
                connection = http.client.HTTPConnection(*address, timeout=CONNECT_TIMEOUT)
            if tunnel is not None:
                connection.set_tunnel(*tunnel)
            return connection

        return _HttpChannel(connect, path, headers, self.timeout)


def _proxy(url: str) -> tuple[tuple[str, int], dict[str, str]]:
    """A proxy URL's (host, port) (port 80 unless given) and the header of its credentials, if any."""
    import base64

    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    address = (parts.hostname or "", parts.port or 80)
    if parts.username is None:
        return address, {}
    credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return address, {"Proxy-Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


class _HttpChannel:
    def __init__(
        self, connection: Callable[[], http.client.HTTPConnection], path: str, headers: dict[str, str], timeout: float
    ):
        import gzip
        import http.client

        self._compress = gzip.compress
        self._errors = (OSError, http.client.HTTPException)
        self._new_connection = connection
        self._path = path
        self._headers = headers
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None
        self._not_before = 0.0  # monotonic time before which the collector asked not to be sent to
        self.retry_after = 0.0

    def send(
        self,
        records: list[bytes],
        delivered: Callable[[object], None],
        failed: Callable[[object], None],
        sending: Callable[[], None] = lambda: None,
    ) -> int:
        wait = self._not_before - time.monotonic()
        if wait > 0:  # woken early (a flush): the collector's Retry-After still holds
            self.retry_after = wait
            return 0
        self.retry_after = 0.0
        body = self._compress(b"\n".join(records), GZIP_LEVEL)
        try:
            connection = self._connected()
            sending()
            connection.request("POST", self._path, body, self._headers)
        except self._errors:  # no connection, or the request did not go out: nothing was written
            self.close()
            return 0
        try:
            response = connection.getresponse()
            response.read()
        except self._errors as error:  # the request went out and no answer came: it may have been written
            self.close()
            return _settle(records, failed, error)
        if response.will_close:
            self.close()
        status = response.status
        if 200 <= status < 300:
            return _settle(records, delivered, status)
        if status in (429, 503):
            self._wait(response.getheader("Retry-After"))
            return 0
        if status == 410:
            self._not_before = self.retry_after = math.inf
            return 0
        return _settle(records, failed, f"HTTP {status}")

    def flush(self, timeout: float) -> bool:
        return True  # `send` returns once its batch is settled

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _connected(self) -> http.client.HTTPConnection:
        import select

        connection = self._connection
        if connection is not None and connection.sock is not None and select.select([connection.sock], [], [], 0)[0]:
            self.close()  # readable while idle: the server closed it (a keep-alive timeout)
            connection = None
        if connection is None:
            connection = self._new_connection()
            connection.connect()
            connection.sock.settimeout(self._timeout)
            self._connection = connection
        return connection

    def _wait(self, retry_after: str | None) -> None:
        """Seconds or an HTTP date, capped; absent or unreadable: the transport's backoff alone."""
        import email.utils

        seconds = 0.0
        if retry_after:
            try:
                seconds = float(retry_after)
            except ValueError:
                with contextlib.suppress(TypeError, ValueError):
                    seconds = email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time()
        self.retry_after = min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else 0.0
        self._not_before = time.monotonic() + self.retry_after


def _settle(records: list[bytes], callback: Callable[[object], None], result: object) -> int:
    for _ in records:
        callback(result)
    return len(records)
