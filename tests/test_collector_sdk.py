"""The SDK client's HTTP sink against a real collector, broker and worker: end to end into ClickHouse
(gzip'd batches of at most 100), Retry-After honoured, the stop-sending answer turning telemetry off,
offline exits within the deadline with empty stderr, backoff and resumption with one warning, and a
refused batch counted and reported."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import ssl
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest
from conftest import TcpProxy
from kern_telemetry_client import HttpSink, Telemetry, contract
from kern_telemetry_client.transport import BATCH_SIZE, Backoff, Transport
from test_collector_support import end_offsets, metric, running_collector
from test_sdk_delivery import agent_events, by_model, decoded, isolate, ledger_of, read_until_quiet, records_until_quiet
from test_sdk_end_to_end import VERSION, capture
from test_sdk_standins import SENTINEL, WARNING_FLAGS, client_env, run_python, warned_host

from bench.sdk_client import BlackHole, closed_port
from devstack.processes import CollectorProcess, free_port

pytestmark = pytest.mark.integration

KINDS = {"agent_run": "agent", "team_run": "team", "workflow_run": "workflow", "os_launch": "os"}


def test_runs_of_every_kind_reach_clickhouse_through_the_collector_gzipped_in_batches_of_100(
    stack_factory, tmp_path, monkeypatch
):
    stack = stack_factory(partitions=2)
    isolate(monkeypatch, tmp_path)
    # 100 of the client's events are ~60 KB as JSON, ~8 KB gzip'd: a 16 KB body limit shows they come gzip'd
    with running_collector(
        stack.env, tmp_path, KERN_COLLECTOR_MAX_BODY_BYTES="16384", KERN_COLLECTOR_MAX_BATCH_EVENTS=str(BATCH_SIZE)
    ) as collector:
        telemetry = Telemetry(VERSION, HttpSink(collector.url))
        expected: Counter = Counter()
        for call, _, runs, _ in capture(telemetry):
            expected[KINDS[call]] += runs
        telemetry.close(10.0)
        exposition = collector.metrics()
    total = sum(expected.values())
    assert metric(exposition, "kern_collector_events_total") == total
    requests = metric(exposition, "kern_collector_requests_total", code="202", reason="accepted")
    assert requests >= math.ceil(total / BATCH_SIZE) and requests == metric(
        exposition, "kern_collector_request_duration_seconds_count"
    )  # every request was accepted

    records = stack.read_topic(stack.settings.topic, total)
    assert sum(len(r.value) for r in records) > 16384 * requests  # so some accepted body was gzip'd to fit
    assert not [r for r in records if SENTINEL.encode() in r.value]
    worker = stack.worker()
    worker.wait_flushed(end_offsets(records))
    worker.stop()
    with stack.clickhouse() as client:
        runs = dict(client.query("SELECT kind, sum(runs) FROM kern_telemetry.runs_minute GROUP BY kind").result_rows)
        tables = client.query("SELECT name FROM system.tables WHERE database = 'kern_telemetry'").result_rows
        contents = [
            client.raw_query(f"SELECT * FROM kern_telemetry.`{name}`", fmt="TabSeparated") for (name,) in tables
        ]  # as bytes: aggregate states too
    assert runs == expected
    assert len(contents) > 5 and not [content for content in contents if SENTINEL.encode() in content]


def test_retry_after_lengthens_the_pause_so_each_limited_batch_is_refused_once(stack_factory, tmp_path, monkeypatch):
    """One request every 2 s (burst 1): the 2nd and 3rd batches get 429 with Retry-After 2. The transport's
    own backoff would retry after 0.25-0.5 s and be refused again; honouring Retry-After, each is refused
    exactly once."""
    stack = stack_factory(partitions=2)
    isolate(monkeypatch, tmp_path)
    with running_collector(
        stack.env, tmp_path, KERN_COLLECTOR_RATE_LIMIT_PER_SECOND="0.5", KERN_COLLECTOR_RATE_LIMIT_BURST="1"
    ) as collector:
        transport = Transport(HttpSink(collector.url), "1.0.0")
        started = time.monotonic()
        for event in agent_events("limited", 250):
            transport.put(event)
        assert transport.flush(30.0)
        elapsed = time.monotonic() - started
        transport.close(5.0)
        exposition = collector.metrics()
    accepted = metric(exposition, "kern_collector_requests_total", code="202", reason="accepted")
    limited = metric(exposition, "kern_collector_requests_total", code="429", reason="rate_limited")
    assert accepted >= 3 and limited == accepted - 1 and elapsed >= 2 * limited
    sent = read_until_quiet(stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic, 1.0)
    assert by_model(sent) == {"limited": 250}


STOPPED_HOST = r"""
import sys, threading, time
from kern_telemetry_client import HttpSink, Telemetry
from test_sdk_standins import Agent, Model

