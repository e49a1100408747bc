"""Token buckets, one per client key (bundle fetches, enrollments, the service channel, reports;
docs/provisioning.md).

TokenBuckets keeps them in the process: behind several replicas each one limits on its own, so
the fleet-wide allowance is replicas x capacity. SharedTokenBuckets keeps them in Redis
(E2EE_PROV_RATE_LIMIT_STORE=redis): one bucket per key for every replica, refilled by Redis's
clock in one atomic script; when Redis does not answer it falls back to the process's buckets for
a while (the limit becomes per replica again, never absent).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from typing import Any

__all__ = ["SharedTokenBuckets", "TokenBuckets", "make_buckets"]

log = logging.getLogger(__name__)

# Clients tracked at once; the least recently seen is forgotten beyond this (a forgotten client
# starts again with a full bucket, so the bound only limits memory).
_MAX_CLIENTS = 10_000
# Seconds a replica waits for Redis before it takes its own bucket, and stays on its own buckets
# after a failure before it asks Redis again: a Redis outage costs one slow request per period.
REDIS_TIMEOUT = 0.5
REDIS_RETRY_AFTER = 5.0

# KEYS[1] the bucket, ARGV capacity, refill per second, expiry ms. Redis's own clock (TIME), so
# replicas with skewed clocks share one bucket; the key expires once it would be full again (a
# missing key is a full bucket), so idle clients cost Redis nothing.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local capacity, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or capacity
local at = tonumber(b[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return allowed
"""


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


class SharedTokenBuckets(TokenBuckets):
    """The buckets named `name` in Redis (keys <prefix><name>:<client key>); the in-process ones
    of TokenBuckets only while Redis does not answer."""

    def __init__(self, redis: Any, prefix: str, name: str, capacity: float, per_second: float) -> None:
        super().__init__(capacity, per_second)
        self._redis = redis
        self._prefix = "%s%s:" % (prefix, name)
        self._take = redis.register_script(_TAKE)
        self._expiry_ms = int(math.ceil(capacity / per_second * 1000)) + 1000
        self._local_until = 0.0  # monotonic time until which Redis is not asked (after a failure)

    def allow(self, key: str) -> bool:
        if time.monotonic() >= self._local_until:
            try:
                return bool(self._take(keys=[self._prefix + key],
                                       args=[repr(self.capacity), repr(self.per_second), self._expiry_ms]))
            except Exception as e:  # redis.RedisError, OSError: the store is away
                self._local_until = time.monotonic() + REDIS_RETRY_AFTER
                log.warning("rate limit store unavailable (%s): per-process buckets for %.0f s",
                            type(e).__name__, REDIS_RETRY_AFTER)
        return super().allow(key)


def make_buckets(settings: Any, redis: Any, name: str, capacity: float, per_second: float) -> TokenBuckets:
    """The buckets `name` in the store the settings choose (`redis` is the client when it is Redis)."""
    if settings.rate_limit_store == "redis":
        return SharedTokenBuckets(redis, settings.rate_limit_prefix, name, capacity, per_second)
    return TokenBuckets(capacity, per_second)


def redis_client(url: str) -> Any:
    """A Redis client (a thread-safe connection pool) with short timeouts."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
