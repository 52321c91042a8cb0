"""Delivery on the real broker: the exit deadline with the broker down and black-holed (fresh interpreters,
wall clocks, empty stderr), offline backoff with one warning and resumption through a TCP proxy, fork
safety with exact counts, and the accounting of every drop reason, reported as client_report events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stack, TcpProxy
from kafka import KafkaConsumer
from kern_telemetry_client import KafkaSink, Telemetry, contract, ledger, payloads
from kern_telemetry_client.transport import THREAD_NAME, Backoff, Transport
from test_sdk_standins import WARNING_FLAGS, Agent, Model, PostgresDb, client_env, host, run_python, warned_host

from bench.sdk_client import BlackHole, closed_port
from devstack.broker import EmbeddedBroker
from devstack.processes import free_port

pytestmark = pytest.mark.integration


def agent_events(tag: str, count: int) -> list:
    agent = Agent(Model("openai", "OpenAIResponses", tag))
    return [
        payloads.run_event(contract.AGENT, agent, "session", f"{tag}-{i}", "1.0.0", payloads.IDENTIFIERS)
        for i in range(count)
    ]


def decoded(records) -> list:
    return [json.loads(record.value) for record in records]


def by_model(events: list) -> Counter:
    return Counter(event["data"]["model_id"] for event in events if event["type"] == contract.AGENT)


def records_until_quiet(bootstrap: str, topic: str, quiet_s: float = 2.0) -> list:
    """Every record of a topic, for when the count is what the test wants to learn."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None, enable_auto_commit=False
    )
    records, last = [], time.monotonic()
    try:
        while time.monotonic() - last < quiet_s:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
                last = time.monotonic()
    finally:
        consumer.close()
    return records


def read_until_quiet(bootstrap: str, topic: str, quiet_s: float = 2.0) -> list:
    return decoded(records_until_quiet(bootstrap, topic, quiet_s))


@contextlib.contextmanager
def proxied_stack(tmp_path) -> Iterator[tuple]:
    """A broker of its own that clients reach only through a TCP proxy (it advertises the proxy's port),
    with a stack's topics: (broker, proxy, stack). The session broker cannot be cut off this way."""
    broker_port = free_port()
    proxy = TcpProxy(broker_port)
    with EmbeddedBroker(port=broker_port, advertised_port=proxy.port, log_path=tmp_path / "tansu.log") as broker:
        proxy.start()
        yield broker, proxy, Stack(broker, tmp_path / "stack", partitions=2)


def isolate(monkeypatch, tmp_path) -> None:
    """The in-process client's config and state directories: the test's own."""
    for name, value in client_env(tmp_path).items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    ("state", "exit_timeout", "deadline"),
    [("down", "default", 1.0), ("black-holed", "default", 1.0), ("down", "0.25", 0.25)],
)
def test_exit_waits_at_most_the_deadline_with_empty_stderr(tmp_path, monkeypatch, state, exit_timeout, deadline):
    with BlackHole() as hole:
        port = closed_port() if state == "down" else hole.port
        ran = host(client_env(tmp_path), f"127.0.0.1:{port}", "sdk.exit", exit_timeout, "1.0.0", 1000)
    assert ran.returncode == 0 and ran.stderr == ""
    captured = float(ran.stdout.split()[0])
    assert ran.ended - captured <= deadline + 0.5
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert ledger.claim() == Counter({("1.0.0", "unsent_at_exit"): 1000})  # left for a later process


@pytest.mark.parametrize("flags", WARNING_FLAGS, ids=" ".join)
@pytest.mark.parametrize("state", ["up", "down"])
def test_any_warning_filter_leaves_delivery_intact_and_stderr_the_hosts(stack_factory, tmp_path, flags, state):
    """kafka-python's import raises hundreds of DeprecationWarnings (under `-W error` it failed: nothing
    was delivered) and, broker down, leaks sockets whose ResourceWarnings showed under `-X dev`. The
    client's threads ignore their warnings; the host's own still follow its filters."""
    stack = stack_factory(partitions=2)
    address = stack.env["KERN_BOOTSTRAP_SERVERS"] if state == "up" else f"127.0.0.1:{closed_port()}"
    held, stderr = warned_host(
        client_env(tmp_path), flags, "kafka", address, stack.settings.topic, 500, 30.0 if state == "up" else 2.0
    )
    own, expected_stderr = WARNING_FLAGS[flags]
    assert (held["own"], stderr) == (own, expected_stderr)
    assert held["captured"] == 500
    if state == "up":
        assert held["flushed"] and held["delivered"] == 500
        assert by_model(decoded(stack.read_topic(stack.settings.topic, 500))) == {"warned": 500}
    else:  # two or three refused connections, each socket closed
        assert held["dropped"]["unsent_at_exit"] == 500