telemetry = Telemetry("1.0.0", HttpSink(sys.argv[1]))
agent = Agent(Model("openai", "OpenAIResponses", "gpt-5.2"))
for i in range(300):
    telemetry.agent_run(agent, "session", f"run-{i}")
print(telemetry.flush(10.0), flush=True)
time.sleep(0.2)
print(sorted(t.name for t in threading.enumerate()), flush=True)
for i in range(300):
    telemetry.agent_run(agent, "session", f"after-{i}")
print(telemetry.flush(10.0), flush=True)
"""


def test_the_stop_sending_answer_turns_telemetry_off_for_the_process(stack_factory, tmp_path):
    stack = stack_factory(partitions=2)
    env = client_env(tmp_path)
    with running_collector(stack.env, tmp_path, KERN_COLLECTOR_STOP_SENDING="true") as collector:
        ran = run_python(f"import sys; sys.argv = ['host', {collector.url!r}]\n" + STOPPED_HOST, env)
        exposition = collector.metrics()
    assert ran.returncode == 0 and ran.stderr == ""
    assert ran.stdout.splitlines() == ["True", "['MainThread']", "True"]  # the worker thread is gone
    assert metric(exposition, "kern_collector_request_duration_seconds_count") == 1  # asked once, then silent
    assert metric(exposition, "kern_collector_requests_total", code="410", reason="stop_sending") == 1
    assert not list((tmp_path / "state").glob("**/*.json"))  # nothing left for a later process to report


# captures 1,000 runs, prints when; after the client's exit handler (registered after this one), its stats
HTTP_HOST = r"""
import atexit, dataclasses, json, sys, time
atexit.register(lambda: print(json.dumps(dataclasses.asdict(telemetry.stats())), flush=True))
from kern_telemetry_client import HttpSink, Telemetry
from test_sdk_standins import Agent, Model

telemetry = Telemetry("1.0.0", HttpSink(sys.argv[1]))
agent = Agent(Model("openai", "OpenAIResponses", "gpt-5.2"))
for i in range(1000):
    telemetry.agent_run(agent, "session", f"run-{i}")
print(time.monotonic(), flush=True)
"""


@pytest.mark.parametrize("state", ["down", "black-holed"])
def test_offline_the_host_exits_within_the_deadline_with_empty_stderr(tmp_path, state):
    """Down: every batch is refused before it leaves, all unsent. Black-holed: the connection is accepted
    and the first batch's request written, so at the deadline it may have arrived: unknown_at_exit."""
    with BlackHole() as hole:
        port = closed_port() if state == "down" else hole.port
        ran = run_python(
            f"import sys; sys.argv = ['host', 'http://127.0.0.1:{port}']\n" + HTTP_HOST, client_env(tmp_path)
        )
    assert ran.returncode == 0 and ran.stderr == ""
    captured, stats = ran.stdout.splitlines()
    assert ran.ended - float(captured) <= 1.0 + 0.5
    stats = json.loads(stats)
    unknown = 0 if state == "down" else BATCH_SIZE
    assert (stats["dropped"]["unsent_at_exit"], stats["unknown_at_exit"]) == (1000 - unknown, unknown)
    left = {"unsent_at_exit": 1000 - unknown, "unknown_at_exit": unknown}
    assert ledger_of(tmp_path / "state") == Counter(
        {("1.0.0", reason): n for reason, n in left.items() if n and reason in contract.DROP_REASONS}
    )


@pytest.mark.parametrize("flags", WARNING_FLAGS, ids=" ".join)
def test_any_warning_filter_leaves_delivery_intact_and_stderr_the_hosts(stack_factory, tmp_path, flags):
    stack = stack_factory(partitions=2)
    with running_collector(stack.env, tmp_path) as collector:
        held, stderr = warned_host(client_env(tmp_path), flags, "http", collector.url, "-", 500, 30.0)
    own, expected_stderr = WARNING_FLAGS[flags]
    assert (held["own"], stderr) == (own, expected_stderr)
    assert held["flushed"] and (held["captured"], held["delivered"]) == (500, 500)
    assert by_model(decoded(stack.read_topic(stack.settings.topic, 500))) == {"warned": 500}


