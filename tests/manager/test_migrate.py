"""restore_many (the verbatim write path) on every provider, and unistore.migrate.copy:
metadata kept, idempotent, resumable after a kill or a cancel, verified both ways."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from asyncio.subprocess import PIPE
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import redis

from helpers import UTC, Factory
from unistore import (
    SerializationError,
    StorageItem,
    StorageMetadata,
    StorageProvider,
    StorageQuery,
    ValidationError,
)
from unistore.codec import item_record
from unistore.metrics import MetricsManager
from unistore.migrate import NAMED_PROBLEMS, MigrationReport, checksum, copy, prune
from unistore.providers import LmdbStorageProvider, MemoryStorageProvider, RedisStorageProvider
from unistore.providers.redis import layout as redis_layout

CREATED = datetime(2021, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


UPDATED = datetime(2022, 8, 9, 10, 11, 12, 654321, tzinfo=UTC)


LATER = datetime(2200, 1, 1, tzinfo=UTC)


def made(
    key: str,
    data: Any,
    content_type: str = "doc",
    tags: dict[str, str] | None = None,
    expires_at: datetime | None = None,
    created_at: datetime = CREATED,
    updated_at: datetime = UPDATED,
    id: UUID | None = None,
) -> StorageItem[Any]:
    """An item as another store would hand it over."""
    metadata = StorageMetadata(id or uuid4(), key, content_type, created_at, updated_at, expires_at, tags or {})
    return StorageItem(data, metadata)


async def keys_of(provider: StorageProvider[Any], **criteria: Any) -> set[str]:
    return {result.item.metadata.key async for result in provider.search(StorageQuery(**criteria))}


async def assert_consistent(provider: StorageProvider[Any]) -> None:
    """The provider's own integrity check, where it has one (the memory provider has no index)."""
    check = getattr(provider, "check", None)
    if check is not None:
        report = await check()
        assert report.ok, report.problems


async def test_restore_keeps_every_field(provider_factory: Factory) -> None:
    provider = provider_factory()
    items = [
        made("a", {"n": 1, "when": CREATED}, tags={"team": "x", "lang": "pt"}, expires_at=LATER),
        made("b", [1, "two", b"\x03"], content_type="other", tags={"team": "y"}),
        made("c", None, created_at=UPDATED, updated_at=UPDATED),
    ]
    assert await provider.restore_many(items) == 3
    for item in items:
        loaded = await provider.load(item.metadata.key)
        assert loaded.metadata == item.metadata
        assert loaded.data == item.data
        assert checksum(loaded) == checksum(item)
    # Every index holds the restored values, not the time of the restore.
    assert await keys_of(provider, tags={"team": "x"}) == {"a"}
    assert await keys_of(provider, content_type="other") == {"b"}
    assert await keys_of(provider, created_before=CREATED) == {"a", "b"}
    assert await keys_of(provider, created_after=UPDATED) == {"c"}
    assert await keys_of(provider, expires_after=LATER - timedelta(days=1)) == {"a"}
    await assert_consistent(provider)


async def test_restore_replaces_a_record_and_its_index_entries(provider_factory: Factory) -> None:
    provider = provider_factory()
    await provider.save("k", {"old": True}, "doc", tags={"state": "old"}, expires_at=LATER)
    await provider.save("other", 1, "doc", tags={"state": "old"})
    newer = made("k", {"old": False}, content_type="note", tags={"state": "new"})
    assert await provider.restore_many([newer]) == 1
    loaded = await provider.load("k")
    assert loaded.metadata == newer.metadata  # the restored id and times, not the replaced item's
    assert await keys_of(provider, tags={"state": "old"}) == {"other"}
    assert await keys_of(provider, tags={"state": "new"}) == {"k"}
    assert await keys_of(provider, content_type="doc") == {"other"}
    assert await keys_of(provider, expires_after=CREATED) == set()
    await assert_consistent(provider)
    # A save after a restore keeps the restored id and created_at, as for any item.
    saved = await provider.save("k", 2, "note")
    assert saved.metadata.id == newer.metadata.id and saved.metadata.created_at == CREATED
    assert saved.metadata.updated_at > UPDATED