def test_offline_backs_off_warns_once_and_resumes_when_the_broker_returns(tmp_path, monkeypatch, caplog):
    isolate(monkeypatch, tmp_path)
    caplog.set_level(logging.DEBUG)
    with proxied_stack(tmp_path) as (broker, proxy, stack):
        proxy.cut()  # refused from the first event on
        sink = KafkaSink(broker.bootstrap_servers, stack.settings.topic, reconnect_backoff_max_ms=300)
        transport = Transport(sink, "1.0.0", backoff=Backoff(0.1, 0.4))
        for event in agent_events("while-refused", 30):
            transport.put(event)
        time.sleep(3.5)  # three or more tries: each waits 1 s (max_block_ms) for metadata, then backs off
        assert not transport.flush(0.1)
        proxy.start()
        assert transport.flush(20.0)  # what waited in the queue goes out
        for event in agent_events("while-up", 30):
            transport.put(event)
        assert transport.flush(10.0)
        proxy.cut()  # mid-session: records wait inside the producer, which reconnects by itself
        for event in agent_events("while-cut", 30):
            transport.put(event)
        time.sleep(1.5)
        proxy.start()
        assert transport.flush(30.0)
        transport.close(5.0)
        sent = decoded(stack.read_topic(stack.settings.topic, 90))
    assert by_model(sent) == {"while-refused": 30, "while-up": 30, "while-cut": 30}  # each once
    ours = [r for r in caplog.records if r.name.startswith("kern_telemetry_client") and r.levelno > logging.DEBUG]
    assert [r.levelname for r in ours] == ["WARNING"]  # one outage, one warning
    kafka_records = [r for r in caplog.records if r.name.startswith("kafka")]
    assert not [r for r in kafka_records if r.threadName.startswith(THREAD_NAME)]
    assert kafka_records  # the host's own kafka-python use (reading the topic) still logs
    assert not list((tmp_path / "state").glob("**/*.json"))  # nothing dropped, nothing left to report


FORKING_HOST = r"""
import os, sys, threading
from kern_telemetry_client import KafkaSink, Telemetry
from test_sdk_standins import Agent, Model

telemetry = Telemetry("1.0.0", KafkaSink(sys.argv[1], sys.argv[2]))

def run(tag, count):
    agent = Agent(Model("openai", "OpenAIResponses", tag))
    for i in range(count):
        telemetry.agent_run(agent, "session", f"{tag}-{i}")

run("before-fork", 300)  # still queued: the fork waits for the worker's kafka-python import at most
pid = os.fork()
if pid == 0:
    run("child", 200)
    flushed = telemetry.flush(20.0)
    print("child", sorted(t.name for t in threading.enumerate()), flushed, flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
run("after-fork", 100)
flushed = telemetry.flush(20.0)
print("parent", sorted(t.name for t in threading.enumerate()), flushed, status, flush=True)
"""


def test_fork_child_sends_its_own_events_once_and_parent_keeps_sending(stack_factory, tmp_path):
    stack = stack_factory(partitions=2)
    code = f"import sys; sys.argv = ['host', {stack.env['KERN_BOOTSTRAP_SERVERS']!r}, {stack.settings.topic!r}]\n"
    ran = run_python(code + FORKING_HOST, client_env(tmp_path))
    assert ran.returncode == 0 and ran.stderr == "", ran.stderr
    threads = "['MainThread', 'kern-telemetry-client', 'kern-telemetry-client-network-thread']"
    assert ran.stdout.splitlines() == [f"child {threads} True", f"parent {threads} True 0"]
    sent = decoded(stack.read_topic(stack.settings.topic, 600))
    assert by_model(sent) == {"before-fork": 300, "child": 200, "after-fork": 100}


