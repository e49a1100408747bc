"""In-process token buckets, one per client key (bundle fetches; docs/provisioning.md).

Per service process: behind several replicas each one limits on its own, so the fleet-wide
allowance is replicas x capacity. Good enough for one node; a shared limiter (Redis, the reverse
proxy) is the production answer.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

__all__ = ["TokenBuckets"]

# Clients tracked at once; the least recently seen is forgotten beyond this (a forgotten client
# starts again with a full bucket, so the bound only limits memory).
_MAX_CLIENTS = 10_000


class TokenBuckets:
    def __init__(self, capacity: float, per_second: float, clock: object = time.monotonic) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Takes one token from `key`'s bucket; False when it is empty."""
        with self._lock:
            now = self._clock()  # type: ignore[operator]
            tokens, at = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.per_second)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            if len(self._buckets) > _MAX_CLIENTS:
                self._buckets.popitem(last=False)
            return allowed