async def test_restore_over_an_expired_item_and_of_an_expired_item(provider_factory: Factory) -> None:
    provider = provider_factory()
    await provider.save("gone", 1, "doc", tags={"t": "1"}, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    past = datetime.now(UTC) - timedelta(minutes=1)
    assert await provider.restore_many([made("gone", 2), made("dead", 3, expires_at=past)]) == 2
    assert (await provider.load("gone")).data == 2
    assert await provider.load_many(["dead"]) == {}
    assert await keys_of(provider) == {"gone"}
    assert await keys_of(provider, tags={"t": "1"}) == set()


async def test_a_large_restore_spans_every_shard(provider_factory: Factory) -> None:
    provider = provider_factory()
    items = [made(f"k{n:04d}", n, tags={"parity": str(n % 2)}) for n in range(600)]
    assert await provider.restore_many(items) == 600
    assert await provider.restore_many([]) == 0
    assert len(await keys_of(provider, tags={"parity": "1"})) == 300
    found = await provider.load_many([item.metadata.key for item in items])
    assert all(found[item.metadata.key].metadata == item.metadata for item in items)
    await assert_consistent(provider)


def bad_batches() -> list[tuple[Any, type[Exception], str]]:
    good = made("good", 1)
    return [
        ({"good": good}, ValidationError, "items must be an iterable of StorageItem, got dict"),
        (good, ValidationError, "items must be an iterable of StorageItem, got StorageItem"),
        ("ab", ValidationError, "got str"),
        ([good, {"key": "x"}], ValidationError, r"items\[1\] must be a StorageItem"),
        ([good, StorageItem(1, "meta")], ValidationError, r"items\[1\] must be a StorageItem"),  # type: ignore[arg-type]
        ([good, made("x", 1, id="not-a-uuid")], ValidationError, "item 'x': metadata.id must be a UUID"),  # type: ignore[arg-type]
        ([good, made("x", 1, created_at=None)], ValidationError, "item 'x': metadata.created_at must be a datetime"),  # type: ignore[arg-type]
        ([good, made("x", 1, updated_at="2020")], ValidationError, "item 'x': metadata.updated_at must be a datetime"),  # type: ignore[arg-type]
        ([good, made("x", 1, tags={"k": 1})], ValidationError, r"item 'x': tags\['k'\] must be a str"),  # type: ignore[dict-item]
        ([good, made("x", 1, content_type="")], ValidationError, "item 'x': content_type must not be empty"),
        ([good, made(7, 1)], ValidationError, r"items\[1\]: key must be a str"),  # type: ignore[arg-type]
        ([good, made("x", object())], SerializationError, "item 'x': data cannot be stored"),
        ([good, made("good", 2)], ValidationError, "items holds key 'good' more than once"),
    ]


@pytest.mark.parametrize(("items", "error", "message"), bad_batches())
async def test_a_bad_item_refuses_the_batch_whole(
    provider_factory: Factory, items: Any, error: type[Exception], message: str
) -> None:
    provider = provider_factory()
    with pytest.raises(error, match=message) as raised:
        await provider.restore_many(items)
    if "item 'x'" in message:
        assert raised.value.details["key"] == "x"  # type: ignore[attr-defined]
    assert await provider.load_many(["good", "x"]) == {}


async def test_a_provider_without_restore_many_says_so() -> None:
    provider = MemoryStorageProvider()
    with pytest.raises(NotImplementedError, match="MemoryStorageProvider cannot restore"):
        await StorageProvider.restore_many(provider, [made("a", 1)])  # the interface's default


async def test_lmdb_restores_a_batch_in_one_commit(tmp_path: Path) -> None:
    provider = LmdbStorageProvider(tmp_path / "store")
    writer = provider.engine.shared.writer()
    before = writer.batches
    assert await provider.restore_many([made(f"k{n}", n) for n in range(50)]) == 50
    assert writer.batches == before + 1
    assert provider.engine.restore_many([made("sync", 1)]) == 1  # the engine's own, for sync callers
    assert (await provider.load("sync")).metadata.created_at == CREATED
    await provider.cleanup()


def test_the_checksum_covers_data_and_every_field() -> None:
    base = made("k", {"a": 1}, tags={"t": "1"}, expires_at=LATER, id=UUID(int=1))
    assert checksum(base) == checksum(made("k", {"a": 1}, tags={"t": "1"}, expires_at=LATER, id=UUID(int=1)))
    variants = [
        made("k2", {"a": 1}, tags={"t": "1"}, expires_at=LATER, id=UUID(int=1)),
        made("k", {"a": 2}, tags={"t": "1"}, expires_at=LATER, id=UUID(int=1)),
        made("k", {"a": 1}, tags={"t": "2"}, expires_at=LATER, id=UUID(int=1)),
        made("k", {"a": 1}, tags={"t": "1"}, expires_at=None, id=UUID(int=1)),
        made("k", {"a": 1}, tags={"t": "1"}, expires_at=LATER, id=UUID(int=2)),
        made("k", {"a": 1}, "other", tags={"t": "1"}, expires_at=LATER, id=UUID(int=1)),
        made("k", {"a": 1}, tags={"t": "1"}, expires_at=LATER, id=UUID(int=1), created_at=UPDATED),
        made("k", {"a": 1}, tags={"t": "1"}, expires_at=LATER, id=UUID(int=1), updated_at=CREATED),
    ]
    assert len({checksum(item) for item in variants} | {checksum(base)}) == len(variants) + 1
    assert item_record(base)[8:16] == bytes(8)  # no store's own numbering in it


async def fill(provider: StorageProvider[Any], count: int, **tags: str) -> list[StorageItem[Any]]:
    items = [
        made(f"item:{n:05d}", {"n": n}, tags={"parity": str(n % 2), **tags}, expires_at=LATER if n % 3 else None)
        for n in range(count)
    ]
    await provider.restore_many(items)
    return items


async def test_copy_into_every_provider_keeps_everything_and_is_idempotent(provider_factory: Factory) -> None:
    source, target = MemoryStorageProvider(), provider_factory()
    items = await fill(source, 120)
    seen: list[tuple[int, int | None]] = []
    report = await copy(source, target, batch_size=50, progress=lambda done, total: seen.append((done, total)))
    assert report == MigrationReport(read=120, written=120, unchanged=0, verified=True, problems=())
    assert report.ok
    assert seen == [(50, 120), (100, 120), (120, 120)]
    found = await target.load_many([item.metadata.key for item in items])
    assert all(found[item.metadata.key].metadata == item.metadata for item in items)
    await assert_consistent(target)
    again = await copy(source, target, batch_size=50)
    assert again == MigrationReport(read=120, written=0, unchanged=120, verified=True)
    # Only what changed is written again.
    await source.save("item:00007", "changed", "doc")
    await source.delete("item:00008")
    third = await copy(source, target, verify=False)
    assert third == MigrationReport(read=119, written=1, unchanged=118, verified=None)
    assert (await target.load("item:00007")).data == "changed"


async def test_copy_with_a_query_takes_only_its_items(tmp_path: Path, redis_port: int) -> None:
    source = LmdbStorageProvider(tmp_path / "legacy")
    target = RedisStorageProvider({"host": "127.0.0.1", "port": redis_port, "namespace": uuid4().hex})
    try:
        await fill(source, 40)
        await source.save("note", 1, "note", tags={"parity": "1"})
        report = await copy(source, target, StorageQuery(content_type="doc", tags={"parity": "1"}), batch_size=7)
        assert (report.read, report.written, report.verified) == (20, 20, True)
        assert await keys_of(target) == {f"item:{n:05d}" for n in range(1, 40, 2)}
    finally:
        await source.cleanup()
        await target.cleanup()


async def test_rollback_is_the_copy_back(tmp_path: Path, redis_port: int) -> None:
    """Migrate the legacy store (LMDB) to Redis, let the new store change, then roll back."""
    legacy = LmdbStorageProvider(tmp_path / "legacy")
    new = RedisStorageProvider({"host": "127.0.0.1", "port": redis_port, "namespace": uuid4().hex, "shards": 3})
    try:
        items = await fill(legacy, 30)
        assert (await copy(legacy, new)).ok
        await new.save("item:00001", {"n": "edited"}, "doc", tags={"parity": "1"})
        await new.save("born-in-new", 1, "doc")
        back = await copy(new, legacy, batch_size=8)
        assert (back.read, back.written, back.unchanged, back.verified) == (31, 2, 29, True)
        assert (await legacy.load("item:00001")).data == {"n": "edited"}
        assert (await legacy.load("item:00001")).metadata.id == items[1].metadata.id
        assert (await legacy.load("born-in-new")).metadata == (await new.load("born-in-new")).metadata
        await assert_consistent(legacy)
    finally:
        await legacy.cleanup()
        await new.cleanup()


async def test_prune_removes_what_the_source_deleted_since_the_copy(provider_factory: Factory) -> None:
    source, target = MemoryStorageProvider(), provider_factory()
    await fill(source, 60)
    assert (await copy(source, target)).ok
    await source.delete_many([f"item:{n:05d}" for n in range(0, 60, 4)])  # 15 deleted during the migration
    await target.save("note", 1, "note")  # not the query's: left alone
    stale = await copy(source, target, StorageQuery(content_type="doc"), batch_size=16)
    assert stale.verified is False and "only in target: 'item:00000'" in stale.problems
    assert await prune(source, target, StorageQuery(content_type="doc"), batch_size=16) == 15
    assert await prune(source, target, StorageQuery(content_type="doc")) == 0
    assert (await copy(source, target, StorageQuery(content_type="doc"))).ok
    assert await keys_of(target, content_type="note") == {"note"}
    await assert_consistent(target)
    with pytest.raises(ValidationError, match=r"query\.limit must be None"):
        await prune(source, target, StorageQuery(limit=1))


async def test_copy_onto_itself_writes_nothing() -> None:
    provider = MemoryStorageProvider()
    await fill(provider, 5)
    assert await copy(provider, provider) == MigrationReport(5, 0, 5, True)


class Lossy(MemoryStorageProvider):
    """A target that loses every third item it is asked to restore and garbles every fifth."""

    async def restore_many(self, items: Sequence[StorageItem[Any]]) -> int:
        kept = [
            StorageItem("garbled", item.metadata) if position % 5 == 4 else item
            for position, item in enumerate(items)
            if position % 3 != 2
        ]
        return await super().restore_many(kept)


async def test_verification_names_what_differs_and_counts_the_rest() -> None:
    source, target = MemoryStorageProvider(), Lossy()
    await fill(source, 90)
    await target.save("stray", 1, "doc")
    for n in range(NAMED_PROBLEMS + 3):
        await target.save(f"extra:{n}", n, "doc")
    report = await copy(source, target, batch_size=90)
    assert not report.ok and report.verified is False
    assert (report.read, report.written) == (90, 60)
    problems = list(report.problems)
    assert "missing in target: 'item:00002'" in problems
    assert "missing in target: 10 more" in problems  # 30 lost, 20 named
    assert "differs in target: 'item:00004'" in problems
    assert sum(line.startswith("only in target: '") for line in problems) == NAMED_PROBLEMS
    assert "only in target: 4 more" in problems
    assert problems[-1] == f"counts: 90 matching items in the source, {60 + NAMED_PROBLEMS + 4} in the target"
    # A query the strays do not match is verified clean once copied again (Lossy aside).
    clean = await copy(source, MemoryStorageProvider(), StorageQuery(pattern="item:*"))
    assert clean.ok and clean.verified


class Slow(MemoryStorageProvider):
    """A target whose lookups take ``delay`` seconds (a far, busy store)."""

    delay = 0.0

    async def load_many(self, keys: Any, *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        await asyncio.sleep(self.delay)
        return await super().load_many(keys, content_type=content_type)


async def test_items_that_expire_during_the_verification_are_not_problems() -> None:
    source, target = MemoryStorageProvider(), Slow()
    soon = datetime.now(UTC) + timedelta(seconds=1)
    await source.restore_many([made("brief", 1, expires_at=soon), made("stays", 2)])
    await target.save("brief-extra", 3, "doc", expires_at=soon)

    def slow_down(done: int, total: int | None) -> None:
        target.delay = 1.2  # from now on, the lookups outlast the brief items

    report = await copy(source, target, progress=slow_down)
    assert report == MigrationReport(read=2, written=2, unchanged=0, verified=True)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"source": "memory://"}, "source must be a StorageProvider, got str"),
        ({"target": None}, "target must be a StorageProvider, got NoneType"),
        ({"batch_size": 0}, "batch_size must be an int from 1 to 100000, got 0"),
        ({"batch_size": True}, "batch_size must be an int"),
        ({"batch_size": 100_001}, "batch_size must be an int"),
        ({"progress": 3}, "progress must be callable or None, got int"),
        ({"query": {"pattern": "*"}}, "query must be a StorageQuery or None, got dict"),
        ({"query": StorageQuery(limit=5)}, "query.limit must be None"),
        ({"query": StorageQuery(tags={"a": 1})}, r"query.tags\['a'\] must be a str"),  # type: ignore[dict-item]
    ],
)
async def test_copy_refuses_bad_arguments(arguments: dict[str, Any], message: str) -> None:
    source, target = MemoryStorageProvider(), MemoryStorageProvider()
    await source.save("k", 1, "doc")
    with pytest.raises(ValidationError, match=message):
        await copy(**{"source": source, "target": target, **arguments})
    assert await target.load_many(["k"]) == {}


