"""The HTTP collector on the real broker and worker: posted events land in ClickHouse with exact counts,
each request as one record batch; every refusal code from a real request; and nothing of a sender (its
address, its headers) in the logs, the metrics or the Kafka records."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections import Counter

import pytest
from conftest import stored_quality
from test_collector_support import end_offsets, metric, post, request, run_events, running_collector
from test_sdk_delivery import records_until_quiet

from bench.sdk_client import closed_port

pytestmark = pytest.mark.integration


def test_posted_events_land_in_clickhouse_with_exact_counts_one_record_batch_per_request(stack_factory, tmp_path):
    stack = stack_factory(partitions=2)
    started_ms = int(time.time() * 1000)
    agents, teams, workflows = run_events("a", 150), run_events("t", 120, "team"), run_events("w", 30, "workflow")
    not_json, not_objects = [b"this is not json", b'{"type": "agent"', b"\xff\xfe garbage"], [b"[1, 2]", b"7"]
    with running_collector(stack.env, tmp_path) as collector:
        answers = [
            post(collector.url, agents[:100]),
            post(collector.url, agents[100:], gzipped=True),
            post(collector.url, teams + not_json + not_objects[:1], ndjson=True, gzipped=True),
            post(collector.url, workflows + not_objects[1:], gzipped=True),
        ]
        exposition = collector.metrics()
    assert [(a.status, a.body) for a in answers] == [(202, {"accepted": n}) for n in (100, 50, 124, 31)]
    assert metric(exposition, "kern_collector_events_total") == 305
    assert metric(exposition, "kern_collector_requests_total", code="202", reason="accepted") == 4

    records = stack.read_topic(stack.settings.topic, 305)
    assert {(r.key, tuple(r.headers)) for r in records} == {(None, ())}  # the event's bytes, nothing else
    assert all(started_ms <= r.timestamp <= time.time() * 1000 for r in records)  # stamped on arrival
    by_value = {r.value: (r.partition, r.offset) for r in records}
    for batch in (agents[:100], agents[100:], teams + not_json + not_objects[:1]):  # one batch, whole, in order
        places = [by_value[value] for value in batch]
        assert len({p for p, _ in places}) == 1 and [o for _, o in places] == list(
            range(places[0][1], places[0][1] + len(batch))
        )

    worker = stack.worker()
    worker.wait_flushed(end_offsets(records))
    worker.stop()
    with stack.clickhouse() as client:
        runs = dict(client.query("SELECT kind, sum(runs) FROM kern_telemetry.runs_minute GROUP BY kind").result_rows)
        quality = stored_quality(client)
    assert runs == {"agent": 150, "team": 120, "workflow": 30}
    assert {reason: n for (_, reason), n in quality.items() if reason in ("not_json", "not_utf8", "not_object")} == {
        "not_json": 2,
        "not_utf8": 1,
        "not_object": 2,
    }


def test_every_refusal_is_a_real_answer_with_its_code_reason_and_headers(stack_factory, tmp_path):
    stack = stack_factory(partitions=2)
    limits = {
        "KERN_COLLECTOR_MAX_BODY_BYTES": "65536",
        "KERN_COLLECTOR_MAX_BATCH_BYTES": "200000",
        "KERN_COLLECTOR_MAX_BATCH_EVENTS": "10",
        "KERN_MAX_EVENT_BYTES": "2048",
        "KERN_COLLECTOR_AUTH_TOKEN": "open-sesame",
        "KERN_COLLECTOR_RATE_LIMIT_PER_SECOND": "0.5",
        "KERN_COLLECTOR_RATE_LIMIT_BURST": "5",
    }
    token = {"Authorization": "Bearer open-sesame"}
    events = run_events("r", 3)
    sources = iter(f"127.0.0.{n}" for n in range(10, 250))  # one client each: the rate limit is per client

    def posted(body: bytes, headers: dict[str, str], **kwargs) -> tuple:
        answer = request(
            collector.url, body, {"Content-Type": "application/json", **headers}, source=next(sources), **kwargs
        )
        return answer.status, answer.body.get("error")

    with running_collector(stack.env, tmp_path, **limits) as collector:
        assert post(collector.url, events, headers=token).status == 202
        assert posted(b"[" + b",".join(events) + b"]", {}) == (401, "unauthorized")
        assert posted(b"[]", {"Authorization": "Bearer guess"}) == (401, "unauthorized")
        assert request(collector.url, b"[]").headers["www-authenticate"] == "Bearer"
        assert posted(b"[]", {**token, "Content-Type": "text/plain"}) == (415, "unsupported_media_type")
        assert posted(b"[]", {**token, "Content-Encoding": "br"}) == (415, "unsupported_media_type")
        assert posted(b"[" + b" " * 70_000 + b"]", token) == (413, "body_too_large")  # declared length
        chunks = (b" " * 8192 for _ in range(10))  # chunked, no declared length: refused while reading
        assert posted(chunks, token) == (413, "body_too_large")
        rss = metric(collector.metrics(), "process_resident_memory_bytes")
        bomb = gzip.compress(b" " * 60_000_000, 9)  # 60 MB in 58 KB
        started = time.monotonic()
        assert posted(bomb, {**token, "Content-Encoding": "gzip"}) == (413, "batch_too_large")
        assert time.monotonic() - started < 2
        assert metric(collector.metrics(), "process_resident_memory_bytes") - rss < 20e6  # never inflated whole
        assert posted(b"[" + b",".join(run_events("many", 11)) + b"]", token) == (413, "too_many_events")
        assert posted(b'[{"data": "' + b"x" * 3000 + b'"}]', token) == (413, "event_too_large")
        assert posted(b'[{"type": "agent"}', token) == (400, "bad_framing")
        assert posted(b'{"type": "agent"}', token) == (400, "bad_framing")  # not an array
        assert posted(b"[" * 1000 + b"]" * 1000, token) == (400, "bad_framing")  # deeper than msgspec goes
        assert posted(b"[\xff]", token) == (400, "bad_framing")  # not UTF-8
        assert posted(b"[" + b",".join(events) + b"]", {**token, "Content-Encoding": "gzip"}) == (400, "bad_gzip")
        assert posted(gzip.compress(b"[]")[:-6], {**token, "Content-Encoding": "gzip"}) == (400, "bad_gzip")
        assert posted(b"[]", token) == (400, "no_events")
        with socket.create_connection(("127.0.0.1", collector.web_port)) as sender:  # gone before its body came
            sender.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\nAuthorization: Bearer open-sesame\r\n\r\n["
            )
            time.sleep(0.2)

        limited = [request(collector.url, b"[]", source="127.0.0.9") for _ in range(6)]  # a burst of 5, then 429
        assert [a.status for a in limited] == [401] * 5 + [429]
        assert limited[-1].body["error"] == "rate_limited" and int(limited[-1].headers["retry-after"]) >= 1
        assert request(collector.url, b"[]", source="127.0.0.8").status == 401  # another client is not limited

        health = request(collector.url, method="GET", path="/health")
        exposition = collector.metrics()
        log = collector.log_path.read_text()
    assert (health.status, health.body["status"], health.body["kafka"]) == (200, "ok", "ok")
    assert health.headers["server"] == limited[-1].headers["server"] == "kern-collector"  # no software, no version
    refused = {
        (code, reason): metric(exposition, "kern_collector_requests_total", code=code, reason=reason)
        for code, reason in (
            ("401", "unauthorized"),
            ("413", "body_too_large"),
            ("413", "batch_too_large"),
            ("400", "bad_gzip"),
            ("400", "bad_framing"),
            ("400", "incomplete_body"),
            ("429", "rate_limited"),
        )
    }
    assert refused == {
        ("401", "unauthorized"): 9,
        ("413", "body_too_large"): 2,
        ("413", "batch_too_large"): 1,
        ("400", "bad_gzip"): 2,
        ("400", "bad_framing"): 4,
        ("400", "incomplete_body"): 1,
        ("429", "rate_limited"): 1,
    }
    assert " ERROR " not in log
    assert metric(exposition, "kern_collector_events_total") == 3  # only the accepted batch was produced
    stack.read_topic(stack.settings.topic, 3)


def test_503_while_the_broker_is_unreachable_or_the_producer_buffer_full_and_410_to_stop(stack_factory, tmp_path):
    stack = stack_factory(partitions=2)
    unreachable = {**stack.env, "KERN_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}"}
    with running_collector(unreachable, tmp_path, "down", ready=False, KERN_COLLECTOR_RETRY_AFTER_SECONDS="7") as down:
        answer = post(down.url, run_events("down", 2))
        health = request(down.url, method="GET", path="/health")
    assert (answer.status, answer.body["error"], answer.headers["retry-after"]) == (503, "kafka_unavailable", "7")
    assert (health.status, health.body["status"]) == (503, "degraded")

    with running_collector(stack.env, tmp_path, "full", KERN_COLLECTOR_MAX_PENDING_BYTES="1") as full:
        answers: list = []
        together = threading.Barrier(12)

        def client(i: int) -> None:
            together.wait()
            answers.append(post(full.url, run_events(f"f{i}", 100)))

        clients = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
    codes = Counter((a.status, a.body.get("error", "accepted"), a.headers.get("retry-after")) for a in answers)
    assert codes[(202, "accepted", None)] >= 1 and codes[(503, "buffer_full", "5")] >= 1
    assert sum(codes.values()) == 12 and set(codes) <= {(202, "accepted", None), (503, "buffer_full", "5")}

    with running_collector(stack.env, tmp_path, "stopped", KERN_COLLECTOR_STOP_SENDING="true") as stopped:
        answer = post(stopped.url, run_events("stop", 2))
    assert (answer.status, answer.body["error"]) == (410, "stop_sending")
    accepted = sum(n for (status, _, _), n in codes.items() if status == 202)
    assert len(records_until_quiet(stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic, 1.0)) == 100 * accepted


SENTINEL_AGENT = "SNTNL7q-browser/9.9 (sentinel-os)"
SENTINEL_FORWARDED = "198.51.100.231"  # TEST-NET-2: only this test uses it


def test_senders_address_and_headers_are_in_no_log_metric_or_record(stack_factory, tmp_path):
    """From 127.0.0.77, with a sentinel User-Agent and X-Forwarded-For, through every path a request can
    take: accepted, refused by framing, rate limited (by the X-Forwarded-For address, as behind a trusted
    proxy), and malformed HTTP that aiohttp itself rejects (its own log line names the peer). The collector
    logs at debug level."""
    stack = stack_factory(partitions=2)
    headers = {"User-Agent": SENTINEL_AGENT, "X-Forwarded-For": SENTINEL_FORWARDED, "X-Real-IP": SENTINEL_FORWARDED}
    with running_collector(
        stack.env,
        tmp_path,
        KERN_LOG_LEVEL="debug",
        KERN_COLLECTOR_RATE_LIMIT_PER_SECOND="0.1",
        KERN_COLLECTOR_RATE_LIMIT_BURST="3",
        KERN_COLLECTOR_CLIENT_ADDRESS_HEADER="X-Forwarded-For",
    ) as collector:
        sender = {"headers": headers, "source": "127.0.0.77"}
        answers = [
            post(collector.url, run_events("private", 5), **sender),
            post(collector.url, [b"{broken"], **sender),
            post(collector.url, run_events("private-more", 5), ndjson=True, **sender),
            post(collector.url, run_events("limited", 5), **sender),
            post(
                collector.url,
                run_events("proxied", 5),
                source="127.0.0.77",  # another client, same proxy
                headers={**headers, "X-Forwarded-For": f"{SENTINEL_FORWARDED}, 192.0.2.8"},
            ),
        ]
        for line in (
            b"G@RBAGE /v1/events HTTP/1.1",
            b"POST /v1/events HTTP/1.1\r\nBad Header\x01: 1",
            b"POST /v1/events HTTP/1.1\r\nContent-Length: nope",
        ):
            with socket.create_connection(("127.0.0.1", collector.web_port), source_address=("127.0.0.77", 0)) as raw:
                raw.sendall(
                    line + f"\r\nUser-Agent: {SENTINEL_AGENT}\r\nX-Forwarded-For: {SENTINEL_FORWARDED}\r\n\r\n".encode()
                )
                answer = raw.recv(4096).split(b"\r\n")
                assert answer[0].endswith(b" 400 Bad Request") and b"Server: kern-collector" in answer
        exposition = collector.metrics()
        collector.stop()
    assert [a.status for a in answers] == [202, 400, 202, 429, 202]
    assert metric(exposition, "kern_collector_requests_total", code="400", reason="bad_request") == 3  # aiohttp's
    records = records_until_quiet(stack.env["KERN_BOOTSTRAP_SERVERS"], stack.settings.topic, 1.0)
    assert len(records) == 15
    log = collector.log_path.read_text()
    assert "Error handling request" in log and "127.0.0.1" in log  # aiohttp's error path ran; the broker is named
    assert " ERROR " not in log  # malformed HTTP is logged at debug level
    for sentinel in ("127.0.0.77", SENTINEL_AGENT, "SNTNL7q", SENTINEL_FORWARDED, "192.0.2.8"):
        assert sentinel not in log and sentinel not in exposition
        assert not [r for r in records if sentinel.encode() in r.value + (r.key or b"") + repr(r.headers).encode()]
