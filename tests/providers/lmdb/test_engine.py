"""What is particular to the LMDB provider: files, sharing, indexes, planning,
growth, expiry, durability, group commit, checks and damaged stores."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import lmdb
import pytest

from helpers import UTC
from unistore import (
    ItemNotFoundError,
    StorageCorruptionError,
    StorageError,
    StorageQuery,
    ValidationError,
    index,
)
from unistore.providers import LmdbStorageProvider
from unistore.providers.lmdb import engine as lmdb_engine
from unistore.providers.lmdb import layout
from unistore.providers.lmdb.engine import LmdbEngine
from unistore.providers.lmdb.environment import SharedEnvironment, StoreOptions
from unistore.providers.lmdb.gate import EnvironmentGate


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def engine(store: Path) -> Any:
    engine = LmdbEngine(store, namespace="main")
    yield engine
    engine.close()


def keys(results: Any) -> set[str]:
    return {result.item.metadata.key for result in results}


def test_store_is_private_to_its_owner(store: Path, engine: LmdbEngine) -> None:
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE((store / name).stat().st_mode) == 0o600


def test_sync_engine_api(engine: LmdbEngine) -> None:
    saved = engine.save("k", {"v": 1}, "t", tags={"a": "b"})
    assert engine.load("k") == saved
    assert keys(engine.search(StorageQuery(tags={"a": "b"}))) == {"k"}
    assert engine.delete("k", content_type="other") is False
    assert engine.delete("k") is True
    with pytest.raises(ItemNotFoundError):
        engine.load("k")
    assert engine.check().ok


def test_one_environment_per_directory_shared_and_closed_by_the_last(store: Path) -> None:
    first = LmdbEngine(store, namespace="a")
    second = LmdbEngine(str(store) + "/", namespace="b")
    assert first.shared is second.shared
    first.save("k", "from a", "t")
    second.save("k", "from b", "t")
    assert (first.load("k").data, second.load("k").data) == ("from a", "from b")
    assert keys(second.search(StorageQuery())) == {"k"} and len(list(first.search(StorageQuery()))) == 1
    first.close()
    first.close()  # closing twice is harmless
    assert second.load("k").data == "from b"
    assert str(store) in SharedEnvironment._registry
    second.close()
    assert str(store) not in SharedEnvironment._registry
    assert first.load("k").data == "from a"  # used again: it reopens
    first.close()


async def test_provider_reopens_after_cleanup(store: Path) -> None:
    provider = LmdbStorageProvider(store)
    await provider.save("k", 1, "t")
    await provider.cleanup()
    assert (await provider.load("k")).data == 1
    await provider.save("k2", 2, "t")
    await provider.cleanup()
    assert repr(provider) == f"LmdbStorageProvider({str(store)!r}, namespace='default')"


def test_durability_is_one_setting_per_environment(store: Path, engine: LmdbEngine) -> None:
    with pytest.raises(ValidationError, match="already open in this process with durability='sync'"):
        LmdbEngine(store, namespace="other", durability="none")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"durability": "fast"}, "durability must be one of sync, async, none"),
        ({"durability": ["sync"]}, "durability must be one of"),
        ({"map_size": 0}, "map_size must be an int from 1 to"),
        ({"map_size": True}, "map_size must be an int from 1 to"),
        ({"map_size": 1 << 64}, "map_size must be an int from 1 to"),
        ({"max_readers": "9"}, "max_readers must be an int from 1 to"),
        ({"max_readers": 0}, "max_readers must be an int from 1 to"),
        ({"max_readers": 1 << 40}, "max_readers must be an int from 1 to"),
        ({"namespace": ""}, "namespace must not be empty"),
    ],
)
def test_bad_options_create_nothing(store: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LmdbEngine(store, **options)
    assert not store.exists()


def test_unknown_options_are_refused_by_the_signature(store: Path) -> None:
    with pytest.raises(TypeError, match="mapsize"):
        LmdbEngine(store, mapsize=10)  # type: ignore[call-arg]
    assert not store.exists()


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="path must be a str or path"):
        LmdbEngine(42)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="is not usable"):
        LmdbEngine(str(tmp_path / "nul\0byte"))
    odd = LmdbEngine(str(tmp_path / "not utf-8 \udcff"))  # the byte 0xff in a file name, as the OS gave it
    odd.save("k", 1, "t")
    assert odd.load("k").data == 1 and os.path.isdir(os.fsencode(tmp_path) + b"/not utf-8 \xff")
    odd.close()
    with pytest.raises(ValidationError, match="path must not be empty"):
        LmdbEngine("")
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot create the store directory"):
        LmdbEngine(a_file)


def test_a_tiny_map_size_grows_as_the_store_is_made(store: Path) -> None:
    engine = LmdbEngine(store, map_size=1)
    engine.save("k", 1, "t")
    assert engine.load("k").data == 1
    engine.close()


def test_a_truncated_data_file_is_refused_at_open(store: Path) -> None:
    engine = LmdbEngine(store, durability="none")
    for n in range(2000):
        engine.save(f"k{n}", "x" * 100, "t")
    engine.close()
    os.truncate(store / "data.mdb", 20_000)
    # Without the check at open, LMDB's first read past the end is a SIGBUS (which ends the run).
    with pytest.raises(StorageCorruptionError) as caught:
        LmdbEngine(store).load("k5")
    assert "the store's data.mdb is 20000 bytes, shorter than the" in str(caught.value)
    assert str(store) not in SharedEnvironment._registry


def test_not_an_lmdb_store_is_reported_as_corruption(store: Path) -> None:
    store.mkdir()
    (store / "data.mdb").write_bytes(b"this is not an LMDB file" * 1000)
    with pytest.raises(StorageCorruptionError, match="damaged or not an LMDB store"):
        LmdbEngine(store)
    assert str(store) not in SharedEnvironment._registry


def make_raw_store(store: Path, entries: dict[bytes | None, dict[bytes, bytes]]) -> None:
    """An LMDB environment written directly: database name (None: the main one) to its items."""
    env = lmdb.open(str(store), max_dbs=10)
    with env.begin(write=True) as txn:
        for name, items in entries.items():
            db = env.open_db(name, txn=txn) if name is not None else None
            for key, value in items.items():
                txn.put(key, value, db=db)
    env.close()


def test_a_format_1_store_is_refused_with_a_clear_error(store: Path) -> None:
    make_raw_store(store, {b"default/records": {b"k": b"record"}, b"default/meta": {b"namespace": b"default"}})
    with pytest.raises(StorageError, match="format version 1, and this version reads format 3 only"):
        LmdbEngine(store)
    assert str(store) not in SharedEnvironment._registry


def test_a_store_of_a_later_format_is_refused(store: Path) -> None:
    LmdbEngine(store).close()
    make_raw_store(store, {b"meta": {b"format": (4).to_bytes(4, "big")}})
    with pytest.raises(StorageError, match="the store is in format version 4; this version of unistore reads 3"):
        LmdbEngine(store)


def test_a_main_database_key_where_a_database_belongs_is_damage(store: Path) -> None:
    make_raw_store(store, {None: {b"meta": b"a plain value, not a database"}})
    with pytest.raises(StorageCorruptionError, match="damaged or not an LMDB store"):
        LmdbEngine(store)
    assert str(store) not in SharedEnvironment._registry


def test_an_lmdb_environment_of_other_data_is_refused(store: Path) -> None:
    make_raw_store(store, {None: {b"someone's": b"data"}})
    with pytest.raises(StorageError, match="holds data that is not a unistore store"):
        LmdbEngine(store)


def test_claiming_a_namespace_twice_gives_its_number(engine: LmdbEngine) -> None:
    # What a process meets when another numbered the namespace between its look-up and its claim.
    again = engine.write(lambda txn, dbs: layout.claim_namespace(txn, dbs.meta, b"main"))
    assert again == engine.write(lambda txn, dbs: layout.find_namespace(txn, dbs.meta, b"main"))
    assert engine.write(lambda txn, dbs: layout.claim_namespace(txn, dbs.meta, b"new")) != again


def test_namespace_numbers_are_finite(store: Path) -> None:
    engine = LmdbEngine(store)
    engine.write(lambda txn, dbs: txn.put(b"next_namespace", b"\xff\xff\xff\xff", db=dbs.meta))
    with pytest.raises(StorageError, match="numbered 2\\*\\*32 - 1 namespaces"):
        LmdbEngine(store, namespace="one too many")
    assert engine.shared.users == 1  # the failed open released its use
    engine.close()


def test_long_namespaces_use_a_digest_label(store: Path) -> None:
    long_a, long_b = "a" * 300 + "1", "a" * 300 + "2"
    first, second = LmdbEngine(store, namespace=long_a), LmdbEngine(store, namespace=long_b)
    first.save("k", 1, "t")
    assert list(second.search(StorageQuery())) == []
    first.close()
    second.close()
    assert LmdbEngine(store, namespace=long_a).load("k").data == 1


# -- indexes and planning ----------------------------------------------------------


def test_index_entries_follow_every_write(engine: LmdbEngine) -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    engine.save("k", 1, "t1", expires_at=soon, tags={"a": "1", "b": "2"})
    report = engine.check()
    assert (report.records, report.ids, report.tag_entries, report.type_entries) == (1, 1, 2, 1)
    assert (report.created_entries, report.expires_entries) == (1, 1)
    engine.save("k", 2, "t2", tags={"c": "3"})  # upsert drops the old tags, type and expiry
    report = engine.check()
    assert (report.tag_entries, report.type_entries, report.expires_entries, report.ok) == (1, 1, 0, True)
    assert keys(engine.search(StorageQuery(tags={"a": "1"}))) == set()
    engine.delete("k")
    report = engine.check()
    assert (report.records, report.ids, report.tag_entries, report.created_entries, report.ok) == (0, 0, 0, 0, True)


def seed(engine: LmdbEngine, count: int) -> None:
    def write(txn: Any, dbs: Any) -> None:
        for n in range(count):
            tags = {"all": "yes", "tenth": str(n % 10 == 0), "one": str(n == 7), "even": str(n % 2 == 0)}
            engine.writes.save(f"user:{n:05d}", {"n": n}, "t", None, tags)(txn, dbs)

    engine.write(write)


def examined(engine: LmdbEngine, query: StorageQuery) -> tuple[int, int]:
    """(results, candidates the search checked)."""
    before = engine.candidates_examined
    found = len(list(engine.search(query)))
    return found, engine.candidates_examined - before


def test_the_planner_reads_the_cheapest_candidates(engine: LmdbEngine) -> None:
    seed(engine, 1000)
    # A selective posting list is walked: an AND reads no more than the smaller list.
    assert examined(engine, StorageQuery(tags={"all": "yes", "one": "True"})) == (1, 1)
    assert examined(engine, StorageQuery(tags={"tenth": "True", "all": "yes"})) == (100, 100)
    assert examined(engine, StorageQuery(tags={"all": "yes", "nope": "x"})) == (0, 0)
    assert examined(engine, StorageQuery(content_type="t", tags={"tenth": "True"})) == (100, 100)
    # A list that narrows the candidates enough is intersected before any record is read.
    assert examined(engine, StorageQuery(tags={"tenth": "True", "even": "False"})) == (0, 0)
    # A 50% list costs more through its ids than a scan of every record: the scan wins.
    assert examined(engine, StorageQuery(tags={"even": "False", "all": "yes", "tenth": "False"})) == (500, 1000)
    assert engine.explain(StorageQuery(pattern="*1", tags={"even": "False"})).path == index.KEYS
    # A pattern's literal prefix bounds the key range.
    assert examined(engine, StorageQuery(pattern="user:0001?")) == (10, 10)
    assert examined(engine, StorageQuery(pattern="user:0099*")) == (10, 10)
    assert examined(engine, StorageQuery(pattern="user:00999*")) == (1, 1)
    # A narrow time range is read from the created index; a wide one is not worth its ids.
    created = [r.item.metadata.created_at for r in engine.search(StorageQuery(pattern="user:0099[0-9]"))]
    assert examined(engine, StorageQuery(created_after=min(created))) == (10, 10)
    assert examined(engine, StorageQuery(created_before=min(created), pattern="*")) == (991, 1000)
    # Without any of those, every record is a candidate.
    assert examined(engine, StorageQuery(pattern="*0")) == (100, 1000)


def test_searches_stream_in_chunks_and_honour_limits(engine: LmdbEngine) -> None:
    seed(engine, 3 * index.SEARCH_CHUNK + 5)
    total = 3 * index.SEARCH_CHUNK + 5
    soon = datetime.now(UTC) + timedelta(days=1)
    for query in (
        StorageQuery(tags={"all": "yes"}),
        StorageQuery(pattern="user:*"),
        StorageQuery(created_after=datetime(2000, 1, 1, tzinfo=UTC)),
        StorageQuery(),
    ):
        chunks = list(engine.search_chunks(query))
        assert sum(len(chunk) for chunk in chunks) == total
        assert len(chunks) >= 4 and max(len(chunk) for chunk in chunks) <= index.SEARCH_CHUNK
        found = [r.item.metadata.key for chunk in chunks for r in chunk]
        assert len(set(found)) == total
        query.limit = index.SEARCH_CHUNK + 3
        assert len(list(engine.search(query))) == index.SEARCH_CHUNK + 3
    assert list(engine.search(StorageQuery(expires_before=soon))) == []
    assert list(engine.search(StorageQuery(limit=0))) == []


async def test_writes_during_a_long_search(store: Path) -> None:
    provider = LmdbStorageProvider(store, durability="none")
    seed(provider.engine, 600)
    seen = 0
    async for _result in provider.search(StorageQuery(tags={"all": "yes"})):
        seen += 1
        if seen % 50 == 0:  # the search holds no transaction between chunks
            await provider.save(f"new{seen}", 0, "t", tags={"all": "no"})
            await provider.delete(f"user:{599 - seen // 50:05d}")
    assert 588 <= seen <= 600
    assert (await provider.check()).ok
    await provider.cleanup()


# -- expiry --------------------------------------------------------------------------


async def test_purge_and_purge_in_passing(store: Path) -> None:
    provider = LmdbStorageProvider(store)
    soon = datetime.now(UTC) + timedelta(milliseconds=300)
    for n in range(20):
        await provider.save(f"gone{n}", n, "t", expires_at=soon, tags={"x": "y"})
    await asyncio.sleep(0.35)
    await provider.save("stays", 1, "t", expires_at=datetime.now(UTC) + timedelta(hours=1))
    report = await provider.check()
    # The write removed up to PURGE_IN_PASSING expired items before its own.
    assert report.records == 21 - lmdb_engine.PURGE_IN_PASSING
    assert await provider.purge_expired() == 20 - lmdb_engine.PURGE_IN_PASSING
    assert await provider.purge_expired() == 0
    report = await provider.check()
    assert (report.records, report.tag_entries, report.expires_entries, report.ok) == (1, 0, 1, True)
    assert [r.item.metadata.key async for r in provider.search(StorageQuery())] == ["stays"]
    await provider.cleanup()


def test_purge_in_passing_stays_in_its_namespace(store: Path) -> None:
    first, second = LmdbEngine(store, namespace="first"), LmdbEngine(store, namespace="second")
    soon = datetime.now(UTC) + timedelta(milliseconds=50)
    second.save("expiring", 1, "t", expires_at=soon)
    threading.Event().wait(0.1)
    first.save("k", 1, "t")  # its purge in passing meets only the other namespace's entry, and stops
    assert second.check().expires_entries == 1
    second.save("k", 1, "t")  # this one removes it
    assert second.check().expires_entries == 0
    first.close()
    second.close()


def test_purge_of_many(engine: LmdbEngine) -> None:
    # 3 s: the saves purge what has expired in passing, so every one must land before
    # the first expires (1 s ran out during the 2500 saves on the pure core under CI's load).
    soon = datetime.now(UTC) + timedelta(seconds=3)

    def write(txn: Any, dbs: Any) -> None:
        for n in range(2500):
            engine.writes.save(f"k{n}", n, "t", soon, None)(txn, dbs)

    engine.write(write)
    threading.Event().wait((soon - datetime.now(UTC)).total_seconds() + 0.05)
    assert engine.purge_expired() == 2500  # in batches of a thousand
    assert engine.check().records == 0


# -- durability, group commit, growth ---------------------------------------------------


@pytest.mark.parametrize("durability", ["sync", "async", "none"])
async def test_every_durability_mode(store: Path, durability: str) -> None:
    provider = LmdbStorageProvider(store, durability=durability)
    items = await asyncio.gather(*(provider.save(f"k{n}", n, "t", tags={"m": durability}) for n in range(50)))
    assert len({item.metadata.id for item in items}) == 50
    assert await provider.delete("k0") is True
    await provider.cleanup()
    reopened = LmdbStorageProvider(store, durability=durability)
    assert len([r async for r in reopened.search(StorageQuery(tags={"m": durability}))]) == 49
    await reopened.cleanup()


async def test_group_commit_batches_concurrent_saves(store: Path) -> None:
    provider = LmdbStorageProvider(store)
    writer = provider.engine.shared.writer()
    before = writer.batches
    await asyncio.gather(*(provider.save(f"k{n}", n, "t", tags={"g": "1"}) for n in range(300)))
    assert writer.batches - before <= 30  # 300 fsyncs one by one; a handful batched
    assert len([r async for r in provider.search(StorageQuery(tags={"g": "1"}))]) == 300
    assert (await provider.check()).ok
    await provider.cleanup()


def half_written_failure(engine: LmdbEngine) -> Callable[[Any, Any], None]:
    """A write op that saves an item and then fails, as an op that meets a backend
    error halfway does: what it wrote must go with it."""

    def op(txn: Any, dbs: Any) -> None:
        engine.writes.save("half", "written", "t")(txn, dbs)
        raise StorageError("failed after a write")

    return op


async def test_one_failing_operation_does_not_fail_its_batch(store: Path) -> None:
    provider = LmdbStorageProvider(store)
    await provider.save("warm", 0, "t")  # the writer runs: the ops below are grouped
    outcomes = await asyncio.gather(
        *(provider.save(f"k{n}", n, "t") for n in range(10)),
        provider._write(half_written_failure(provider.engine)),  # the path every save takes
        *(provider.save(f"k{n}", n, "t") for n in range(10, 20)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[10], StorageError) and str(outcomes[10]) == "failed after a write"
    assert all(not isinstance(outcome, Exception) for outcome in outcomes[:10] + outcomes[11:])
    assert len([r async for r in provider.search(StorageQuery(pattern="k*"))]) == 20
    assert await provider.load_many(["half"]) == {}  # rolled back alone
    await provider.cleanup()


def test_an_op_that_fails_after_writing_is_rolled_back_alone(engine: LmdbEngine) -> None:
    shared = engine.shared

    def half_done(txn: Any, dbs: Any) -> None:
        txn.put(b"half", b"written", db=dbs.records)
        raise ValueError("failed after a write")

    def put(key: bytes) -> Callable[[Any, Any], bytes]:
        return lambda txn, dbs: txn.put(key, b"v", db=dbs.records) and key

    outcomes = shared.write_batch([put(b"a"), half_done, put(b"b")])
    assert outcomes[0] == (True, b"a") and outcomes[2] == (True, b"b")
    assert outcomes[1][0] is False and str(outcomes[1][1]) == "failed after a write"
    stored = shared.read(lambda txn, dbs: {key: txn.get(key, db=dbs.records) for key in (b"a", b"half", b"b")})
    assert stored == {b"a": b"v", b"half": None, b"b": b"v"}


def test_a_batch_with_a_failing_op_still_grows_a_full_map(store: Path) -> None:
    engine = LmdbEngine(store, map_size=64 * 1024)
    shared = engine.shared

    def fails(txn: Any, dbs: Any) -> None:
        raise ValueError("this one fails")

    def big(txn: Any, dbs: Any) -> bool:
        return bool(txn.put(b"big", b"x" * 300_000, db=dbs.records))

    # The failure sends the batch to nested transactions, where the big put fills the map.
    outcomes = shared.write_batch([fails, big])
    assert outcomes[0][0] is False and outcomes[1] == (True, True)
    assert shared.read(lambda txn, dbs: len(txn.get(b"big", db=dbs.records))) == 300_000
    engine.close()


async def test_a_failed_write_without_sync_raises_to_its_caller(store: Path) -> None:
    provider = LmdbStorageProvider(store, durability="none")
    with pytest.raises(StorageError, match="failed after a write"):
        await provider._write(half_written_failure(provider.engine))  # the path every save takes
    assert await provider.load_many(["half"]) == {}
    await provider.save("k", 1, "t")  # the store goes on
    assert (await provider.load("k")).data == 1
    await provider.cleanup()


async def test_a_failed_batch_fails_its_callers_and_the_writer_goes_on(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = LmdbStorageProvider(store)
    shared = provider.engine.shared
    real = shared.write_batch
    failures = iter([StorageError("injected: the disk went away")])

    def failing_once(ops: list[Any]) -> list[tuple[bool, Any]]:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(ops)

    monkeypatch.setattr(shared, "write_batch", failing_once)
    with pytest.raises(StorageError, match="injected"):
        await provider.save("k", 1, "t")
    await provider.save("k", 2, "t")
    assert (await provider.load("k")).data == 2
    await provider.cleanup()


async def test_a_cancelled_save_still_lands(store: Path) -> None:
    provider = LmdbStorageProvider(store)
    await provider.save("warm", 0, "t")  # starts the writer
    blocker = provider.engine.shared.env.begin(write=True)  # the writer waits for LMDB's write lock
    task = asyncio.create_task(provider.save("k", 1, "t"))
    await asyncio.sleep(0.05)
    task.cancel()
    blocker.abort()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        await asyncio.sleep(0.01)
        if {r.item.metadata.key async for r in provider.search(StorageQuery(pattern="k"))}:
            break
    assert (await provider.load("k")).data == 1  # what was queued is committed
    await provider.cleanup()


def test_save_completes_after_its_loop_is_gone(store: Path) -> None:
    provider = LmdbStorageProvider(store)
    blocker = provider.engine.shared.env.begin(write=True)
    loop = asyncio.new_event_loop()
    task = loop.create_task(provider.save("k", 1, "t"))
    loop.run_until_complete(asyncio.sleep(0.05))
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    loop.close()
    blocker.abort()  # the writer commits, then settles on a closed loop: harmless
    assert wait_for(lambda: provider.engine.load("k").data) == 1
    provider.engine.save("after", 2, "t")  # and the writer thread is still fine
    provider.engine.close()


def wait_for(read: Any) -> Any:
    for _ in range(200):
        try:
            return read()
        except ItemNotFoundError:
            threading.Event().wait(0.01)
    raise AssertionError("never appeared")


@pytest.mark.parametrize("durability", ["sync", "none"])
async def test_map_grows_from_tiny_to_tens_of_megabytes(store: Path, durability: str) -> None:
    provider = LmdbStorageProvider(store, map_size=64 * 1024, durability=durability)
    blob = os.urandom(100_000)
    for start in range(0, 300, 50):  # 30 MB in batches of concurrent saves
        await asyncio.gather(*(provider.save(f"k{n}", blob, "t", tags={"n": str(n)}) for n in range(start, start + 50)))
    assert provider.engine.shared.env.info()["map_size"] >= 30_000_000
    assert (await provider.load("k299")).data == blob
    assert len([r async for r in provider.search(StorageQuery(tags={"n": "150"}))]) == 1
    assert (await provider.check()).ok
    await provider.cleanup()


GROW = (
    "import os, sys; from unistore.providers.lmdb import LmdbEngine\n"
    "e = LmdbEngine(sys.argv[1], namespace='filler', map_size=1 << 20)\n"
    "[e.save(f'f{n}', os.urandom(100_000), 't') for n in range(300)]\n"
    "e.close()\n"
)


def grow_in_another_process(store: Path) -> None:
    """30 MB written by another process, which grows the map past this one's."""
    subprocess.run([sys.executable, "-c", GROW, str(store)], check=True, timeout=120)


