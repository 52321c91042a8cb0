"""`make bench-sdk`: what the telemetry client costs its host, with the broker up, down and black-holed.

For each broker state, with and without the `crc32c` accelerator, and with crc32c and a trivial
`before_send` hook (it returns the event: the hook runs on the worker thread, so the caller's cost should
not move), a fresh process (so each measures its own CPU) builds and captures one agent run's event N
times at a steady rate while the worker thread drains the queue, and reports:

  caller median / p99   the caller's thread: building the payload + capturing it (µs per call)
  CPU per event         the process's CPU time (every thread: caller, worker, kafka-python's I/O) per
                        captured event, from the first measured capture until everything is settled
                        (up) or the last capture (down, black-holed: the worker is backing off)

States: up = the embedded broker; down = a closed port; black-holed = a port that accepts TCP
connections and never answers. "Without crc32c" runs with a shim on PYTHONPATH whose import fails, so
kafka-python falls back to its pure-Python CRC. Results: a table on stdout, JSON and Markdown in
bench/results/sdk-<stamp>.*. Targets: caller median <= 10 µs and p99 <= 100 µs in every state.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from types import SimpleNamespace

RESULTS = Path(__file__).parent / "results"
STATES = ("up", "down", "black-holed")
CAPTURES = 100_000
RATE = 10_000  # captures per second: a pace the worker sustains with the broker up
CHUNK = 100  # captures between pacing sleeps
TARGET_MEDIAN_US, TARGET_P99_US = 10.0, 100.0


def closed_port() -> int:
    """A loopback port nothing listens on (a broker that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BlackHole:
    """A loopback port that accepts TCP connections and never answers: a broker behind a dead proxy."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, name="black-hole", daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed by close()
            while True:
                self._held.append(self._listener.accept()[0])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for connection in self._held:
            connection.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bench_agent() -> SimpleNamespace:
    """An agent as an SDK holds it: a model, a database, tools, memory, a parser model."""

    class PostgresDb:
        url = "postgresql://user:secret@db/agents"

    model = SimpleNamespace(provider="OpenAI", name="OpenAIResponses", id="gpt-5.2", api_key="sk-not-sent")
    return SimpleNamespace(
        id="agent-7",
        model=model,
        db=PostgresDb(),
        tools=[print],
        memory_manager=object(),
        reasoning=True,
        knowledge=None,
        parser_model=model,
        output_model=None,
        instructions="You are helpful.",
        telemetry=True,
    )


# --- one configuration, in its own process ------------------------------------------------------------


def _unchanged(event: dict) -> dict:
    """The trivial before_send hook."""
    return event


def _child(state: str, bootstrap: str, topic: str, captures: int, rate: int, hook: bool) -> dict:
    from kafka.record import util as kafka_crc
    from kern_telemetry_client import KafkaSink, Telemetry

    telemetry = Telemetry("1.0.0", KafkaSink(bootstrap, topic), before_send=_unchanged if hook else None)
    agent = bench_agent()
    for i in range(1_000):  # warm-up: kafka-python imported, producer built, connection made (or not)
        telemetry.agent_run(agent, "session-1", f"warm-{i}")
    if state == "up":
        telemetry.flush(10.0)
    else:
        time.sleep(2.0)  # the worker meets the outage and starts backing off

    latencies = array("q", bytes(8 * captures))
    clock = time.perf_counter_ns
    run = telemetry.agent_run
    cpu, start = time.process_time(), time.monotonic()
    for chunk in range(0, captures, CHUNK):
        for i in range(chunk, min(chunk + CHUNK, captures)):
            t0 = clock()
            run(agent, "session-1", f"run-{i}")
            latencies[i] = clock() - t0
        ahead = start + (chunk + CHUNK) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    settled = telemetry.flush(60.0) if state == "up" else False
    cpu = time.process_time() - cpu
    wall = time.monotonic() - start
    dropped = telemetry.stats().dropped
    telemetry.close(0.0 if state != "up" else 10.0)
    ordered = sorted(latencies)
    return {
        "state": state,
        "crc32c": kafka_crc.crc32c_c is not None,
        "before_send": hook,
        "captures": captures,
        "rate": rate,
        "caller_median_us": ordered[len(ordered) // 2] / 1000,
        "caller_p99_us": ordered[int(len(ordered) * 0.99)] / 1000,
        "caller_max_us": ordered[-1] / 1000,
        "cpu_us_per_event": cpu / captures * 1e6,
        "wall_s": wall,
        "settled": settled,
        "dropped": {reason: n for reason, n in dropped.items() if n},
    }


# --- the parent: broker, black hole, one child per configuration ----------------------------------------


def _run_child(state: str, bootstrap: str, topic: str, accelerated: bool, hook: bool, args, workdir: Path) -> dict:
    # Its own state directory: drops a child leaves unreported at exit are not the next child's to claim.
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(workdir / "config"),
        "XDG_STATE_HOME": str(workdir / f"state-{state}-{accelerated}-{hook}"),
    }
    if not accelerated:
        shim = workdir / "no-crc32c"
        shim.mkdir(exist_ok=True)
        (shim / "crc32c.py").write_text('raise ImportError("crc32c hidden by the benchmark")\n')
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "bench.sdk_client",
        "--child",
        state,
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--captures",
        str(args.captures),
        "--rate",
        str(args.rate),
        *(["--before-send"] if hook else []),
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent
    )
    if done.returncode != 0:
        raise RuntimeError(f"{state} (crc32c={accelerated}) failed: {done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def _markdown(results: list[dict], args) -> str:
    lines = [
        f"# Telemetry client cost: {args.captures:,} agent-run captures at {args.rate:,}/s per row",
        "",
        "| broker | crc32c | before_send | caller median µs | caller p99 µs | caller max µs "
        "| CPU µs / event | dropped | settled |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        dropped = ", ".join(f"{k} {v:,}" for k, v in r["dropped"].items()) or "none"
        lines.append(
            f"| {r['state']} | {'yes' if r['crc32c'] else 'no'} | {'trivial' if r['before_send'] else '-'} | "
            f"{r['caller_median_us']:.2f} | "
            f"{r['caller_p99_us']:.2f} | {r['caller_max_us']:.0f} | {r['cpu_us_per_event']:.1f} | "
            f"{dropped} | {'yes' if r['settled'] else '-'} |"
        )
    met = all(r["caller_median_us"] <= TARGET_MEDIAN_US and r["caller_p99_us"] <= TARGET_P99_US for r in results)
    lines += [
        "",
        f"Targets (caller median <= {TARGET_MEDIAN_US:g} µs, p99 <= {TARGET_P99_US:g} µs in every "
        f"state): {'met' if met else 'NOT met'}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", type=int, default=CAPTURES)
    parser.add_argument("--rate", type=int, default=RATE)
    parser.add_argument("--child", choices=STATES, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--before-send", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.bootstrap, args.topic, args.captures, args.rate, args.before_send)))
        return

    from devstack.broker import EmbeddedBroker

    results = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker, BlackHole() as hole:
        workdir = Path(tmp)
        (workdir / "config" / "kern").mkdir(parents=True)
        (workdir / "config" / "kern" / "telemetry-notice-shown").touch()  # the notice is not what we measure
        addresses = {
            "up": broker.bootstrap_servers,
            "down": f"127.0.0.1:{closed_port()}",
            "black-holed": f"127.0.0.1:{hole.port}",
        }
        for state in STATES:
            for accelerated, hook in ((True, False), (False, False), (True, True)):
                result = _run_child(
                    state, addresses[state], f"bench.sdk.{int(time.time())}", accelerated, hook, args, workdir
                )
                print(
                    f"{state:12} crc32c={'yes' if result['crc32c'] else 'no ':3}  before_send="
                    f"{'trivial' if hook else '-      '}  median {result['caller_median_us']:6.2f} µs  p99 "
                    f"{result['caller_p99_us']:6.2f} µs  CPU {result['cpu_us_per_event']:6.1f} µs/event",
                    flush=True,
                )
                results.append(result)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    markdown = _markdown(results, args)
    (RESULTS / f"sdk-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"sdk-{stamp}.md").write_text(markdown)
    print("\n" + markdown + f"\nwritten: bench/results/sdk-{stamp}.md and .json")


if __name__ == "__main__":
    main()