CHILD = """
import asyncio, os, signal, sys
from unistore.migrate import copy
from unistore.providers import LmdbStorageProvider

signal.alarm(60)  # a child that hangs must not outlive the test


def progress(done, total):
    if done >= int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as a crash


asyncio.run(copy(LmdbStorageProvider(sys.argv[1]), LmdbStorageProvider(sys.argv[2]), batch_size=100, progress=progress))
"""


@pytest.mark.watchdog(120)
async def test_a_copy_killed_mid_way_completes_when_run_again(tmp_path: Path) -> None:
    source = LmdbStorageProvider(tmp_path / "source")
    await fill(source, 1000)
    await source.cleanup()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(tmp_path / "source"), str(tmp_path / "target"), "300", stderr=PIPE
    )
    _, errors = await asyncio.wait_for(child.communicate(), 90)
    assert child.returncode == -signal.SIGKILL, errors.decode()
    target = LmdbStorageProvider(tmp_path / "target")
    assert len(await keys_of(target)) == 300  # whole batches only
    report = await copy(source, target)
    assert report == MigrationReport(read=1000, written=700, unchanged=300, verified=True)
    await assert_consistent(target)
    await source.cleanup()
    await target.cleanup()


@pytest.mark.watchdog(60)
async def test_a_cancelled_copy_completes_when_run_again(tmp_path: Path) -> None:
    source, target = LmdbStorageProvider(tmp_path / "source"), LmdbStorageProvider(tmp_path / "target")
    await fill(source, 300)
    task: asyncio.Task[MigrationReport] | None = None

    def cancel_after_two(done: int, total: int | None) -> None:
        if done == 100:
            assert task is not None
            task.cancel()  # lands at the copy's next wait: a write in flight stands, or not

    task = asyncio.create_task(copy(source, target, batch_size=50, progress=cancel_after_two))
    with pytest.raises(asyncio.CancelledError):
        await task
    report = await copy(source, target, batch_size=50)
    assert (report.read, report.verified) == (300, True)
    assert report.unchanged >= 100 and report.written >= 100 and report.unchanged + report.written == 300
    await assert_consistent(target)
    await source.cleanup()
    await target.cleanup()


