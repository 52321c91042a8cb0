"""Kern usage telemetry for SDKs: the event contract, the values it admits, and the client that builds
and sends the events (`Telemetry`, with `HttpSink` or `KafkaSink`). Importing this package starts nothing."""

import logging

from .client import Telemetry, disable
from .http_sink import HttpSink
from .kafka_sink import KafkaSink
from .transport import Stats

# A library's logger: silent unless the host configures logging (no "last resort" output on stderr).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["HttpSink", "KafkaSink", "Stats", "Telemetry", "disable"]
