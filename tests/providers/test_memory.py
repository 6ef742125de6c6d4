"""What is particular to the in-memory provider."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from unistore import StorageQuery
from unistore.providers import MemoryStorageProvider


async def test_purge_removes_only_expired_records_and_changes_no_answer() -> None:
    provider = MemoryStorageProvider()
    now = datetime.now(timezone.utc)
    await provider.save("gone", 1, "t", expires_at=now - timedelta(seconds=1))
    await provider.save("later", 2, "t", expires_at=now + timedelta(hours=1))
    await provider.save("never", 3, "t")
    before = sorted([r.item.metadata.key async for r in provider.search(StorageQuery())])
    assert await provider.purge_expired() == 1
    assert await provider.purge_expired() == 0
    assert sorted([r.item.metadata.key async for r in provider.search(StorageQuery())]) == before == ["later", "never"]
    assert sorted(provider.engine._records) == ["later", "never"]


def test_the_engine_underneath_is_the_provider_s_synchronous_face() -> None:
    provider = MemoryStorageProvider(namespace="jobs")
    engine = provider.synchronous()
    assert engine is provider.engine and repr(engine) == "MemoryEngine(namespace='jobs')"
    engine.save("k", 1, "t")
    assert provider.engine.load("k").data == 1 and [r.item.data for r in engine.search(StorageQuery())] == [1]