def odd_items() -> list[StorageItem[Any]]:
    def made(key: str, data: Any, **fields: Any) -> StorageItem[Any]:
        created = fields.pop("created", datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))
        metadata = StorageMetadata(
            uuid.uuid4(),
            key,
            fields.pop("content_type", "doc"),
            created,
            fields.pop("updated", datetime(2021, 1, 2, 3, 4, 5, 1, tzinfo=UTC)),
            fields.pop("expires", None),
            fields.pop("tags", {}),
        )
        return StorageItem(data, metadata)

    return [
        made("bytes", b"\x00\xff" * 10, tags={"t": "é\n\x00"}),
        made(
            "k" * 600 + "é" * 300,
            {
                "max": 2**64 - 1,
                "min": -(2**63),
                "u": uuid.uuid4(),
                "d": datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            },
        ),
        made("empty", "", content_type="x" * 1000, tags={"k" * 700: "v" * 700}),
        made("none", None, expires=datetime(2300, 1, 1, tzinfo=UTC)),
        made(
            "extremes",
            [],
            created=datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            updated=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        made("uni\x00key\U0001f600", {"\U0001f600": "\ud7ff"}),
    ]


async def test_lmdb_to_redis_to_lmdb_keeps_every_field(tmp_path: Path, redis_port: int) -> None:
    items = odd_items()
    source = LmdbStorageProvider(tmp_path / "a")
    middle = RedisStorageProvider({"host": "127.0.0.1", "port": redis_port, "namespace": uuid.uuid4().hex})
    back = LmdbStorageProvider(tmp_path / "b")
    try:
        assert await source.restore_many(items) == len(items)
        assert (await copy(source, middle)).ok
        assert (await copy(middle, back)).ok
        again = await copy(back, source)
        assert again.ok and again.written == 0 and again.unchanged == len(items)
        for item in items:
            loaded = await back.load(item.metadata.key)
            assert loaded.metadata == item.metadata and loaded.data == item.data
        # The index agrees to the microsecond at the extremes, on both backends.
        for provider in (middle, back):
            for bound in ("created_after", "created_before"):
                query = StorageQuery(**{bound: datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)})  # type: ignore[arg-type]
                found = {result.item.metadata.key async for result in provider.search(query)}
                assert ("extremes" in found) and (len(found) == (len(items) if bound == "created_after" else 1))
        assert (await back.check()).ok
    finally:
        for provider in (source, middle, back):
            await provider.cleanup()


