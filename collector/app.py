"""The HTTP collector (aiohttp): `POST /v1/events`, `GET /health`, `GET /metrics`. Stateless: run as many
as the load needs, behind any load balancer; each produces to the events topic.

A POST goes through these checks, cheapest first, and is answered by the first that refuses it:
stop sending (410), rate limit (429), bearer token (401), media type (415), declared size (413), broker
state (503), connections free of requests (503 `busy`, `collector/connections.py`), room for the body
in the pending bound (503 `buffer_full`: its declared length, or the largest allowed when chunked, counts
there while it is read); then the body is read (408 after KERN_COLLECTOR_BODY_TIMEOUT_SECONDS, 413 beyond
KERN_COLLECTOR_MAX_BODY_BYTES), gunzipped (400, 413), split into events (400, 413,
`collector/batches.py`) and published as one record batch (503: nothing was written; 504: not
acknowledged in time, `collector/publisher.py`). 202 only once the broker acknowledged it.

Every answer but /health's and /metrics' is counted by status and reason, aiohttp's own (400 to
malformed HTTP, 404, 405) included: aiohttp's access log, per connection, counts instead of logging
(`Collector.runner`). Connections are closed when their headers are not complete in time
(KERN_COLLECTOR_IDLE_TIMEOUT_SECONDS, aiohttp's keep-alive timeout) and capped
(`collector/connections.py`). No answer names the server's software or its versions.

Senders stay unknown: the access log only counts; records logged by aiohttp or asyncio lose their
arguments and exception text (they can carry the peer's address or a request line); the rate limiter
keeps keyed digests; metrics carry no label from a request; a Kafka record is the event's bytes, without
key or headers.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import math
import signal

from aiohttp import web, web_response
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http import HttpProcessingError

from collector.batches import Limits, Refused, events, gunzip, media_type
from collector.connections import READ_BYTES, Connections, connection_cap
from collector.metrics import CONTENT_TYPE, CollectorMetrics
from collector.publisher import BufferFull, NotAcknowledged, Publisher, Unavailable
from collector.ratelimit import RateLimiter
from collector.settings import CollectorSettings
from pipeline.config import Settings

log = logging.getLogger("collector")

EVENTS_PATH, HEALTH_PATH, METRICS_PATH = "/v1/events", "/health", "/metrics"
REASON = web.ResponseKey("reason", str)  # an answer's reason label, when the collector gave one
SERVER = "kern-collector"  # aiohttp's Server header would name Python's and aiohttp's versions


class Collector:
    def __init__(self, settings: CollectorSettings, shared: Settings):
        self.settings = settings
        self.metrics = CollectorMetrics()
        self.limits = Limits(settings.max_batch_bytes, settings.max_batch_events, shared.max_event_bytes)
        self.publisher = Publisher(
            shared, settings.max_batch_bytes, settings.ack_timeout_seconds, settings.max_pending_bytes, self.metrics
        )
        self.limiter = (
            RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst, settings.rate_limit_clients)
            if settings.rate_limit_per_second
            else None
        )
        self._authorization = (
            f"Bearer {settings.auth_token.get_secret_value()}".encode() if settings.auth_token else None
        )
        self._retry_after = {"Retry-After": str(settings.retry_after_seconds)}
        self.connections = Connections(connection_cap(settings.max_connections), self.metrics)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes, middlewares=[self.connections.track])
        app.router.add_post(EVENTS_PATH, self.post_events)
        app.router.add_get(HEALTH_PATH, self.health)
        app.router.add_get(METRICS_PATH, self.exposition)
        app.on_startup.append(lambda _: self.publisher.start())
        app.on_cleanup.append(lambda _: self.publisher.stop())  # after the requests in flight were answered
        return app

    def runner(self) -> web.AppRunner:
        answered = self._answered

        class Answers(AbstractAccessLogger):
            """aiohttp's access log (one per connection): counts each answer instead of logging it."""

            def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
                answered(request, response, time)

        settings = self.settings
        return web.AppRunner(
            self.app(),
            access_log=log,
            access_log_class=Answers,
            auto_decompress=False,
            keepalive_timeout=settings.idle_timeout_seconds,
            read_bufsize=READ_BYTES,
            shutdown_timeout=settings.ack_timeout_seconds + 5,
        )

    def _answered(self, request: web.BaseRequest, response: web.StreamResponse, seconds: float) -> None:
        if request.path not in (HEALTH_PATH, METRICS_PATH):
            reason = response.get(REASON) or response.reason.lower().replace(" ", "_")  # aiohttp's own answers
            self.metrics.requests.labels(str(response.status), reason).inc()
            self.metrics.request_duration.observe(seconds)

    async def post_events(self, request: web.Request) -> web.Response:
        try:
            accepted = await self._accept(request)
        except Refused as refused:
            response = web.json_response(
                {"error": refused.reason, "detail": refused.detail}, status=refused.status, headers=refused.headers
            )
            response[REASON] = refused.reason
            if refused.status == 408:  # the body is still coming: nothing else can follow on this connection
                response.force_close()
            return response
        response = web.json_response({"accepted": accepted}, status=202)
        response[REASON] = "accepted"
        return response

    async def _accept(self, request: web.Request) -> int:
        """The number of events the broker acknowledged, or Refused."""
        settings = self.settings
        if settings.stop_sending:
            raise Refused(410, "stop_sending", "this collector takes no more telemetry: stop sending")
        if self.limiter is not None and (wait := self.limiter.wait(self._client(request))):
            raise Refused(
                429, "rate_limited", "too many requests from this client", {"Retry-After": str(math.ceil(wait))}
            )
        if self._authorization is not None and not hmac.compare_digest(
            request.headers.get("Authorization", "").encode(errors="replace"), self._authorization
        ):
            raise Refused(401, "unauthorized", "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
        encoding = request.headers.get("Content-Encoding", "").lower()
        framing = media_type(request.content_type, encoding)
        if (request.content_length or 0) > settings.max_body_bytes:
            raise self._body_too_large()
        if self.publisher.problem is not None:  # before reading a body it could not publish
            raise Refused(503, "kafka_unavailable", self.publisher.problem, self._retry_after)
        if self.connections.crowded():
            raise Refused(503, "busy", "too many requests are in progress", self._retry_after)
        body = await self._body(request)
        if encoding == "gzip":
            body = gunzip(body, self.limits.batch_bytes)
        batch = events(body, framing, self.limits)
        try:
            await self.publisher.publish(batch, len(body))
        except BufferFull as full:
            raise Refused(503, "buffer_full", str(full), self._retry_after) from None
        except Unavailable as unavailable:
            raise Refused(503, "kafka_unavailable", str(unavailable), self._retry_after) from None
        except NotAcknowledged as error:
            raise Refused(
                504,
                "not_acknowledged",
                f"the broker did not acknowledge the batch in time ({error}); it may or may not have been written",
            ) from None
        self.metrics.events.inc(len(batch))
        return len(batch)

    async def _body(self, request: web.Request) -> bytes:
        """The body as received, read within the body timeout while its size counts in the pending bound."""
        size = self.settings.max_body_bytes if request.content_length is None else request.content_length
        try:
            self.publisher.admit(size)
        except BufferFull as full:
            raise Refused(503, "buffer_full", str(full), self._retry_after) from None
        self.metrics.bodies.inc()
        self.metrics.body_bytes.inc(size)
        timeout = self.settings.body_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                return await request.read()
        except TimeoutError:
            raise Refused(408, "body_timeout", f"the body did not arrive within {timeout:g} s") from None
        except web.HTTPRequestEntityTooLarge:
            raise self._body_too_large() from None
        except ConnectionError:  # no one reads this answer
            raise Refused(400, "incomplete_body", "the connection closed before the whole body arrived") from None
        finally:
            self.publisher.release(size)
            self.metrics.bodies.dec()
            self.metrics.body_bytes.dec(size)

    def _client(self, request: web.Request) -> str:
        """Who the rate limit counts: the peer, or the last address a trusted proxy put in its header."""
        header = self.settings.client_address_header
        if header and (forwarded := request.headers.get(header)):
            return forwarded.rsplit(",", 1)[-1].strip()
        return request.remote or ""

    def _body_too_large(self) -> Refused:
        return Refused(413, "body_too_large", f"the body is larger than {self.settings.max_body_bytes} bytes")

    async def health(self, request: web.Request) -> web.Response:
        problem = self.publisher.problem
        return web.json_response(
            {
                "status": "degraded" if problem else "ok",
                "kafka": problem or "ok",
                "pending_bytes": self.publisher.pending_bytes,
                "stop_sending": self.settings.stop_sending,
            },
            status=503 if problem else 200,
        )

    async def exposition(self, request: web.Request) -> web.Response:
        if self.limiter is not None:
            self.metrics.rate_limited_clients.set(len(self.limiter))
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


class _WithoutSenders(logging.Filter):
    """aiohttp logs the peer's address ("Error handling request from %s") and exceptions whose text can
    quote a request line or header; asyncio's records can name transports. Their records keep the message
    template and the exception's type only. Malformed HTTP is the sender's error, answered 400 and counted
    (`bad_request`): aiohttp's error record for it drops to debug level, so no sender can fill the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(("aiohttp", "asyncio")):
            return True
        error = record.exc_info[0] if record.exc_info else None
        if error is not None:
            record.msg = f"{record.msg} ({error.__name__})"
        record.args, record.exc_info, record.exc_text, record.stack_info = (), None, None, None
        if error is not None and issubclass(error, HttpProcessingError):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.root.isEnabledFor(logging.DEBUG)
        return True


def run(settings: CollectorSettings, shared: Settings) -> None:
    """Serve until SIGTERM or SIGINT; then answer the requests in flight and close the producer."""
    logging.basicConfig(level=shared.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.root.handlers:
        handler.addFilter(_WithoutSenders())
    logging.getLogger("aiokafka").setLevel(max(logging.root.level, logging.INFO))  # its debug records quote events
    web_response.SERVER_SOFTWARE = SERVER  # aiohttp reads it for every answer, its own error pages' too
    collector = Collector(settings, shared)
    log.info(
        "collecting on http://%s:%d%s into %s at %s (at most %d connections)",
        settings.host,
        settings.port,
        EVENTS_PATH,
        shared.topic,
        shared.bootstrap_servers,
        collector.connections.cap,
    )
    gc.freeze()  # the ~57,000 objects of the imports leave the collector's way: a full collection took 12 ms
    asyncio.run(_serve(collector))


async def _serve(collector: Collector) -> None:
    runner = collector.runner()
    await runner.setup()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    try:
        await collector.connections.site(runner, collector.settings.host, collector.settings.port).start()
        await stop.wait()
    finally:
        await runner.cleanup()  # stop listening, answer the requests in flight, close the producer
