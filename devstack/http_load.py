"""The load generator's HTTP path (`kern-telemetry produce --via-collector URL`): events posted to a
collector in batches through the SDK client's own HTTP channel (`kern_telemetry_client.http_sink`), paced
like the Kafka path (`pipeline.kafka.produce`)."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

from kern_telemetry_client import HttpSink
from kern_telemetry_client.transport import BATCH_SIZE

RETRY_PAUSE_S = 0.5  # the least pause before posting a batch again (no connection, 429, 503)


def post(
    url: str,
    values: Iterable[bytes],
    *,
    max_event_bytes: int,
    rate: float = 0,
    token: str | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> Counter:
    """Post `values` to the collector at `url` in batches of BATCH_SIZE NDJSON lines, each batch posted again
    while the answer says nothing was written. Returns the counts: `accepted`; `failed` (refused, or no
    answer); `skipped`: values a batch cannot carry (empty, holding a newline, or larger than
    `max_event_bytes`: an SDK client drops those itself); `stopped` if the collector said stop sending."""
    channel = HttpSink(url, token=token).open()
    counts: Counter = Counter()
    started, sent = time.monotonic(), 0
    values = iter(values)
    try:
        while (batch := list(itertools.islice(values, BATCH_SIZE))) and not (stop and stop.is_set()):
            records = [value for value in batch if value and len(value) <= max_event_bytes and b"\n" not in value]
            counts["skipped"] += len(batch) - len(records)
            while records and not channel.send(
                records, lambda _: counts.update(("accepted",)), lambda _: counts.update(("failed",))
            ):
                if channel.retry_after == math.inf:
                    counts["stopped"] += len(records)
                    return counts
                if stop is not None and stop.is_set():
                    return counts
                time.sleep(max(channel.retry_after, RETRY_PAUSE_S))
            sent += len(batch)
            if progress is not None:
                progress(len(batch))
            if rate and (ahead := sent / rate - (time.monotonic() - started)) > 0:
                time.sleep(ahead)
    finally:
        channel.close()
    return counts
