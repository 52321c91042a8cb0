"""Helpers shared by the collector's tests (no tests here): a collector process per test, requests from
any loopback address, events that carry an id to follow them into Kafka, and threads that post
continuously while a test breaks something."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import CollectorProcess


@contextlib.contextmanager
def running_collector(
    env: dict[str, str], workdir: Path, name: str = "collector", ready: bool = True, **overrides: str
) -> Iterator[CollectorProcess]:
    """A `kern-telemetry collect` process with the stack's environment and `overrides`; `ready`: wait until
    the broker takes its batches."""
    collector = CollectorProcess({"KERN_LOG_LEVEL": "info", **env, **overrides}, workdir, name=name).start()
    try:
        if ready:
            collector.wait_ready()
        yield collector
    finally:
        collector.kill()


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: dict


def request(
    url: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    path: str = "/v1/events",
    source: str = "127.0.0.1",
    timeout: float = 30.0,
) -> Answer:
    """One request on a fresh connection from `source` (any 127.x.y.z address on Linux)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout, source_address=(source, 0))
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        raw = response.read()
        content_type = response.getheader("Content-Type", "")
        return Answer(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            json.loads(raw) if content_type.startswith("application/json") else {"text": raw.decode()},
        )
    finally:
        connection.close()


def post(
    url: str,
    events: list[bytes],
    *,
    ndjson: bool = False,
    gzipped: bool = False,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> Answer:
    body = b"\n".join(events) if ndjson else b"[" + b",".join(events) + b"]"
    framing = {"Content-Type": "application/x-ndjson" if ndjson else "application/json"}
    if gzipped:
        body, framing["Content-Encoding"] = gzip.compress(body), "gzip"
    return request(url, body, {**framing, **(headers or {})}, source=source)


def run_events(tag: str, count: int, kind: str = "agent") -> list[bytes]:
    """Valid runs whose session id (`<tag>-<i>`) names each one in Kafka (the worker never stores it)."""
    data = {
        "agent": {"model_provider": "openai", "model_id": "gpt-5.2", "has_tools": True},
        "team": {"model_provider": "anthropic", "model_id": "claude-sonnet-4-5", "member_count": 3},
        "workflow": {"db_type": "PostgresDb"},
    }[kind]
    return [
        json.dumps({"type": kind, "session_id": f"{tag}-{i}", "sdk_version": "2.4.1", "data": data}).encode()
        for i in range(count)
    ]


_SESSION = re.compile(rb'"session_id": "([^"]+)"')


def session_ids(values: list[bytes]) -> Counter:
    return Counter(match.group(1).decode() for value in values if (match := _SESSION.search(value)))


def end_offsets(records: list) -> dict[int, int]:
    ends: dict[int, int] = {}
    for record in records:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return ends


class Posters:
    """`threads` clients posting batches of `size` fresh events to `url()` until stopped: what each answer
    was, which events were acknowledged (202), and which got no answer at all."""

    def __init__(self, url, threads: int = 3, size: int = 50):
        self.url, self.size = url, size
        self.answers: Counter = Counter()  # (status, reason) -> requests; (None, error) when no answer came
        self.acknowledged: list[bytes] = []
        self.unanswered: list[bytes] = []
        self.retry_after: set[str] = set()  # Retry-After values of the 503s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._post, args=(f"p{i}",), daemon=True) for i in range(threads)]

    def __enter__(self) -> Posters:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def count(self, status: int | None) -> int:
        with self._lock:
            return sum(n for (code, _), n in self.answers.items() if code == status)

    def wait(self, status: int | None, at_least: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count(status) < at_least:
            assert time.monotonic() < deadline, f"{at_least} answers {status} awaited; got {dict(self.answers)}"
            time.sleep(0.05)

    def _post(self, name: str) -> None:
        batch_number = 0
        while not self._stop.is_set():
            events = run_events(f"{name}-{batch_number}", self.size)
            batch_number += 1
            try:
                answer = post(self.url(), events, ndjson=True, gzipped=True)
            except OSError as error:
                key = (None, type(error).__name__)
                with self._lock:
                    self.answers[key] += 1
                    self.unanswered += events
                time.sleep(0.05)
                continue
            with self._lock:
                self.answers[(answer.status, answer.body.get("error", "accepted"))] += 1
                if answer.status == 202:
                    self.acknowledged += events
                elif answer.status == 503:
                    self.retry_after.add(answer.headers.get("retry-after"))
                elif answer.status == 504:
                    self.unanswered += events  # the outcome is unknown
            if answer.status != 202:
                time.sleep(0.05)


def metric(exposition: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 if absent)."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0
