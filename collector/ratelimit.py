"""Per-client rate limiting in bounded, expiring memory that holds no address.

A token bucket per client: `burst` requests at once, then `rate` per second. The client is known by a
keyed BLAKE2b digest of its address; the key is random per process and never stored, so the table can
be neither read back into addresses nor linked across restarts. Nothing here is logged or exported.

The table is ordered by last request. A bucket idle long enough to have refilled is the same as no
bucket, so it is forgotten; beyond `capacity` clients the longest idle is forgotten too (that client
starts again with a full bucket). Memory: at most `capacity` entries of ~200 bytes.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict


class RateLimiter:
    def __init__(self, rate: float, burst: int, capacity: int):
        self.rate, self.burst, self.capacity = rate, burst, capacity
        self._refill_s = burst / rate
        self._key = os.urandom(32)
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # digest -> (tokens, last request)

    def __len__(self) -> int:
        return len(self._buckets)

    def wait(self, address: str) -> float:
        """Take a token for this client: 0 if it may go on, else the seconds until it may."""
        now = time.monotonic()
        client = hashlib.blake2b(address.encode(), key=self._key, digest_size=16).digest()
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
        self._forget(now)
        return wait

    def _forget(self, now: float) -> None:
        """Drop refilled buckets and, beyond capacity, the longest idle: both from the old end."""
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets))
            if len(buckets) <= self.capacity and now - buckets[oldest][1] < self._refill_s:
                return
            del buckets[oldest]
