"""Opt-out before anything happens, debug mode, and the first-run notice, each in a fresh interpreter:
threads, file descriptors and sockets (/proc/self/fd), sys.modules, log records and stderr."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest
from kern_telemetry_client import Stats, notice
from kern_telemetry_client.transport import THREAD_NAME
from test_sdk_delivery import records_until_quiet
from test_sdk_standins import client_env, run_python

pytestmark = pytest.mark.integration

# A host that captures 40 runs of each kind and a launch, then reports what the process holds.
PROBE = r"""
import json, logging, os, sys, threading

records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record)
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.DEBUG)

def descriptors():
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return found

before = descriptors()
import kern_telemetry_client
from kern_telemetry_client import KafkaSink, Telemetry
from test_sdk_standins import Agent, AgentOS, Model, PostgresDb, Slack, Team, Workflow

on, switch = sys.argv[3] == "on", sys.argv[4]
if switch == "disable()":
    kern_telemetry_client.disable()
model = Model("openai", "OpenAIResponses", "gpt-5.2")
agent = Agent(model, db=PostgresDb(), tools=[], telemetry=on)
team = Team(model, [agent], telemetry=on)
workflow = Workflow(telemetry=on)
agent_os = AgentOS([agent], [team], [workflow], [Slack()], telemetry=on)
telemetry = Telemetry("1.0.0", KafkaSink(sys.argv[1], topic=sys.argv[2]), enabled=switch != "enabled=False")
for i in range(40):
    telemetry.agent_run(agent, f"session-{i}", f"run-{i}")
    telemetry.team_run(team, f"session-{i}", f"run-{i}")
    telemetry.workflow_run(workflow, f"session-{i}", f"run-{i}")
