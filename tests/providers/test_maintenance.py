"""Store maintenance on LMDB and Redis: opening only what exists, namespaces, sizes,
check and repair of damaged stores, backup (what the `unistore` command runs)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from unistore import StorageError, StorageQuery, ValidationError
from unistore.errors import StoreNotFoundError
from unistore.index import TAG, tag_term
from unistore.providers import LmdbEngine, LmdbStorageProvider, RedisStorageProvider
from unistore.providers.lmdb import layout as lmdb_layout
from unistore.providers.lmdb.provider import existing_store, store_namespaces
from unistore.providers.maintenance import Namespace, Usage, merge, tally
from unistore.providers.redis import layout as redis_layout
from unistore.urls import namespace_urls, open_existing, open_provider

SOON = datetime.now(timezone.utc) + timedelta(hours=1)


# -- opening only what exists ----------------------------------------------------------------


def test_an_lmdb_store_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="no unistore store at '/'"):
        LmdbStorageProvider("/", create=False)  # it once wrote data.mdb into /
    assert not Path("/data.mdb").exists()
    with pytest.raises(StoreNotFoundError, match="no unistore store at"):
        LmdbStorageProvider(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreNotFoundError):
        LmdbStorageProvider(tmp_path / "empty", create=False)
    assert os.listdir(tmp_path / "empty") == []


def test_an_lmdb_environment_without_a_store_is_left_alone(tmp_path: Path) -> None:
    import lmdb

    lmdb.open(str(tmp_path / "bare")).close()  # an LMDB environment, no unistore databases
    size = (tmp_path / "bare" / "data.mdb").stat().st_size
    with pytest.raises(StoreNotFoundError, match="holds no unistore store"):
        LmdbStorageProvider(tmp_path / "bare", create=False)
    with pytest.raises(StoreNotFoundError):
        store_namespaces(tmp_path / "bare")
    assert (tmp_path / "bare" / "data.mdb").stat().st_size == size


def test_an_lmdb_store_without_a_namespace_lists_none(tmp_path: Path) -> None:
    """A store whose databases were made but no namespace numbered yet (an opening cut
    short between the two) holds no namespace; listing them is no error."""
    import lmdb

    env = lmdb.open(str(tmp_path / "s"), max_dbs=len(lmdb_layout.DATABASES))
    lmdb_layout.open_databases(env)
    env.close()
    assert store_namespaces(tmp_path / "s") == []


async def test_an_lmdb_namespace_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    LmdbEngine(tmp_path / "s", namespace="real").close()
    with pytest.raises(StoreNotFoundError, match="has no namespace 'typo'") as caught:
        LmdbStorageProvider(tmp_path / "s", namespace="typo", create=False)
    assert caught.value.details == {"path": str(tmp_path / "s"), "namespace": "typo"}
    assert store_namespaces(tmp_path / "s") == [Namespace("real")]
    provider = LmdbStorageProvider(tmp_path / "s", namespace="real", create=False)
    await provider.save("k", 1, "t")
    assert (await provider.load("k")).data == 1
    assert await provider.namespaces() == [Namespace("real")]
    await provider.cleanup()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"durability": "maybe"}, "durability must be one of"),
        ({"map_size": 2**70}, "map_size must be an int"),
        ({"max_readers": 0}, "max_readers must be an int"),
    ],
)
def test_bad_options_are_refused_before_any_open(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    LmdbEngine(tmp_path / "s").close()
    with pytest.raises(ValidationError, match=message):
        LmdbStorageProvider(tmp_path / "s", create=False, **options)


@pytest.mark.parametrize(("path", "message"), [("a\x00b", "not usable"), ("", "must not be empty")])
def test_bad_paths_are_refused(path: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        store_namespaces(path)


async def test_open_existing_by_url(tmp_path: Path) -> None:
    url = f"lmdb://{tmp_path}/s?namespace=a"
    with pytest.raises(StoreNotFoundError):
        await open_existing(url)
    assert not (tmp_path / "s").exists()
    provider = open_provider(url)
    await provider.save("k", 1, "t")
    found = await open_existing(url)
    assert await found.namespace_exists() and (await found.load("k")).data == 1
    with pytest.raises(StoreNotFoundError, match="memory store lives in one process"):
        await open_existing("memory://")
    await provider.cleanup()
    await found.cleanup()


async def test_namespace_urls_of_lmdb(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        await namespace_urls(f"lmdb://{tmp_path}/s?durability=none")
    for name in ("b", "a b", "a"):
        LmdbEngine(tmp_path / "s", namespace=name, durability="none").close()
    urls = await namespace_urls(f"lmdb://{tmp_path}/s?durability=none")
    assert urls == [
        f"lmdb://{tmp_path}/s?durability=none&namespace=b",
        f"lmdb://{tmp_path}/s?durability=none&namespace=a+b",
        f"lmdb://{tmp_path}/s?durability=none&namespace=a",
    ]
    named = f"lmdb://{tmp_path}/s?namespace=zz"
    assert await namespace_urls(named) == [named]  # checked when opened
    with pytest.raises(ValidationError, match="unknown option"):
        await namespace_urls(f"lmdb://{tmp_path}/s?bogus=1")
    with pytest.raises(StoreNotFoundError, match="memory store"):
        await namespace_urls("memory://")


# -- sizes --------------------------------------------------------------------------------------


def test_tally_and_merge() -> None:
    assert tally([b"not a record"], 0) == {}
    assert merge([{"a": Usage(1, 10)}, {"a": Usage(2, 5), "b": Usage(1, 1)}]) == {"a": Usage(3, 15), "b": Usage(1, 1)}


async def test_lmdb_usage_counts_live_items_per_content_type(tmp_path: Path) -> None:
    provider = LmdbStorageProvider(tmp_path / "s", durability="none")
    other = LmdbStorageProvider(tmp_path / "s", namespace="other", durability="none")
    await provider.save_many({"a": "x" * 100, "b": "y"}, "doc")
    await provider.save("c", b"z", "blob")
    await provider.save("gone", 1, "doc", expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    await other.save("d", 1, "doc")
    usage = await provider.usage()
    assert list(usage) == ["blob", "doc"]
    assert usage["doc"].items == 2 and usage["blob"].items == 1
    record = provider.engine.shared.read(lambda txn, dbs: txn.get(provider.engine.record_key(b"a"), db=dbs.records))
    assert usage["doc"].bytes > len(record) > 100
    assert (await other.usage()) == {"doc": Usage(1, (await other.usage())["doc"].bytes)}
    await provider.cleanup()
    await other.cleanup()


# -- LMDB check and repair --------------------------------------------------------------------


async def test_lmdb_repair_drops_the_damaged_and_reindexes_the_rest(tmp_path: Path) -> None:
    provider = LmdbStorageProvider(tmp_path / "s", durability="none")
    engine = provider.engine
    for key in ("healthy", "bad-payload", "bad-header", "unindexed", "source"):
        await provider.save(key, {"k": key}, "t", tags={"colour": "red"}, expires_at=SOON)
    before = await provider.load("healthy")
    prefix = engine.record_key(b"")

    def damage(txn: Any, dbs: lmdb_layout.Databases) -> None:
        raw = txn.get(engine.record_key(b"bad-payload"), db=dbs.records)
        txn.put(engine.record_key(b"bad-payload"), raw + b"\xc1", db=dbs.records)  # msgpack's never-used byte
        txn.put(engine.record_key(b"bad-header"), b"garbage", db=dbs.records)
        txn.put(engine.record_key(b"moved"), txn.get(engine.record_key(b"source"), db=dbs.records), db=dbs.records)
        term = lmdb_layout.posting_key(prefix, tag_term(b"colour", b"red"))
        sid = int.from_bytes(txn.get(engine.record_key(b"unindexed"), db=dbs.records)[8:16], "little")
        txn.delete(term, sid.to_bytes(8, "big"), db=dbs.tags)
        txn.put(lmdb_layout.posting_key(prefix, tag_term(b"stray", b"x")), (999).to_bytes(8, "big"), db=dbs.tags)

    engine.write(damage)
    found = await provider.check()
    assert not found.ok
    text = "\n".join(found.problems)
    assert "bad-payload" in text and "bad-header" in text and "says its key is b'source'" in text
    assert "tags index lacks entry" in text and "points at no record" in text
    repaired = await provider.check(repair=True)
    assert repaired.problems == found.problems  # the report is of what was found
    assert (await provider.check()).ok
    after = await provider.load("healthy")
    assert after.metadata == before.metadata and after.data == before.data  # left untouched
    keys = sorted([r.item.metadata.key async for r in provider.search(_tag_query())])
    assert keys == ["healthy", "source", "unindexed"]
    await provider.cleanup()


def _tag_query() -> Any:
    from unistore import StorageQuery

    return StorageQuery(tags={"colour": "red"})


# -- LMDB backup -----------------------------------------------------------------------------------


async def test_lmdb_backup_copies_every_namespace_and_compacts(tmp_path: Path) -> None:
    provider = LmdbStorageProvider(tmp_path / "s", durability="none")
    other = LmdbStorageProvider(tmp_path / "s", namespace="other", durability="none")
    await provider.save("big", b"x" * 2_000_000, "t")
    await other.save("small", 1, "t")
    await provider.delete("big")
    await provider.save("kept", 2, "t")
    await provider.backup(tmp_path / "plain")
    await provider.backup(tmp_path / "nested" / "compact", compact=True)
    plain = (tmp_path / "plain" / "data.mdb").stat()
    compact = (tmp_path / "nested" / "compact" / "data.mdb").stat()
    assert compact.st_size < plain.st_size // 4  # the freed 2 MB is left out
    assert oct(compact.st_mode & 0o777) == "0o600" and oct(plain.st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "nested" / "compact").stat().st_mode & 0o777) == "0o700"
    for copy in ("plain", "nested/compact"):
        assert store_namespaces(tmp_path / copy) == [Namespace("default"), Namespace("other")]
        restored = LmdbStorageProvider(tmp_path / copy, create=False)
        assert (await restored.load("kept")).data == 2
        await restored.cleanup()
    with pytest.raises(ValidationError, match="already holds a store"):
        await provider.backup(tmp_path / "plain")
    with pytest.raises(ValidationError, match="already holds a store"):
        await provider.backup(tmp_path / "s")  # the store itself
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="cannot create the directory"):
        await provider.backup(tmp_path / "file" / "sub")
    for compact in (False, True):  # a dangling link where the copy goes: nothing is written through it
        (tmp_path / f"link{compact}").mkdir()
        (tmp_path / f"link{compact}" / "data.mdb").symlink_to(tmp_path / "nowhere")
        with pytest.raises(ValidationError, match="already holds a store"):
            await provider.backup(tmp_path / f"link{compact}", compact=compact)
        assert not (tmp_path / "nowhere").exists()
        with pytest.raises(StorageError, match=r"LMDB failed|cannot write") as failed:  # no file can be made in /proc
            await provider.backup("/proc/self", compact=compact)
        assert failed.value.__cause__ is not None
    await provider.cleanup()
    await other.cleanup()


# -- Redis --------------------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path, redis_starter: Any) -> Any:
    """The port of a redis-server of this test's own (so that it holds no one else's namespaces)."""
    process, port = redis_starter(tmp_path)
    yield port
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.redis
async def test_redis_namespaces_exist_only_once_used(private_redis: int) -> None:
    url = f"redis://127.0.0.1:{private_redis}/0"
    with pytest.raises(StoreNotFoundError, match="holds no namespace"):
        await namespace_urls(url)
    with pytest.raises(StoreNotFoundError, match="the store holds no namespace 'a'"):
        await open_existing(url + "?namespace=a")
    raw = aioredis.Redis(port=private_redis)
    assert await raw.dbsize() == 0  # asking created nothing
    a = open_provider(url + "?namespace=a%20b")
    b = open_provider(url + "?namespace=b&shards=2")
    await a.save("k", 1, "t")
    await b.save_many({f"k{i}": i for i in range(1200)}, "t")  # more than a batch of MGET per shard
    await raw.set(b"us{bogus:shards", b"1")  # not a shard count's name
    await raw.set(b"us{c}:shards", b"x")  # not a count
    assert await namespace_urls(url) == [f"{url}?namespace=a+b&shards=1", f"{url}?namespace=b&shards=2"]
    found = await open_existing(f"{url}?namespace=b&shards=2")
    assert await found.namespace_exists()
    assert (await found.usage())["t"].items == 1200
    await raw.delete(redis_layout.shards_key(b"a b"))  # the shard count lost: its items still show it exists
    assert await open_existing(url + "?namespace=a%20b") is not None
    for provider in (a, b, found):
        await provider.cleanup()
    await raw.aclose()


def test_redis_namespace_names_from_shard_count_keys() -> None:
    for name in ("a", "a b", "ü/%"):
        assert redis_layout.namespace_of(redis_layout.shards_key(name.encode())) == name
    for key in (b"us{}:shards", b"us{a:0}:shards", b"x", b"us{%FF}:shards"):
        assert redis_layout.namespace_of(key) is None


@pytest.mark.redis
async def test_redis_repair_drops_the_damaged_and_reindexes_the_rest(private_redis: int) -> None:
    provider = RedisStorageProvider({"host": "127.0.0.1", "port": private_redis, "namespace": "n"})
    for key in ("healthy", "bad-payload", "bad-header", "unindexed", "source", "expiring", "plain"):
        await provider.save(key, {"k": key}, "t", tags={"colour": "red"}, expires_at=None if key == "plain" else SOON)
    await provider.save("lapsed", 1, "t", expires_at=datetime.now(timezone.utc) + timedelta(milliseconds=20))
    await provider.save_many({f"bulk{i}": i for i in range(2500)}, "bulk", expires_at=SOON)  # heads over pages
    before = await provider.load("healthy")
    raw = aioredis.Redis(port=private_redis)
    prefix = redis_layout.shard_prefix(b"n", 0, 1)
    record = redis_layout.record_key
    heads = prefix + b"heads"
    await raw.set(record(prefix, b"bad-payload"), await raw.get(record(prefix, b"bad-payload")) + b"\xc1")
    await raw.set(record(prefix, b"bad-header"), b"garbage")
    await raw.set(record(prefix, b"moved"), await raw.get(record(prefix, b"source")))
    term = redis_layout.posting_key(prefix, TAG, tag_term(b"colour", b"red"))
    await raw.srem(term, b"unindexed")
    await raw.sadd(redis_layout.posting_key(prefix, TAG, tag_term(b"stray", b"x")), b"nobody")
    await raw.zadd(prefix + b"created", {b"nobody": 1})
    await raw.zrem(prefix + b"created", b"unindexed")
    await raw.hdel(heads, b"expiring")
    await raw.hset(heads, b"plain", b"head")
    await raw.hset(heads, b"healthy", (await raw.hget(heads, b"source")) or b"")  # another record's head
    await raw.hset(heads, b"ghost", b"not a head")
    import asyncio

    await asyncio.sleep(0.05)  # "lapsed" expires in Redis: its head vouches for its entries
    found = await provider.check()
    text = "\n".join(found.problems)
    for expected in (
        "bad-payload",
        "bad-header",
        "says its key is b'source'",
        "tags index lacks entry",
        "points at no record",
        "heads lacks entry b'expiring'",
        "heads entry b'plain' belongs to a record that does not expire",
        "heads entry b'healthy' does not match its record",
        "heads entry: ",
    ):
        assert expected in text, expected
    assert (await provider.check(repair=True)).problems == found.problems
    assert (await provider.check()).ok, (await provider.check()).problems
    after = await provider.load("healthy")
    assert after.metadata == before.metadata and after.data == before.data
    keys = sorted([r.item.metadata.key async for r in provider.search(_tag_query())])
    assert keys == ["expiring", "healthy", "plain", "source", "unindexed"]
    assert await provider.purge_expired() == 1  # the lapsed item's entries, left for purge
    usage = await provider.usage()
    assert usage["t"].items == 5 and usage["bulk"].items == 2500
    await provider.cleanup()
    await raw.aclose()


@pytest.mark.redis
async def test_redis_check_finds_no_damage_in_far_future_times(redis_port: int) -> None:
    """A sorted set's score is a double: past 2**53 µs (the year 2255) Redis keeps a
    rounded time, and check must not call that an index entry pointing nowhere (repair
    would then rewrite healthy entries for ever)."""
    provider = RedisStorageProvider.from_url(f"redis://127.0.0.1:{redis_port}/0?namespace=far-future")
    last = datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=timezone.utc)
    await provider.save("k", 1, "t", expires_at=last)
    await provider.save_many({"a": 1, "b": 2}, "t", expires_at=last - timedelta(microseconds=3))
    assert (await provider.check()).problems == []
    assert (await provider.check(repair=True)).ok
    assert (await provider.load("k")).metadata.expires_at == last
    await provider.delete_matching(StorageQuery())
    await provider.cleanup()


@pytest.mark.redis
async def test_redis_maintenance_on_a_cluster(redis_cluster: list[int]) -> None:
    import uuid

    nodes = ",".join(f"127.0.0.1:{port}" for port in redis_cluster)
    name = uuid.uuid4().hex
    url = f"redis+cluster://{nodes}?namespace={name}&shards=4"
    with pytest.raises(StoreNotFoundError):
        await open_existing(url)
    provider = open_provider(url)
    await provider.save_many({f"k{i}": i for i in range(40)}, "t")
    assert f"redis+cluster://{nodes}?namespace={name}&shards=4" in await namespace_urls(f"redis+cluster://{nodes}")
    found = await open_existing(url)
    assert (await found.usage())["t"].items == 40
    report = await found.check(repair=True)
    assert report.ok and report.records == 40
    for each in (provider, found):
        await each.cleanup()


async def test_existing_store_releases_what_it_opened(tmp_path: Path) -> None:
    LmdbEngine(tmp_path / "s").close()
    with existing_store(tmp_path / "s") as shared:
        assert shared.users == 1
    assert shared.closed