def test_growth_by_another_process_is_adopted(store: Path) -> None:
    small = LmdbEngine(store, map_size=1 << 20)
    small.save("first", 1, "t")
    grow_in_another_process(store)
    assert small.load("first").data == 1  # read path: MDB_MAP_RESIZED, adopt, retry
    small.save("second", 2, "t")
    assert small.shared.env.info()["map_size"] >= 30_000_000
    filler = LmdbEngine(store, namespace="filler")
    assert len(list(filler.search(StorageQuery()))) == 300
    filler.close()
    small.close()


def test_growth_by_another_process_is_adopted_by_writes_too(store: Path) -> None:
    small = LmdbEngine(store, map_size=1 << 20)
    grow_in_another_process(store)
    small.save("first", 1, "t")  # write path: MDB_MAP_RESIZED, adopt, retry
    assert small.load("first").data == 1
    small.close()


# -- errors and damage ----------------------------------------------------------------


def test_lmdb_errors_are_translated_with_their_cause(engine: LmdbEngine) -> None:
    too_long = b"x" * 600
    with pytest.raises(StorageError, match=r"LMDB failed \(BadValsizeError\)") as caught:
        engine.write(lambda txn, dbs: txn.put(too_long, b"", db=dbs.records))
    assert isinstance(caught.value.__cause__, Exception) and "BadValsize" in type(caught.value.__cause__).__name__
    with pytest.raises(StorageError, match="ReadonlyError"):
        engine.shared.read(lambda txn, dbs: txn.put(engine.record_key(b"k"), b"", db=dbs.records))
    assert engine.check().ok  # nothing was written