telemetry.os_launch(agent_os)
flushed = telemetry.flush(10.0)
after = descriptors()
print(json.dumps({
    "threads": sorted(thread.name for thread in threading.enumerate()),
    "new_descriptors": sorted(target for fd, target in after.items() if before.get(fd) != target),
    "kafka_imported": any(name == "kafka" or name.startswith("kafka.") for name in sys.modules),
    "queued": telemetry._transport is not None,
    "records": [f"{r.name}:{r.levelname}" for r in records if r.levelno > logging.DEBUG],
    "flushed": flushed,
}))
"""

NOTHING = {
    "threads": ["MainThread"],
    "new_descriptors": [],
    "kafka_imported": False,
    "queued": False,
    "records": [],
    "flushed": True,
}


def probe(broker, env: dict, instance: str = "on", switch: str = "none") -> tuple[dict, str]:
    """Run PROBE in a fresh interpreter against the real broker, with `switch` ("enabled=False" on the
    instance, "disable()" before it, or "none"); (what it holds, its stderr)."""
    topic = f"sdk.optout.{uuid.uuid4().hex[:8]}"
    argv = ["probe", broker.bootstrap_servers, topic, instance, switch]
    code = f"import sys; sys.argv = {argv!r}\n" + PROBE
    ran = run_python(code, env)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout), ran.stderr


OFF = {
    "AGNO_TELEMETRY=false": ({"AGNO_TELEMETRY": "false"}, "on"),
    "AGNO_TELEMETRY=False": ({"AGNO_TELEMETRY": "False"}, "on"),
    "KERN_TELEMETRY=0": ({"KERN_TELEMETRY": "0"}, "on"),
    "KERN_TELEMETRY=no": ({"KERN_TELEMETRY": "no"}, "on"),
    "KERN_TELEMETRY=OFF": ({"KERN_TELEMETRY": "OFF"}, "on"),
    "DO_NOT_TRACK=1": ({"DO_NOT_TRACK": "1"}, "on"),
    "DO_NOT_TRACK=true": ({"DO_NOT_TRACK": "true"}, "on"),
    "telemetry=False on every object": ({}, "off"),
}
SWITCHES = ("enabled=False", "disable()")  # in code: for tests of the SDK's hosts


@pytest.mark.parametrize("case", [*OFF, *SWITCHES])
def test_off_means_nothing_happens(broker, tmp_path, case):
    variables, instance = OFF.get(case, ({}, "on"))
    env = client_env(tmp_path, notice_shown=False, **variables)
    held, stderr = probe(broker, env, instance, case if case in SWITCHES else "none")
    assert held == NOTHING
    assert stderr == ""
    assert not (tmp_path / "config").exists() and not (tmp_path / "state").exists()  # no notice, no ledger


def test_the_probe_sees_what_an_enabled_client_starts(broker, tmp_path):
    """The control: the same probe, telemetry on, sees the worker thread, kafka-python, its sockets."""
    held, stderr = probe(broker, client_env(tmp_path))
    assert held["threads"] == ["MainThread", "kern-telemetry-client", "kern-telemetry-client-network-thread"]
    assert held["kafka_imported"] and held["queued"] and held["flushed"]
    assert any(target.startswith("socket:") for target in held["new_descriptors"])
    assert held["records"] == [] and stderr == ""


def test_debug_mode_prints_every_payload_and_sends_nothing(broker, tmp_path):
    held, stderr = probe(broker, client_env(tmp_path, notice_shown=False, KERN_TELEMETRY_DEBUG="1"))
    assert held == NOTHING
    lines = stderr.splitlines()
    assert all(line.startswith("kern-telemetry debug: {") for line in lines)
    kinds = [json.loads(line.split(": ", 1)[1])["type"] for line in lines]
    assert kinds == ["agent", "team", "workflow"] * 40 + ["os"]
    assert not (tmp_path / "config").exists()  # no notice in debug mode: nothing is sent


def test_the_first_run_notice_shows_once_per_machine_and_never_when_off(broker, tmp_path):
    first, stderr = probe(broker, client_env(tmp_path, notice_shown=False))
    assert first["flushed"] and stderr == notice.TEXT
    assert (tmp_path / "config" / "kern" / notice.MARKER).is_file()
    _, stderr = probe(broker, client_env(tmp_path, notice_shown=False))
    assert stderr == ""  # the same machine (config directory): shown once
    off = tmp_path / "off"
    _, stderr = probe(broker, client_env(off, notice_shown=False, AGNO_TELEMETRY="false"))
    assert stderr == "" and not (off / "config").exists()


DISABLED_LATER = r"""
import dataclasses, json, sys, threading
import kern_telemetry_client
from kern_telemetry_client import KafkaSink, Telemetry
from test_sdk_standins import Agent, Model

before = Telemetry("1.0.0", KafkaSink(sys.argv[1], sys.argv[2]))
agent = Agent(Model("openai", "OpenAIResponses", "gpt-5.2"))
for i in range(10):
    before.agent_run(agent, "session", f"before-{i}")
kern_telemetry_client.disable()
after = Telemetry("1.0.0", KafkaSink(sys.argv[1], sys.argv[2]))
for i in range(10):
    before.agent_run(agent, "session", f"after-{i}")
    after.agent_run(agent, "session", f"after-{i}")
print(json.dumps([dataclasses.asdict(before.stats()), dataclasses.asdict(after.stats()),
                  sorted(t.name for t in threading.enumerate())]))
"""


def test_disable_stops_capturing_and_what_was_captured_is_still_delivered(broker, tmp_path):
    topic = f"sdk.optout.{uuid.uuid4().hex[:8]}"
    code = f"import sys; sys.argv = ['host', {broker.bootstrap_servers!r}, {topic!r}]\n" + DISABLED_LATER
    ran = run_python(code, client_env(tmp_path))
    assert ran.returncode == 0 and ran.stderr == ""
    before, after, threads = json.loads(ran.stdout)
    assert before["captured"] == 10 and after == dataclasses.asdict(Stats())  # the second never started
    assert threads.count(THREAD_NAME) == 1
    assert len(records_until_quiet(broker.bootstrap_servers, topic, 1.0)) == 10  # the first's, sent at exit