class ForwardProxy:
    """An HTTP proxy: CONNECT tunnels, and absolute-form requests forwarded as they are (the collector
    takes them). Records each connection's request line and Proxy-Authorization, and what it piped."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: list[tuple[str, str | None]] = []
        self.piped = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = client.recv(65536)
            if not chunk:
                return
            received += chunk
        head, rest = received.split(b"\r\n\r\n", 1)
        line, *headers = head.decode().split("\r\n")
        fields = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in headers)}
        self.requests.append((line, fields.get("proxy-authorization")))
        method, target, _ = line.split()
        host, port = (target if method == "CONNECT" else urlsplit(target).netloc).rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        if method == "CONNECT":
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")  # the client waits for it
        else:
            upstream.sendall(head + b"\r\n\r\n" + rest)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self.piped += data
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_the_http_sink_goes_through_the_environments_proxy_unless_no_proxy_says_not(
    stack_factory, tmp_path, monkeypatch, certificate, scheme
):
    """HTTPS_PROXY: a CONNECT tunnel, TLS end to end to the collector (the proxy never sees a request);
    HTTP_PROXY: the absolute URL asked of the proxy; the proxy's credentials sent to it; NO_PROXY bypasses
    it. A real proxy, collector (behind a TLS front for https) and broker."""
    stack = stack_factory(partitions=2)
    isolate(monkeypatch, tmp_path)
    proxy = ForwardProxy()
    with running_collector(stack.env, tmp_path) as collector:
        front = TcpProxy(collector.web_port, tls_certfile=certificate).start() if scheme == "https" else None
        url = f"https://127.0.0.1:{front.port}" if front else collector.url
        sink = HttpSink(url, ssl_context=ssl.create_default_context(cafile=certificate))
        monkeypatch.setenv(f"{scheme.upper()}_PROXY", proxy.url.replace("//", "//kern:s%40cret@"))
        for bypass, tag in ((False, "proxied"), (True, "direct")):
            if bypass:
                monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
            transport = Transport(sink, "1.0.0")
            for event in agent_events(tag, 250):
                transport.put(event)
            assert transport.flush(10.0)
            transport.close(5.0)
            assert transport.stats().delivered == 250
            if not bypass:
                requests = list(proxy.requests)
        if front:
            front.cut()
    proxy.close()
    assert by_model(read_until_quiet(stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic, 1.0)) == {
        "proxied": 250,
        "direct": 250,
    }
    assert proxy.requests == requests and len(requests) >= 1  # nothing more once NO_PROXY named the host
    target = f"127.0.0.1:{front.port}" if front else f"http://127.0.0.1:{collector.web_port}/v1/events"
    assert {(line.rsplit(" ", 1)[0], authorization) for line, authorization in requests} == {
        (f"{'CONNECT' if front else 'POST'} {target}", "Basic a2VybjpzQGNyZXQ=")
    }  # kern:s@cret
    if front:
        assert b"/v1/events" not in proxy.piped and b"warned" not in proxy.piped  # TLS through the tunnel


def test_without_a_collector_it_backs_off_warns_once_and_delivers_when_one_answers(
    stack_factory, tmp_path, monkeypatch, caplog
):
    stack = stack_factory(partitions=2)
    isolate(monkeypatch, tmp_path)
    caplog.set_level(logging.DEBUG)
    port = free_port()
    transport = Transport(HttpSink(f"http://127.0.0.1:{port}"), "1.0.0", backoff=Backoff(0.1, 0.4))
    for event in agent_events("while-down", 30):
        transport.put(event)
    time.sleep(1.0)
    assert not transport.flush(0.1)
    collector = CollectorProcess(stack.env, tmp_path, web_port=port).start()
    try:
        collector.wait_ready()
        assert transport.flush(20.0)
        for event in agent_events("while-up", 30):
            transport.put(event)
        assert transport.flush(10.0)
        transport.close(5.0)
    finally:
        collector.kill()
    sent = read_until_quiet(stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic, 1.0)
    assert by_model(sent) == {"while-down": 30, "while-up": 30}
    ours = [r for r in caplog.records if r.name.startswith("kern_telemetry_client") and r.levelno > logging.DEBUG]
    assert [r.levelname for r in ours] == ["WARNING"]
    assert not list((tmp_path / "state").glob("**/*.json"))


def test_a_refused_batch_is_counted_send_failed_and_reported(stack_factory, tmp_path, monkeypatch):
    stack = stack_factory(partitions=2)
    isolate(monkeypatch, tmp_path)
    with running_collector(stack.env, tmp_path, KERN_COLLECTOR_MAX_BATCH_EVENTS="50") as collector:
        transport = Transport(HttpSink(collector.url), "1.0.0", report_interval=3600)
        for event in agent_events("refused", 300):  # batches of 100: 413, too many events
            transport.put(event)
        assert transport.flush(10.0)
        for event in agent_events("after", 20):  # a batch that fits: delivered, the sink is not "offline"
            transport.put(event)
        assert transport.flush(10.0)
        transport.close(10.0)  # sends the client report
    sent = decoded(records_until_quiet(stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic, 1.0))
    [report] = [event for event in sent if event["type"] == contract.CLIENT_REPORT]
    dropped = report["data"]["dropped"]
    assert by_model(sent)["after"] == 20
    assert dropped["send_failed"] > 0 and dropped["send_failed"] + by_model(sent)["refused"] == 300
    assert dropped["queue_full"] == dropped["oversized"] == dropped["unsent_at_exit"] == 0