def test_same_namespace_twice_shares_the_handles(store: Path, engine: LmdbEngine) -> None:
    again = LmdbEngine(store, namespace="main")
    engine.save("k", 1, "t")
    assert again.load("k").data == 1
    assert repr(again) == f"LmdbEngine({str(store)!r}, namespace='main', durability='sync')"
    again.close()


def raw_delete(engine: LmdbEngine, key: bytes) -> None:
    engine.write(lambda txn, dbs: txn.delete(engine.record_key(key), db=dbs.records))


def test_check_and_search_report_a_damaged_index(engine: LmdbEngine, caplog: pytest.LogCaptureFixture) -> None:
    engine.save("lost", 1, "t", tags={"colour": "red"})
    engine.save("copied", 2, "t")
    engine.save("fine", 3, "t", tags={"colour": "red"})
    engine.save_many({f"filler{n}": n for n in range(50)}, "t")  # so that the planner walks the posting list
    assert engine.check().ok
    raw_delete(engine, b"lost")  # the record goes, its index entries stay
    copied = engine.shared.read(lambda txn, dbs: txn.get(engine.record_key(b"copied"), db=dbs.records))
    engine.write(lambda txn, dbs: txn.put(engine.record_key(b"misfiled"), copied, db=dbs.records))
    engine.write(lambda txn, dbs: txn.put(engine.record_key(b"garbage"), b"\x01\x00", db=dbs.records))
    report = engine.check()
    assert not report.ok
    text = "\n".join(report.problems)
    assert "tags index entry" in text and "points at no record" in text
    assert "record under b'misfiled' says its key is b'copied'" in text
    assert "b'garbage' does not decode" in text
    with caplog.at_level(logging.ERROR, logger="unistore.index"):
        assert [r.item.metadata.key for r in engine.search(StorageQuery(pattern="*f*"))] == [
            *(f"filler{n}" for n in sorted(range(50), key=str)),
            "fine",
        ]  # the damaged "garbage" and the misfiled record are passed over
        assert "'garbage', which does not decode" in caplog.text  # as load names it: the key, a str
        caplog.clear()
        assert [r.item.metadata.key for r in engine.search(StorageQuery(tags={"colour": "red"}))] == ["fine"]
        assert "has no record" in caplog.text
    assert not engine.check().ok  # searching repaired nothing


