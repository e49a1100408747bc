"""Client addresses behind trusted proxies only (core/proxies.py) and token buckets in Redis
(core/ratelimit.py SharedTokenBuckets, the machine's Redis at 127.0.0.1:6379), docs/provisioning.md
"Replicas"."""
from __future__ import annotations

import secrets

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from e2ee_provisioning.core.config import Settings
from e2ee_provisioning.core.proxies import TrustedProxies
from e2ee_provisioning.core.ratelimit import SharedTokenBuckets, redis_client


def _request(peer: str, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "client": (peer, 40000), "headers": headers})


@pytest.mark.parametrize("peer, forwarded, client", [
    ("10.0.0.5", ["203.0.113.7"], "10.0.0.5"),  # not a trusted proxy: its header is the client's own
    ("127.0.0.1", [], "127.0.0.1"),  # a trusted proxy that forwarded nothing
    ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
    ("127.0.0.1", ["1.2.3.4, 203.0.113.7"], "203.0.113.7"),  # what the client wrote left of the proxy's entry
    ("127.0.0.1", ["1.2.3.4", "203.0.113.7, 192.168.1.2"], "203.0.113.7"),  # two headers; a trusted hop
    ("127.0.0.1", ["192.168.1.2"], "192.168.1.2"),  # every hop trusted: the leftmost
    ("127.0.0.1", ["203.0.113.7, not-an-address"], "127.0.0.1"),  # garbage: the last trusted hop
    ("127.0.0.1", ["2001:db8::1"], "2001:db8::1"),
])
def test_forwarded_addresses_are_believed_from_trusted_proxies_only(peer: str, forwarded: list[str], client: str) -> None:
    proxies = TrustedProxies.parse("127.0.0.1, 192.168.0.0/16")
    assert proxies.client_address(_request(peer, *forwarded)) == client


def test_no_trusted_proxy_means_the_header_is_ignored() -> None:
    assert TrustedProxies.parse("").client_address(_request("127.0.0.1", "203.0.113.7")) == "127.0.0.1"


def test_a_trusted_proxies_setting_that_is_not_addresses_is_refused() -> None:
    with pytest.raises(ValidationError, match="TRUSTED_PROXIES entry 2"):
        Settings(environment="development", trusted_proxies="10.0.0.1, proxy.example")


def test_buckets_in_redis_are_one_bucket_for_every_replica() -> None:
    redis = redis_client("redis://127.0.0.1:6379/0")
    prefix = "e2ee:test:%s:" % secrets.token_hex(6)
    try:
        replica_a = SharedTokenBuckets(redis, prefix, "enroll", 3, 0.001)
        replica_b = SharedTokenBuckets(redis, prefix, "enroll", 3, 0.001)
        taken = [(replica_a, replica_b)[i % 2].allow("203.0.113.7") for i in range(6)]
        assert taken == [True, True, True, False, False, False]
        assert replica_b.allow("203.0.113.8")  # another client's bucket
        assert 0 < redis.pttl(prefix + "enroll:203.0.113.7") <= 3000 * 1000 + 1000  # expires once full again
    finally:
        for key in redis.scan_iter(prefix + "*"):
            redis.delete(key)
        redis.close()


def test_a_redis_that_does_not_answer_leaves_the_process_buckets() -> None:
    # nothing listens on port 1: each replica limits on its own instead of not at all
    redis = redis_client("redis://127.0.0.1:1/0")
    buckets = SharedTokenBuckets(redis, "e2ee:test:", "enroll", 2, 0.001)
    assert [buckets.allow("203.0.113.7") for _ in range(3)] == [True, True, False]
    redis.close()