def test_queue_full_drops_are_counted_and_reported(stack_factory, tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    stack = stack_factory(partitions=2)
    bootstrap = stack.env["KERN_BOOTSTRAP_SERVERS"]
    telemetry = Telemetry("1.0.0", KafkaSink(bootstrap, stack.settings.topic), queue_size=50)
    agent = Agent(Model("openai", "OpenAIResponses", "gpt-5.2"))
    for i in range(2000):  # far faster than the worker, which starts by importing kafka-python
        telemetry.agent_run(agent, "session", f"run-{i}")
    telemetry.close(10.0)
    sent = read_until_quiet(bootstrap, stack.settings.topic)
    reports = [event for event in sent if event["type"] == contract.CLIENT_REPORT]
    assert len(reports) == 1 and reports[0]["sdk_version"] == "1.0.0"
    dropped = reports[0]["data"]["dropped"]
    assert dropped["queue_full"] > 0 and dropped["queue_full"] + by_model(sent)["gpt-5.2"] == 2000
    assert dropped["send_failed"] == dropped["oversized"] == dropped["unsent_at_exit"] == 0
    assert not list((tmp_path / "state").glob("**/*.json"))  # reported: nothing left for later

    # The pipeline sums the report: analysts see the runs that arrived and the ones that never did.
    worker = stack.worker()
    worker.wait_events(len(sent))
    assert worker.stop() == 0
    with stack.clickhouse() as client:
        drops = client.query(
            "SELECT sdk_version, reason, sum(events) FROM kern_telemetry.client_drops_daily GROUP BY ALL"
        ).result_rows
        runs = client.query("SELECT sum(runs) FROM kern_telemetry.runs_daily WHERE sdk_version = '1.0.0'").result_rows
    assert drops == [("1.0.0", "queue_full", dropped["queue_full"])]
    assert runs[0][0] + dropped["queue_full"] == 2000


def test_drops_are_reported_periodically_while_the_host_runs(stack_factory, tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    stack = stack_factory(partitions=2)
    bootstrap = stack.env["KERN_BOOTSTRAP_SERVERS"]
    telemetry = Telemetry("1.0.0", KafkaSink(bootstrap, stack.settings.topic), queue_size=20, report_interval=0.5)
    agent = Agent(Model("openai", "OpenAIResponses", "gpt-5.2"))
    for i in range(500):
        telemetry.agent_run(agent, "session", f"run-{i}")
    sent = read_until_quiet(bootstrap, stack.settings.topic)  # no flush, no close: the worker reports by itself
    [report] = [event for event in sent if event["type"] == contract.CLIENT_REPORT]
    assert report["data"]["dropped"]["queue_full"] + by_model(sent)["gpt-5.2"] == 500
    telemetry.close(10.0)
    again = read_until_quiet(bootstrap, stack.settings.topic, quiet_s=1.0)
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, sent))  # reported once, nothing new