async def test_an_item_that_left_the_query_in_the_source_is_found_and_pruned(tmp_path: Path) -> None:
    """The source's item under a key no longer matches the query (another type, another tag):
    the target's old copy did, and verification called the two sides equal while prune
    kept it for good, since the source still held *a* record under that key."""
    source = LmdbStorageProvider(tmp_path / "source")
    target = LmdbStorageProvider(tmp_path / "target")
    try:
        await source.save_many({"moved": 1, "kept": 2}, "doc", tags={"team": "a"})
        await source.save("retagged", 3, "doc", tags={"team": "a"})
        by_type = StorageQuery(content_type="doc", tags={"team": "a"})
        assert (await copy(source, target, by_type)).ok
        await source.save("moved", 1, "other", tags={"team": "a"})  # left the query by its type
        await source.save("retagged", 3, "doc", tags={"team": "b"})  # and by its tag
        report = await copy(source, target, by_type)
        assert report.verified is False
        assert "only in target: 'moved'" in report.problems and "only in target: 'retagged'" in report.problems
        assert await prune(source, target, by_type) == 2
        assert (await copy(source, target, by_type)).ok
        assert {result.item.metadata.key async for result in target.search(StorageQuery())} == {"kept"}
    finally:
        await source.cleanup()
        await target.cleanup()


