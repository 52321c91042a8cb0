"""The collector's connections: a cap below the open-file limit, idle connections closed first, and room
kept for `/health` and `/metrics`.

The cap is KERN_COLLECTOR_MAX_CONNECTIONS, lowered to the process's open-file limit (the soft
RLIMIT_NOFILE, read at start) less FD_RESERVE descriptors: twice the listen backlog (asyncio accepts up to
BACKLOG connections at a time before they are counted, and the ones closed to make room for them close a
moment later) and 64 for the process's own (the broker's connections, the log, the event loop: about 20).
So accept() never runs out of descriptors: at the limit asyncio logs an error for every connection it
cannot accept and stops accepting for a second, `/health` included. With the common limit of 1,024:
704 connections.

At the cap a new connection closes the oldest ones without a request in progress (idle between
requests, or their headers still incomplete; counted in `kern_collector_connections_evicted_total`):
connections that only wait shut no one out. Requests in progress never fill the cap: a POST is answered
503 `busy` when fewer than ROOM connections would be left free of requests (`crowded`), so there are
always idle ones to close, and a connection for `/health` always gets in.

Each connection is read READ_BYTES at a time, and aiohttp buffers at most twice its read buffer
(`read_bufsize`, READ_BYTES too) of a body before it stops reading that connection, so a connection
holds at most 3 × READ_BYTES of a body not yet handed to the collector: 33 MiB for 704 connections. With
asyncio's 256 KiB per read, a loop that fell behind read 256 KiB from every sender at once before any
handler ran (growths of 123 and 129 MiB under 300 withheld bodies in two CI runs; 42-48 MiB since).
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Awaitable, Callable

from aiohttp import web

from collector.metrics import CollectorMetrics

BACKLOG = 128  # aiohttp's default
FD_RESERVE = 2 * BACKLOG + 64
ROOM = 16  # connections kept free of POSTs, for /health, /metrics and the next connection
READ_BYTES = 16 << 10  # a read from a connection, and aiohttp's read buffer (64 KiB by default)


def connection_cap(wanted: int) -> int:
    """The cap: `wanted`, at most the open-file limit less FD_RESERVE."""
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = wanted if open_files == resource.RLIM_INFINITY else min(wanted, open_files - FD_RESERVE)
    if cap <= 2 * ROOM:
        raise ValueError(
            f"an open-file limit of {open_files} leaves {cap} connections: raise it (ulimit -n) "
            f"above {FD_RESERVE + 2 * ROOM}"
        )
    return cap


class Connections:
    _server: web.Server  # the runner's, once `site` is asked

    def __init__(self, cap: int, metrics: CollectorMetrics):
        self.cap = cap
        self.metrics = metrics
        metrics.connection_cap.set(cap)
        self.busy: set[web.RequestHandler] = set()  # connections with a request in progress

    def site(self, runner: web.AppRunner, host: str, port: int) -> web.BaseSite:
        """Where the runner's server takes connections through the cap."""
        if runner.server is None:
            raise RuntimeError("set the runner up before asking for its site")
        self._server = runner.server
        self.metrics.connections.set_function(lambda: len(self._open()))
        return _Site(runner, host, port, self._protocol)

    def crowded(self) -> bool:
        """Too few connections are free of requests for one more POST."""
        return len(self.busy) > self.cap - ROOM

    @web.middleware
    async def track(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Marks the connection busy until its answer is written (aiohttp writes it without yielding, once
        the handler returns)."""
        connection = request.protocol
        self.busy.add(connection)
        try:
            return await handler(request)
        finally:
            self.busy.discard(connection)

    def _protocol(self) -> asyncio.Protocol:
        """aiohttp's protocol for a new connection, after closing the oldest idle ones beyond the cap.

        The connections accepted together (up to BACKLOG) are counted once made, after the last of them
        came here: a burst can pass the cap, and the next connection closes idle ones until it is back
        under (FD_RESERVE leaves room for that)."""
        if len(self._server.connections) >= self.cap:
            open_ = self._open()
            idle = [connection for connection in open_ if connection not in self.busy][: len(open_) + 1 - self.cap]
            for connection in idle:
                connection.force_close()
            self.metrics.connections_evicted.inc(len(idle))
        return _ReadInSmallPieces(self._server())

    def _open(self) -> list[web.RequestHandler]:
        """Oldest first. aiohttp forgets a closed connection only when its handler's task ends (after a
        lingering close, up to 10 s later)."""
        return [connection for connection in self._server.connections if connection.transport is not None]


class _ReadInSmallPieces(asyncio.Protocol):
    """aiohttp's connection, with its transport reading READ_BYTES at a time."""

    __slots__ = ("handler",)

    def __init__(self, handler: web.RequestHandler):
        self.handler = handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.max_size = READ_BYTES  # type: ignore[attr-defined]  # asyncio's selector transport's recv size
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> None:
        self.handler.eof_received()  # None: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


class _Site(web.BaseSite):
    """aiohttp's TCP site, with `protocol` making its connections instead of the server itself."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, protocol: Callable[[], asyncio.Protocol]):
        super().__init__(runner, backlog=BACKLOG)
        self._host, self._port, self._protocol = host, port, protocol

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol, self._host, self._port, backlog=self._backlog
        )
