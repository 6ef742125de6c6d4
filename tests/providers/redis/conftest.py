"""Fixtures of the Redis provider's tests (the servers themselves are tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from unistore.providers import RedisStorageProvider


@pytest.fixture
async def made() -> AsyncIterator[list[RedisStorageProvider]]:
    """Providers to clean up after the test."""
    providers: list[RedisStorageProvider] = []
    yield providers
    for provider in providers:
        await provider.cleanup()


@pytest.fixture
def cluster_raw(redis_cluster: list[int]) -> Iterator[redis.RedisCluster]:
    """A plain redis-py client of the session's cluster."""
    client = redis.RedisCluster(host="127.0.0.1", port=redis_cluster[0])
    yield client
    client.close()