def test_a_long_key_whose_record_names_another_key_is_not_found(engine: LmdbEngine) -> None:
    mine, other = "m" * 1000, "o" * 1000
    engine.save(other, "other's", "t")
    record = engine.shared.read(lambda txn, dbs: txn.get(engine.record_key(other.encode())))
    engine.write(lambda txn, dbs: txn.put(engine.record_key(mine.encode()), record, db=dbs.records))
    with pytest.raises(ItemNotFoundError):
        engine.load(mine)  # as a digest collision would look: the record holds the real key
    assert engine.delete(mine) is False
    assert engine.load(other).data == "other's"


def test_an_id_without_its_key_in_a_posting_list_is_skipped_and_reported(
    engine: LmdbEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.save("k", 1, "t", tags={"a": "b"})  # id 1, the first entry of the ids index
    engine.save_many({f"filler{n}": n for n in range(50)}, "t")  # so that the planner walks the posting list
    assert engine.explain(StorageQuery(tags={"a": "b"})).path == index.POSTINGS
    engine.save("other", 2, "t", tags={"a": "b"})
    engine.write(lambda txn, dbs: txn.delete(next(iter(txn.cursor(db=dbs.ids).iternext(values=False))), db=dbs.ids))
    with caplog.at_level(logging.ERROR, logger="unistore.index"):
        assert [r.item.metadata.key for r in engine.search(StorageQuery(tags={"a": "b"}))] == ["other"]
    [logged] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "item id 1 " in logged and "has no ids entry; run `unistore check`" in logged
    assert not engine.check().ok


def test_purge_drops_expiry_entries_whose_item_is_gone(engine: LmdbEngine) -> None:
    soon = datetime.now(UTC) + timedelta(milliseconds=100)
    engine.save("a", 1, "t", expires_at=soon)
    engine.save("b", 2, "t", expires_at=soon)
    raw_delete(engine, b"a")
    threading.Event().wait(0.15)
    assert engine.purge_expired() == 1  # "b"; the dangling entry of "a" is dropped, not counted
    report = engine.check()
    assert (report.expires_entries, report.records) == (0, 0)


def test_resize_gate_waits_for_transactions_and_holds_new_ones() -> None:
    gate = EnvironmentGate(lambda: None)
    order: list[str] = []
    gate.enter()  # a transaction is running
    resizer = threading.Thread(target=gate.exclusive, args=(lambda: order.append("resize"),))
    resizer.start()
    threading.Event().wait(0.05)
    assert order == []  # the resize waits for the running transaction
    blocked = threading.Thread(target=lambda: (gate.enter(), order.append("new txn"), gate.leave()))
    order.append("txn done")
    gate.leave()
    blocked.start()
    resizer.join(5)
    blocked.join(5)
    assert order[:2] == ["txn done", "resize"] and order[-1] == "new txn"


def resize_in_progress(gate: EnvironmentGate, order: list[str]) -> threading.Thread:
    """A thread running a 0.1 s resize through ``gate``, returned once the resize has begun;
    the resize appends "resize" to ``order`` as it ends."""
    started = threading.Event()

    def slow_resize() -> None:
        started.set()
        threading.Event().wait(0.1)
        order.append("resize")

    resizer = threading.Thread(target=gate.exclusive, args=(slow_resize,))
    resizer.start()
    started.wait(5)
    return resizer


def test_resize_gate_holds_a_transaction_that_arrives_during_a_resize() -> None:
    gate = EnvironmentGate(lambda: None)
    order: list[str] = []
    resizer = resize_in_progress(gate, order)
    gate.enter()  # waits for the resize to finish
    order.append("txn")
    gate.leave()
    resizer.join(5)
    assert order == ["resize", "txn"]


def test_a_read_that_arrives_during_a_resize_waits_for_it(engine: LmdbEngine) -> None:
    engine.save("k", 1, "t")
    order: list[str] = []
    resizer = resize_in_progress(engine.shared.gate, order)
    assert engine.load("k").data == 1  # the read path's own way through the gate
    order.append("load")
    resizer.join(5)
    assert order == ["resize", "load"]


def test_a_full_disk_fails_the_write_and_leaves_the_store_whole(engine: LmdbEngine, store: Path) -> None:
    # RLIMIT_FSIZE makes the data file unable to grow, as a full disk would.
    engine.save("before", 1, "t", tags={"a": "b"})
    limit = (store / "data.mdb").stat().st_size + 256 * 1024
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        with pytest.raises(StorageError, match="LMDB failed") as caught:
            engine.save("big", os.urandom(1_000_000), "t", tags={"a": "b"})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert caught.value.__cause__ is not None
    with pytest.raises(ItemNotFoundError):
        engine.load("big")
    assert engine.load("before").data == 1
    assert engine.check().ok
    engine.save("after", 2, "t")


async def test_a_search_on_the_expiry_index_meets_each_item_once(store: Path) -> None:
    provider = LmdbStorageProvider(store, durability="none")
    soon = datetime.now(UTC) + timedelta(hours=1)
    for n in range(3 * index.SEARCH_CHUNK):
        await provider.save(f"k{n}", n, "t", expires_at=soon + timedelta(seconds=n))
    seen = []
    async for result in provider.search(StorageQuery(expires_after=soon)):
        seen.append(result.item.metadata.key)
        # Extending its time to live moves the item ahead of the search.
        await provider.save(result.item.metadata.key, result.item.data, "t", expires_at=soon + timedelta(days=1))
    assert len(seen) == len(set(seen)) == 3 * index.SEARCH_CHUNK
    await provider.cleanup()


async def test_a_limit_counts_only_items_not_met_before(store: Path) -> None:
    # Items moved ahead by a re-save come back in a later chunk as repeats; dropping
    # them after the chunk's limit was applied used to yield fewer than the limit.
    provider = LmdbStorageProvider(store, durability="none")
    soon = datetime.now(UTC) + timedelta(hours=1)
    total = 3 * index.SEARCH_CHUNK
    for n in range(total):
        await provider.save(f"k{n}", n, "t", expires_at=soon + timedelta(seconds=n))
    seen = []
    async for result in provider.search(StorageQuery(expires_after=soon, limit=total)):
        seen.append(result.item.metadata.key)
        # Ahead of the search, among items it has not met yet.
        later = soon + timedelta(seconds=result.item.data + 300.5)
        await provider.save(result.item.metadata.key, result.item.data, "t", expires_at=later)
    assert len(seen) == len(set(seen)) == total  # every match once, none crowded out
    await provider.cleanup()


def test_a_damaged_expired_record_does_not_block_writes(engine: LmdbEngine) -> None:
    soon = datetime.now(UTC) + timedelta(milliseconds=50)
    engine.save("damaged", 1, "t", expires_at=soon)
    engine.write(lambda txn, dbs: txn.put(engine.record_key(b"damaged"), b"\x01broken", db=dbs.records))
    threading.Event().wait(0.06)
    engine.save("other", 2, "t")  # purging in passing meets the damaged record and goes on
    assert engine.load("other").data == 2
    assert engine.purge_expired() == 0
    assert "b'damaged' does not decode" in "\n".join(engine.check().problems)


def test_a_key_range_search_resumes_past_a_deleted_resume_point(engine: LmdbEngine) -> None:
    seed(engine, 2 * index.SEARCH_CHUNK + 10)
    chunks = engine.search_chunks(StorageQuery(pattern="user:*"))
    first = next(chunks)
    engine.delete(first[-1].item.metadata.key)  # where the search would resume from
    rest = [result.item.metadata.key for chunk in chunks for result in chunk]
    keys = [result.item.metadata.key for result in first] + rest
    assert len(keys) == len(set(keys)) == 2 * index.SEARCH_CHUNK + 10


def test_intersection_when_the_other_list_ends_before_the_chunk(engine: LmdbEngine) -> None:
    for n in range(10):
        engine.save(f"early{n}", n, "t", tags={"x": "1"})
    for n in range(5):
        engine.save(f"late{n}", n, "t", tags={"y": "1"})
    assert examined(engine, StorageQuery(tags={"x": "1", "y": "1"})) == (0, 0)
    engine.save("early0", 0, "t", tags={"x": "1", "y": "1"})  # now in both
    assert examined(engine, StorageQuery(tags={"x": "1", "y": "1"})) == (1, 1)


def test_a_damaged_namespace_entry_is_refused(store: Path) -> None:
    engine = LmdbEngine(store, namespace="mine")
    engine.write(lambda txn, dbs: txn.put(b"ns=mine", b"\x00\x00\x00\x01someone else", db=dbs.meta))
    engine.close()
    with pytest.raises(StorageCorruptionError, match="the namespace entry of 'mine' names another"):
        LmdbEngine(store, namespace="mine")
    assert str(store) not in SharedEnvironment._registry  # the failed open released the store


def test_the_engine_runs_bulk_operations_synchronously(engine: LmdbEngine) -> None:
    engine.save_many({f"k{n}": n for n in range(10)}, "t")
    engine.save_many({"x": 1}, "other")
    assert engine.delete_many(["k0", "k1", "nope"]) == 2
    assert engine.delete_many(["x"], content_type="t") == 0  # stored under "other"
    assert engine.delete_matching(StorageQuery(pattern="k*", limit=3)) == 3
    assert sorted(engine.load_many([f"k{n}" for n in range(10)] + ["x"])) == ["k5", "k6", "k7", "k8", "k9", "x"]
    assert engine.check().ok


def test_a_namespace_of_many_content_types_is_sized_by_its_store(store: Path) -> None:
    other = LmdbEngine(store, namespace="other", durability="none")
    other.save_many({f"o{n}": n for n in range(5)}, "t")
    engine = LmdbEngine(store, namespace="many", durability="none")
    for n in range(lmdb_engine.NAMESPACE_TYPES_COUNTED + 1):
        engine.save(f"k{n}", n, f"type{n}")
    # Counting every type's posting list would cost more than it is worth: every record of the store bounds it.
    assert engine.explain(StorageQuery(pattern="*")).candidates == lmdb_engine.NAMESPACE_TYPES_COUNTED + 1 + 5
    assert other.explain(StorageQuery(pattern="*")).candidates == 5
    assert len(list(engine.search(StorageQuery(pattern="k*")))) == lmdb_engine.NAMESPACE_TYPES_COUNTED + 1
    engine.close()
    other.close()


def test_a_posting_list_longer_than_a_chunk_is_walked_chunk_by_chunk(engine: LmdbEngine) -> None:
    total = 3 * index.SEARCH_CHUNK + 5
    seed(engine, total)
    engine.save_many({f"filler{n}": n for n in range(3000)}, "f")  # so that the tag is worth its ids
    query = StorageQuery(tags={"all": "yes"})
    assert engine.explain(query).path == index.POSTINGS
    chunks = list(engine.search_chunks(query))
    assert [len(chunk) for chunk in chunks] == [index.SEARCH_CHUNK] * 3 + [5]
    assert len({r.item.metadata.key for chunk in chunks for r in chunk}) == total
    query.limit = index.SEARCH_CHUNK + 3
    assert examined(engine, query) == (index.SEARCH_CHUNK + 3, 2 * index.SEARCH_CHUNK)


def test_a_big_batch_into_a_tiny_map_grows_it_in_a_few_bigger_steps(store: Path) -> None:
    # Each growth reruns the whole batch: doubling a 64 KiB map up to the 25 MB this
    # batch needs took 9 reruns; growing 2x, 4x, 8x, then 16x takes 4.
    engine = LmdbEngine(store, map_size=64 * 1024, durability="none")
    shared = engine.shared
    factors: list[int] = []
    grow = shared._grow

    def counted(factor: int = 2) -> None:
        factors.append(factor)
        grow(factor)

    shared._grow = counted  # type: ignore[method-assign]
    blob = os.urandom(50_000)
    saved = engine.save_many({f"k{n}": blob for n in range(500)}, "t", tags={"big": "yes"})
    assert len(saved) == 500 and factors == [2, 4, 8, 16]
    assert len(engine.load_many([f"k{n}" for n in range(500)])) == 500
    assert engine.check().ok
    engine.close()


def test_an_open_adopts_a_map_another_process_grew_while_it_opened(store: Path) -> None:
    # The race made certain: the other process grows the map between this one's
    # lmdb.open and its first transaction (it only ever happened by timing before).
    LmdbEngine(store, map_size=1 << 20, durability="none").close()
    grown: list[bool] = []

    def opener(env: Any) -> Any:
        if not grown:
            grown.append(True)
            grow_in_another_process(store)
        return layout.open_databases(env)

    shared = SharedEnvironment.acquire(StoreOptions.checked(store, "none", 1 << 20, 126), opener)
    try:
        assert grown == [True] and shared.env.info()["map_size"] >= 30_000_000
    finally:
        shared.release()


def test_the_database_numbers_name_the_databases_in_their_order() -> None:
    assert [name for name, _ in layout.DATABASES] == list(layout.Databases._fields)
    numbers = (layout.DB_RECORDS, layout.DB_IDS, layout.DB_TAGS, layout.DB_TYPES, layout.DB_CREATED)
    assert [layout.Databases._fields[n] for n in (*numbers, layout.DB_EXPIRES, layout.DB_META)] == [
        "records",
        "ids",
        "tags",
        "types",
        "created",
        "expires",
        "meta",
    ]


class _BytesPath:
    """A path-like object that gives bytes, as os.PathLike allows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __fspath__(self) -> bytes:
        return bytes(self.path)


def test_a_path_like_object_giving_bytes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="path must be a str or path"):
        LmdbEngine(_BytesPath(tmp_path / "store"))  # type: ignore[arg-type]
    assert not (tmp_path / "store").exists()  # nothing made


class _NumberPath:
    """A path-like object that gives neither str nor bytes."""

    def __fspath__(self) -> int:
        return 7


def test_a_path_like_object_giving_no_path_is_refused() -> None:
    with pytest.raises(ValidationError, match="is not usable"):
        LmdbEngine(_NumberPath())  # type: ignore[arg-type]


def test_a_path_the_file_system_cannot_encode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="is not usable: 'utf-8' codec can't encode"):
        LmdbEngine(f"{tmp_path}/a\ud800b")
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_a_save_over_an_item_moves_only_the_entries_that_changed(engine: Any) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    engine.save("k", 1, "doc", expires_at=later, tags={"a": "1", "b": "2"})
    engine.save("other", 2, "doc", tags={"a": "1"})
    engine.save("k", 3, "note", tags={"b": "2", "c": "3"})  # a tag gone, one new, another type, no expiry
    report = engine.check()
    assert report.ok, report.problems
    assert (report.tag_entries, report.type_entries, report.expires_entries, report.updated_entries) == (3, 2, 0, 2)
    assert [r.item.metadata.key for r in engine.search(StorageQuery(tags={"a": "1"}))] == ["other"]
    assert [r.item.metadata.key for r in engine.search(StorageQuery(tags={"c": "3"}))] == ["k"]
    assert [r.item.metadata.key for r in engine.search(StorageQuery(content_type="doc"))] == ["other"]
    newest = engine.search(StorageQuery(order_by="-updated_at", limit=1))
    assert [r.item.metadata.key for r in newest] == ["k"]


def test_a_save_puts_back_an_entry_of_its_item_that_damage_took(engine: Any) -> None:
    engine.save("k", 1, "doc", tags={"a": "1"})
    shared = engine.shared
    with shared.env.begin(write=True) as txn:  # the item's created entry and its tag posting go
        cursor = txn.cursor(db=shared.dbs.created)
        assert cursor.first() and cursor.delete()
        assert txn.delete(layout.posting_key(engine._prefix, b"\0\0\0\x01a1"), db=shared.dbs.tags)
    assert not engine.check().ok
    engine.save("k", 2, "doc", tags={"a": "1"})
    assert engine.check().ok
