"""The collector loses nothing it acknowledged: with the broker connection cut mid-stream (503s, then
recovery), and with the collector SIGKILLed mid-stream. Clients post continuously from threads; every
event answered 202 must be in the topic, and ClickHouse must count what the topic holds."""

from __future__ import annotations

import pytest
from test_collector_support import Posters, end_offsets, running_collector, session_ids
from test_sdk_delivery import proxied_stack, records_until_quiet

from devstack.processes import CollectorProcess

pytestmark = pytest.mark.integration


def test_a_cut_broker_connection_gives_503s_and_loses_nothing_acknowledged(tmp_path):
    with proxied_stack(tmp_path) as (broker, proxy, stack):
        with (
            running_collector(
                stack.env,
                tmp_path,
                KERN_COLLECTOR_ACK_TIMEOUT_SECONDS="2",
                KERN_COLLECTOR_RETRY_AFTER_SECONDS="1",
                KERN_COLLECTOR_RATE_LIMIT_PER_SECOND="0",
            ) as collector,
            Posters(lambda: collector.url) as posters,
        ):
            posters.wait(202, 20)
            proxy.cut()
            posters.wait(503, 10)
            assert collector.health()["kafka"].startswith("broker unreachable")
            proxy.start()
            acknowledged_before = posters.count(202)
            posters.wait(202, acknowledged_before + 20, timeout=60)
        assert posters.retry_after == {"1"}
        assert set(posters.answers) <= {(202, "accepted"), (503, "kafka_unavailable"), (504, "not_acknowledged")}
        records = records_until_quiet(broker.bootstrap_servers, stack.settings.topic)
        stored = session_ids([record.value for record in records])
        acknowledged = session_ids(posters.acknowledged)
        assert not acknowledged - stored  # every acknowledged event is in the topic
        assert not set(stored) - set(acknowledged) - set(session_ids(posters.unanswered))  # nothing refused (503)

        worker = stack.worker()
        worker.wait_flushed(end_offsets(records))
        worker.stop()
        with stack.clickhouse() as client:
            runs = client.query("SELECT sum(runs) FROM kern_telemetry.runs_minute").result_rows[0][0]
    assert runs == len(records) >= len(posters.acknowledged)


def test_a_sigkilled_collector_loses_nothing_it_acknowledged(stack_factory, tmp_path):
    stack = stack_factory(partitions=2)
    first = CollectorProcess({**stack.env, "KERN_COLLECTOR_RATE_LIMIT_PER_SECOND": "0"}, tmp_path, name="first").start()
    collectors = [first]
    try:
        with Posters(lambda: collectors[-1].url, threads=4) as posters:
            posters.wait(202, 30)
            first.kill()  # with requests in flight
            answered = posters.count(202)
            collectors.append(CollectorProcess(first.env, tmp_path, web_port=first.web_port, name="second").start())
            posters.wait(202, answered + 30)
    finally:
        for collector in collectors:
            collector.kill()
    assert posters.count(None) >= 1  # requests without an answer: in flight at the kill, or refused until the restart
    records = records_until_quiet(stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic)
    stored, acknowledged = session_ids([r.value for r in records]), session_ids(posters.acknowledged)
    assert not acknowledged - stored
    assert not set(stored) - set(acknowledged) - set(session_ids(posters.unanswered))
