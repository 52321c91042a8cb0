"""Processes the dev stack, tests and benchmarks start on loopback ports, and stop by the process id
they started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_port_free(host: str, port: int) -> None:
    """Raise OSError when something listens on the port already (so we never mistake it for ours).
    SO_REUSEADDR as every server sets it: connections of a crashed predecessor in TIME_WAIT do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s") from None
            time.sleep(0.05)


def stop(process: subprocess.Popen | None, timeout: float = 5.0) -> bool:
    """SIGTERM the process (its whole group when it leads one), wait up to `timeout`, then SIGKILL.
    Returns whether it exited on SIGTERM."""
    if process is None or process.poll() is not None:
        return True
    _signal(process, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        kill(process)
        return False


def kill(process: subprocess.Popen | None) -> None:
    """SIGKILL: a crash."""
    if process is not None and process.poll() is None:
        _signal(process, signal.SIGKILL)
        process.wait(timeout=10)


def _signal(process: subprocess.Popen, signum: int) -> None:
    if os.getpgid(process.pid) == process.pid:  # started with start_new_session: its children too
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)


@dataclass
class ServiceProcess:
    """A `kern-telemetry <COMMAND>` subprocess with its own environment, serving `/health` and `/metrics`
    on `web_port` (passed in PORT_VARIABLE)."""

    COMMAND: ClassVar[str]
    PORT_VARIABLE: ClassVar[str]

    env: dict[str, str]
    workdir: Path
    web_port: int = field(default_factory=free_port)
    name: str = "service"
    process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> ServiceProcess:
        env = {**os.environ, **self.env, self.PORT_VARIABLE: str(self.web_port)}
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", self.COMMAND],
                env=env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # 503 while degraded still carries the report
            return json.loads(error.read())
        except (OSError, ValueError):
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            return response.read().decode()

    def wait_health(
        self, predicate: Callable[[dict], bool], timeout: float = 60.0, what: str = "the awaited health"
    ) -> dict:
        """Poll `/health` until `predicate(report)` holds; fails if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        report = None
        while time.monotonic() < deadline:
            self.assert_running()
            report = self.health()
            if report and predicate(report):
                return report
            time.sleep(0.05)
        raise TimeoutError(
            f"{self.name}: {what} did not come in {timeout:.0f} s; last health {report}; log {self.log_path}"
        )

    def assert_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.process and self.process.returncode}); log {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: a crash."""
        kill(self.process)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (a worker flushes and commits, a collector answers what is in flight). Fails if
        it had to be killed."""
        if not stop(self.process, timeout):
            raise TimeoutError(f"{self.name} did not exit within {timeout} s of SIGTERM; log {self.log_path}")
        return self.process.returncode if self.process else 0


@dataclass
class WorkerProcess(ServiceProcess):
    """A `kern-telemetry worker` subprocess, watched through `/health`."""

    COMMAND: ClassVar[str] = "worker"
    PORT_VARIABLE: ClassVar[str] = "KERN_WEB_PORT"
    name: str = "worker"

    def wait_flushed(self, end_offsets: dict[int, int], timeout: float = 120.0) -> dict:
        """Wait until this worker's landed flushes reach `end_offsets` (partition -> offset)."""
        return self.wait_health(lambda report: reached([report], end_offsets), timeout, f"flushes up to {end_offsets}")

    def wait_events(self, count: int, timeout: float = 120.0) -> dict:
        """Wait until this worker has flushed at least `count` events (replays included)."""
        return self.wait_health(lambda report: report["events_flushed"] >= count, timeout, f"{count} events flushed")


@dataclass
class CollectorProcess(ServiceProcess):
    """A `kern-telemetry collect` subprocess: SDKs POST to `{url}/v1/events`."""

    COMMAND: ClassVar[str] = "collect"
    PORT_VARIABLE: ClassVar[str] = "KERN_COLLECTOR_PORT"
    name: str = "collector"

    def start(self, timeout: float = 20.0) -> CollectorProcess:
        """Start, and wait until it answers (refusing a port something else holds: never mistake it for ours)."""
        ensure_port_free("127.0.0.1", self.web_port)
        super().start()
        try:
            self.wait_health(lambda report: True, timeout, "an answer")
        except (TimeoutError, RuntimeError):
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> dict:
        """Wait until the broker takes its batches."""
        return self.wait_health(lambda report: report["status"] == "ok", timeout, "a broker that answers")


def flushed_offsets(reports: list[dict]) -> dict[int, int]:
    """The furthest landed flush of each partition over several workers' health reports."""
    flushed: dict[int, int] = {}
    for report in reports:
        for partition, offset in (report or {}).get("flushed_offsets", {}).items():
            flushed[int(partition)] = max(flushed.get(int(partition), 0), offset)
    return flushed


def reached(reports: list[dict], end_offsets: dict[int, int]) -> bool:
    flushed = flushed_offsets(reports)
    return all(flushed.get(p, 0) >= o for p, o in end_offsets.items() if o)


def wait_flushed_together(workers: list[WorkerProcess], end_offsets: dict[int, int], timeout: float = 120.0) -> list:
    """Wait until every worker answers and together they have flushed up to `end_offsets` (a worker that
    resumes where the ledger ends has landed it already); returns their last reports."""
    deadline = time.monotonic() + timeout
    while True:
        for worker in workers:
            worker.assert_running()
        reports = [report for worker in workers if (report := worker.health())]
        if len(reports) == len(workers) and reached(reports, end_offsets):
            return reports
        if time.monotonic() > deadline:
            raise TimeoutError(f"flushed {flushed_offsets(reports)}, expected {end_offsets}")
        time.sleep(0.1)