def _damage(provider: LmdbStorageProvider, key: bytes) -> None:
    engine = provider.engine
    engine.write(lambda txn, dbs: txn.put(engine.record_key(key), b"garbage", db=dbs.records))


async def test_a_damaged_record_in_the_target_is_replaced_by_the_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12: it stopped the copy (load_many raised); a copy replaces it, as a save
    would, reported as a search reports one, and the rest of the batch is copied."""
    source = MemoryStorageProvider()
    await source.save_many({"a": 1, "damaged": 2, "z": 3}, "doc")
    target = LmdbStorageProvider(tmp_path / "target")
    try:
        await target.save("damaged", 0, "doc")
        _damage(target, b"damaged")
        counted = MetricsManager.get_instance().value("storage_corrupt_records", operation="migrate")
        report = await copy(source, target)
        assert (report.written, report.ok) == (3, True)
        assert {k: v.data for k, v in (await target.load_many(["a", "damaged", "z"])).items()} == {
            "a": 1,
            "damaged": 2,
            "z": 3,
        }
        assert "migrate skipped the record under key 'damaged'" in caplog.text
        assert MetricsManager.get_instance().value("storage_corrupt_records", operation="migrate") == counted + 1
        await target.check(repair=True)  # the damaged record's own index entries could not be tied to it
        assert (await target.check()).ok and (await copy(source, target)).unchanged == 3
    finally:
        await target.cleanup()


async def test_a_damaged_record_in_the_source_is_reported_and_never_pruned(tmp_path: Path) -> None:
    source = LmdbStorageProvider(tmp_path / "source")
    target = MemoryStorageProvider()
    try:
        await source.save_many({"a": 1, "bad": 2}, "doc")
        assert (await copy(source, target)).ok
        _damage(source, b"bad")
        report = await copy(source, target)  # the source's search passes over it; the verification names it
        assert (report.read, report.ok) == (1, False)
        assert report.problems[0] == "damaged in source: 'bad'"
        assert await prune(source, target) == 0  # the target's copy may be all that is left of it
        assert (await target.load("bad")).data == 2
    finally:
        await source.cleanup()


def _damage_stored(provider: StorageProvider[Any], key: str, redis_port: int) -> None:
    """Replace the record under ``key`` by bytes that are not a record."""
    if isinstance(provider, LmdbStorageProvider):
        engine = provider.engine
        engine.write(lambda txn, dbs: txn.put(engine.record_key(key.encode()), b"garbage", db=dbs.records))
    elif isinstance(provider, RedisStorageProvider):
        prefix = provider._shard(key.encode()).prefix
        with redis.Redis(port=redis_port) as raw:
            assert raw.exists(redis_layout.record_key(prefix, key.encode()))
            raw.set(redis_layout.record_key(prefix, key.encode()), b"garbage")
    else:
        assert isinstance(provider, MemoryStorageProvider) and key in provider.engine._records
        provider.engine._records[key] = b"garbage"


def _maker(kind: str, tmp_path: Path, redis_port: int) -> Callable[[str], StorageProvider[Any]]:
    def make(name: str) -> StorageProvider[Any]:
        if kind == "lmdb":
            return LmdbStorageProvider(tmp_path / name)
        if kind == "redis":
            return RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex, "shards": 3})
        return MemoryStorageProvider()

    return make


@pytest.mark.parametrize("kind", ["memory", "lmdb", "redis"])
async def test_a_damaged_source_record_the_target_lacks_is_named_by_the_verification(
    kind: str, tmp_path: Path, redis_port: int
) -> None:
    # docs/migration.md: "A damaged record in the source is passed over by the source's
    # search (so it is not copied), named by the verification". Named only when the
    # target already held the key: into a fresh target the copy reported ok, one item short.
    source = _maker(kind, tmp_path, redis_port)("source")
    target = MemoryStorageProvider()
    try:
        await source.save_many({"a": 1, "bad": 2, "z": 3}, "doc")
        _damage_stored(source, "bad", redis_port)
        report = await copy(source, target)
        assert report.read == 2
        assert report.verified is False and "damaged in source: 'bad'" in report.problems, report.problems
        assert await prune(source, target) == 0
    finally:
        await source.cleanup()


@pytest.mark.parametrize("kind", ["memory", "lmdb", "redis"])
async def test_damaged_target_records_in_big_batches_are_replaced_and_the_rest_copied(
    kind: str, tmp_path: Path, redis_port: int
) -> None:
    source = MemoryStorageProvider()
    items = {f"k{number:04}": number for number in range(1200)}
    await source.save_many(items, "doc", tags={"team": "a"})
    target = _maker(kind, tmp_path, redis_port)("target")
    try:
        await target.save_many(dict.fromkeys(("k0003", "k0700", "k1199", "out"), -1), "doc", tags={"team": "a"})
        for key in ("k0003", "k0700", "k1199", "out"):  # one in each batch of 500, and one outside the query
            _damage_stored(target, key, redis_port)
        query = StorageQuery(pattern="k*", tags={"team": "a"})
        report = await copy(source, target, query, batch_size=500)
        assert (report.read, report.written, report.ok) == (1200, 1200, True), report.problems
        assert {key: item.data for key, item in (await target.load_many(list(items))).items()} == items
        assert (await copy(source, target, query)).unchanged == 1200
        assert await prune(source, target, query) == 0
    finally:
        await target.cleanup()


@pytest.mark.parametrize("kind", ["memory", "lmdb", "redis"])
async def test_the_verification_names_a_damaged_target_record_and_prune_keeps_a_damaged_source_one(
    kind: str, tmp_path: Path, redis_port: int
) -> None:
    make = _maker(kind, tmp_path, redis_port)
    source, target = make("source"), make("target")
    try:
        await source.save_many({"a": 1, "b": 2, "gone": 3}, "doc")
        assert (await copy(source, target)).ok
        _damage_stored(source, "b", redis_port)
        _damage_stored(target, "a", redis_port)
        await source.delete("gone")
        report = await copy(source, target, verify=True)
        # "a" is rewritten by the copy (the target's was damaged); "b" cannot be read in the source.
        assert report.problems[:2] == ("only in target: 'gone'", "damaged in source: 'b'"), report.problems
        assert await prune(source, target) == 1  # "gone"; never "b", whose copy may be all that is left
        assert {key: item.data for key, item in (await target.load_many(["a", "b", "gone"])).items()} == {
            "a": 1,
            "b": 2,
        }
    finally:
        await source.cleanup()
        await target.cleanup()