def test_send_failures_and_oversized_events_are_counted_and_reported(tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    with proxied_stack(tmp_path) as (broker, proxy, stack):
        sink = KafkaSink(
            broker.bootstrap_servers,
            stack.settings.topic,
            delivery_timeout_ms=2_000,
            request_timeout_ms=1_000,
            linger_ms=0,
            reconnect_backoff_max_ms=200,
        )
        transport = Transport(sink, "1.0.0", report_interval=3600)
        for event in agent_events("delivered", 10):
            transport.put(event)
        assert transport.flush(10.0)
        proxy.cut()
        for event in agent_events("lost", 20):
            transport.put(event)
        transport.put({"type": "agent", "padding": "x" * 70_000})  # larger than the pipeline accepts
        transport.flush(15.0)  # returns once the producer has given up on them (delivery timeout)
        proxy.start()
        for event in agent_events("after", 5):
            transport.put(event)
        assert transport.flush(20.0)
        transport.close(10.0)  # sends the client report
        sent = decoded(stack.read_topic(stack.settings.topic, 16))
    assert by_model(sent) == {"delivered": 10, "after": 5}
    [report] = [event for event in sent if event["type"] == contract.CLIENT_REPORT]
    assert report["data"]["dropped"] == {**dict.fromkeys(contract.DROP_REASONS, 0), "send_failed": 20, "oversized": 1}


def test_records_in_flight_when_close_gives_up_are_unknown_at_exit_not_failed(tmp_path, monkeypatch):
    """The broker stops answering with records in flight: `close` gives up at its deadline, and closing the
    producer then fails those records; they were counted unknown_at_exit (they may have arrived), so the
    producer's errbacks must not count them again, nor as send_failed (a CI run counted 1,041 so)."""
    isolate(monkeypatch, tmp_path)
    end = Transport._end

    def descheduled_end(transport: Transport) -> None:  # the host's thread descheduled on a busy machine
        time.sleep(0.5)  # (as in that CI run): the producer's errbacks come before close's account
        end(transport)

    monkeypatch.setattr(Transport, "_end", descheduled_end)
    with proxied_stack(tmp_path) as (broker, proxy, stack):
        transport = Transport(KafkaSink(broker.bootstrap_servers, stack.settings.topic), "1.0.0", report_interval=3600)
        for event in agent_events("warm-up", 1):
            transport.put(event)
        assert transport.flush(10.0)  # connected, the topic's metadata known
        proxy.hold()
        for event in agent_events("held", 20):
            transport.put(event)
        time.sleep(1.0)  # the worker hands them to the producer at once: in flight, never acknowledged
        transport.close(0.3)
        stats = transport.stats()
    assert (stats.delivered, stats.unknown_at_exit, stats.pending) == (1, 20, 0)
    assert sum(stats.dropped.values()) == 0, stats.dropped


# A host that warms the client up (connected, metadata known), captures `count` runs and ends; after the
# client's exit handler it prints what the client counted (an atexit handler registered before the client's
# runs after it).
CUT_HOST = r"""
import atexit, dataclasses, json, sys
atexit.register(lambda: print(json.dumps(dataclasses.asdict(telemetry.stats())), flush=True))
from kern_telemetry_client import KafkaSink, Telemetry
from test_sdk_standins import Agent, Model

bootstrap, topic, tag, exit_timeout, count = sys.argv[1:6]
telemetry = Telemetry("1.0.0", KafkaSink(bootstrap, topic), exit_timeout=float(exit_timeout))
telemetry.agent_run(Agent(Model("openai", "OpenAIResponses", "warm-up")), "session", "warm-up")
assert telemetry.flush(20.0)
agent = Agent(Model("openai", "OpenAIResponses", tag))
for i in range(int(count)):
    telemetry.agent_run(agent, "session", f"run-{i}")
"""


def test_exit_cut_short_counts_each_event_once(stack_factory, tmp_path):
    """20 fresh interpreters capture 3,000 runs each and exit with a deadline drawn from 0.01-0.3 s, the
    broker up, so the cut falls anywhere: in the queue, in the worker's hands, in flight. Each event is
    counted once, the counts add up to what was captured, and the topic agrees: it holds every delivered
    event and, of those in flight at the cut (unknown_at_exit), any number."""
    stack = stack_factory(partitions=2)
    bootstrap, topic, count = stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic, 3000
    counted = {}
    for run in range(20):
        argv = ["host", bootstrap, topic, f"cut-{run}", str(random.Random(run).uniform(0.01, 0.3)), str(count)]
        ran = run_python(f"import sys; sys.argv = {argv!r}\n" + CUT_HOST, client_env(tmp_path / str(run)))
        assert ran.returncode == 0 and ran.stderr == "", ran.stderr
        stats = counted[f"cut-{run}"] = json.loads(ran.stdout)
        outcomes = {**stats["dropped"], "unknown_at_exit": stats["unknown_at_exit"]}
        assert ledger_of(tmp_path / str(run) / "state") == Counter(  # left for a later process to report
            {("1.0.0", reason): n for reason, n in outcomes.items() if n and reason in contract.DROP_REASONS}
        )
    arrived = by_model(read_until_quiet(bootstrap, topic))
    for tag, stats in counted.items():
        unsent, unknown = stats["dropped"]["unsent_at_exit"], stats["unknown_at_exit"]
        assert stats["captured"] == count + 1 and stats["pending"] == 0  # the warm-up event, then the runs
        assert sum(stats["dropped"].values()) == unsent  # the broker was up: nothing else was lost
        assert stats["delivered"] + unsent + unknown == count + 1
        assert stats["delivered"] - 1 <= arrived[tag] <= stats["delivered"] - 1 + unknown
    assert any(stats["unknown_at_exit"] for stats in counted.values())  # some cuts fell on records in flight


def ledger_of(state: Path) -> Counter:
    """The drops a process left in the state directory `state` for a later one to report."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(state))
        return ledger.claim()


def test_unsent_at_exit_is_reported_by_the_next_process(stack_factory, tmp_path):
    stack = stack_factory(partitions=2)
    env = client_env(tmp_path)
    offline = host(env, f"127.0.0.1:{closed_port()}", stack.settings.topic, "0.2", "0.9.0", 1000)
    assert offline.returncode == 0 and offline.stderr == ""
    online = host(env, stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic, "default", "1.0.0", 5)
    assert online.returncode == 0 and online.stderr == ""
    sent = decoded(stack.read_topic(stack.settings.topic, 6))
    assert Counter((e["type"], e["sdk_version"]) for e in sent) == {
        ("agent", "1.0.0"): 5,
        ("client_report", "0.9.0"): 1,
    }
    [report] = [event for event in sent if event["type"] == contract.CLIENT_REPORT]
    assert report["data"]["dropped"] == {**dict.fromkeys(contract.DROP_REASONS, 0), "unsent_at_exit": 1000}
    assert list((tmp_path / "state" / "kern").iterdir()) == []  # the file was claimed


def test_before_send_scrubs_or_vetoes_on_the_worker_and_a_broken_hook_never_reaches_the_host(
    stack_factory, tmp_path, monkeypatch, caplog
):
    """The hook runs on the worker thread, never the caller's. What it returns is sent; None vetoes; a hook
    that raises, returns something else than a dict, or a dict JSON cannot encode drops the event: each
    counted `before_send`, nothing raised into the host or logged above debug."""
    isolate(monkeypatch, tmp_path)
    caplog.set_level(logging.DEBUG)
    stack = stack_factory(partitions=2)
    threads = set()

    def before_send(event: dict) -> object:
        threads.add(threading.current_thread().name)
        model = event["data"]["model_id"]
        if model == "keep":
            return {**event, "data": {**event["data"], "model_id": "scrubbed", "db_type": None}}
        if model == "raise":
            raise RuntimeError("a broken hook")
        return {"veto": None, "list": [event], "unencodable": {**event, "set": {1}}}[model]

    telemetry = Telemetry(
        "1.0.0", KafkaSink(stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic), before_send=before_send
    )
    for model in ("keep", "veto", "raise", "list", "unencodable"):
        agent = Agent(Model("openai", "OpenAIResponses", model), db=PostgresDb())
        for i in range(40):
            telemetry.agent_run(agent, "session", f"{model}-{i}")
    assert telemetry.flush(20.0)
    telemetry.close(10.0)
    sent = read_until_quiet(stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic, 1.0)
    runs = [event for event in sent if event["type"] == contract.AGENT]
    assert len(runs) == 40 and {(e["data"]["model_id"], e["data"]["db_type"]) for e in runs} == {("scrubbed", None)}
    stats = telemetry.stats()
    assert (stats.captured, stats.delivered, stats.dropped["before_send"], stats.pending) == (200, 40, 160, 0)
    assert threads == {THREAD_NAME}
    reports = [event["data"]["dropped"] for event in sent if event["type"] == contract.CLIENT_REPORT]
    assert reports == (
        [{**dict.fromkeys(contract.DROP_REASONS, 0), "before_send": 160}]
        if "before_send" in contract.DROP_REASONS
        else []
    )  # when the contract names it
    assert not [r for r in caplog.records if r.name.startswith("kern_telemetry_client") and r.levelno > logging.DEBUG]


def test_aflush_and_aclose_wait_without_blocking_the_event_loop(tmp_path, monkeypatch):
    """With the broker black-holed, `await aflush(1.0)` waits its second out and `aclose` its deadline,
    while a task ticking every 10 ms keeps ticking (`flush` would hold the loop for the whole second)."""
    isolate(monkeypatch, tmp_path)
    with BlackHole() as hole:
        telemetry = Telemetry("1.0.0", KafkaSink(f"127.0.0.1:{hole.port}"))
        agent = Agent(Model("openai", "OpenAIResponses", "gpt-5.2"))
        for i in range(100):
            telemetry.agent_run(agent, "session", f"run-{i}")

        async def host() -> tuple:
            loop, gaps = asyncio.get_running_loop(), []

            async def tick() -> None:
                last = loop.time()
                while True:
                    await asyncio.sleep(0.01)
                    gaps.append(loop.time() - last)
                    last = loop.time()

            ticking = asyncio.create_task(tick())
            started = loop.time()
            flushed = await telemetry.aflush(1.0)
            flushing = loop.time() - started
            await telemetry.aclose(0.5)
            closing = loop.time() - started - flushing
            ticking.cancel()
            return flushed, flushing, closing, gaps

        flushed, flushing, closing, gaps = asyncio.run(host())
    assert not flushed and 1.0 <= flushing < 1.5 and closing < 0.6
    assert len(gaps) > 60 and max(gaps) < 0.1  # the loop ran all along
    stats = telemetry.stats()
    assert stats.captured == 100 and stats.dropped["unsent_at_exit"] == 100 and stats.pending == 0


def test_records_carry_no_key(stack_factory, tmp_path, monkeypatch):
    """No identifier in Kafka keys: records go without one."""
    isolate(monkeypatch, tmp_path)
    stack = stack_factory(partitions=2)
    telemetry = Telemetry("1.0.0", KafkaSink(stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic))
    agent = Agent(Model("openai", "OpenAIResponses", "gpt-5.2"))
    for i in range(20):
        telemetry.agent_run(agent, f"session-{uuid.uuid4()}", f"run-{i}")
    telemetry.close(10.0)
    records = stack.read_topic(stack.settings.topic, 20)
    assert {record.key for record in records} == {None}
