"""Damaged records and index entries never block anything, and nothing merges silently.

Damage is made with py-lmdb and redis-py directly, under the layouts of
``providers/lmdb/layout.py`` and ``providers/redis/layout.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from helpers import UTC
from unistore import SerializationError, StorageCorruptionError, StorageQuery, index
from unistore.codec import encode_payload
from unistore.metrics import MetricsManager
from unistore.providers import MemoryStorageProvider
from unistore.providers.lmdb import layout
from unistore.providers.lmdb.engine import LmdbEngine
from unistore.providers.redis import RedisStorageProvider
from unistore.providers.redis import layout as redis_layout

OLD = datetime(2000, 1, 1, tzinfo=UTC)

#: Ways a record gets damaged: a header that does not parse, a payload that does not
#: decode, a record cut short, bytes that are not a record at all.
DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "version": lambda record: b"\x09" + record[1:],
    "payload": lambda record: record[:-1] + b"\xc1",
    "cut": lambda record: record[:40],
    "sections": lambda record: record[:64] + b"\xff\xff\xff\x00" + record[68:],  # tags run past the end
    "garbage": lambda record: b"\x01short",
}


def miscount_tags(record: bytes) -> bytes:
    """A header that parses (every length in place) over tags that do not: one tag
    more than the record holds. A matcher without tag criteria passes it."""
    return record[:4] + (int.from_bytes(record[4:8], "little") + 1).to_bytes(4, "little") + record[8:]


def corrupt_count() -> float:
    return MetricsManager.get_instance().value(index.CORRUPT_RECORDS, operation="search")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[LmdbEngine]:
    made = LmdbEngine(tmp_path / "store", durability="none")
    made.save_many({f"user:{n}": {"n": n} for n in range(20)}, "t", tags={"team": "a"})
    yield made
    made.close()


def damage_lmdb(engine: LmdbEngine, key: str, how: Callable[[bytes], bytes]) -> None:
    record_key = engine.record_key(key.encode())

    def op(txn: Any, dbs: Any) -> None:
        txn.put(record_key, how(bytes(txn.get(record_key, db=dbs.records))), db=dbs.records)

    engine.write(op)


# -- load -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", DAMAGE)
def test_a_load_of_a_damaged_key_names_it_as_a_str(engine: LmdbEngine, how: str) -> None:
    damage_lmdb(engine, "user:9", DAMAGE[how])
    with pytest.raises(StorageCorruptionError, match="'user:9'") as caught:
        engine.load("user:9")
    assert caught.value.details == {"key": "user:9"}
    with pytest.raises(StorageCorruptionError) as many:
        engine.load_many(["user:8", "user:9"])
    assert many.value.details == {"key": "user:9"}
    assert engine.load("user:8").data == {"n": 8}


# -- search -----------------------------------------------------------------------------

QUERIES = {
    "suffix": (StorageQuery(pattern="*9"), {"user:19"}),
    "prefix": (StorageQuery(pattern="user:*"), {f"user:{n}" for n in range(20)} - {"user:9"}),
    "created": (StorageQuery(created_after=OLD), {f"user:{n}" for n in range(20)} - {"user:9"}),
    "tags": (StorageQuery(tags={"team": "a"}), {f"user:{n}" for n in range(20)} - {"user:9"}),
    "type": (StorageQuery(content_type="t"), {f"user:{n}" for n in range(20)} - {"user:9"}),
}


@pytest.mark.parametrize("how", DAMAGE)
def test_a_search_skips_a_damaged_record_logs_and_counts_it(
    engine: LmdbEngine, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    damage_lmdb(engine, "user:9", DAMAGE[how])
    for name, (query, expected) in QUERIES.items():
        before = corrupt_count()
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="unistore"):
            found = {result.item.metadata.key for result in engine.search(query)}
        assert found == expected, name
        assert corrupt_count() == before + 1, name
        [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert logged.name == "unistore.index" and "'user:9'" in logged.getMessage(), name


def test_a_skipped_record_never_counts_against_the_limit(engine: LmdbEngine) -> None:
    for key in ("user:0", "user:3", "user:4", "user:9"):
        damage_lmdb(engine, key, DAMAGE["payload"])
    healthy = sorted(f"user:{n}" for n in range(20) if n not in (0, 3, 4, 9))
    for limit in (1, 2, 3, 5, 16, 17):
        found = [r.item.metadata.key for r in engine.search(StorageQuery(pattern="user:*", limit=limit))]
        assert found == healthy[:limit], limit
    assert engine.delete_matching(StorageQuery(pattern="user:*", limit=3)) == 3


def test_the_hot_path_is_one_core_call_while_nothing_is_damaged() -> None:
    """select hands the whole chunk to the core once; only a damaged candidate costs more."""
    calls: list[int] = []

    class Counting:
        def __init__(self, real: Any) -> None:
            self.real = real

        def results(self, records: list[bytes], now: int, most: int) -> Any:
            calls.append(len(records))
            return self.real.results(records, now, most)

    compiled = index.compile_query(StorageQuery())
    counting = index.CompiledQuery(compiled.spec, Counting(compiled.matcher))  # type: ignore[arg-type]
    payload, _ = encode_payload(1)
    from unistore.core import pack_record

    records = [(f"k{n}", pack_record(n, b"u" * 16, 1, 1, None, b"k%d" % n, b"t", [], payload)) for n in range(6)]
    assert len(index.select(counting, records, 0, None)) == 6 and calls == [6]
    calls.clear()
    records[2] = (b"k2", b"\x01short")  # a key the backend gives as bytes is named as text
    assert len(index.select(counting, records, 0, None)) == 5
    assert calls == [6, 2, 3]  # all, then the run before the damaged one, then the rest


async def test_a_search_names_a_bytes_key_as_text(caplog: pytest.LogCaptureFixture) -> None:
    payload, _ = encode_payload(1)
    compiled = index.compile_query(StorageQuery())
    with caplog.at_level(logging.ERROR, logger="unistore"):
        assert index.select(compiled, [(b"d\xc3\xa9g\xc3\xa2t", b"\x01short")], 0, None) == []
    assert "'dégât'" in caplog.text and payload


def test_a_dangling_index_entry_is_skipped_and_reported(engine: LmdbEngine, caplog: pytest.LogCaptureFixture) -> None:
    engine.save_many({f"filler{n}": n for n in range(200)}, "other")  # so that the planner walks the posting list
    assert engine.explain(StorageQuery(tags={"team": "a"})).path == index.POSTINGS
    prefix = engine._prefix

    def drop_ids(txn: Any, dbs: Any) -> None:
        first = txn.get(engine.record_key(b"user:1"), db=dbs.records)
        sid = int.from_bytes(first[8:16], "little")
        txn.delete(layout.id_key(prefix, sid), db=dbs.ids)  # the tags entry now names no key
        txn.delete(engine.record_key(b"user:2"), db=dbs.records)  # an ids entry now names no record

    engine.write(drop_ids)
    before = corrupt_count()
    with caplog.at_level(logging.ERROR, logger="unistore"):
        found = {r.item.metadata.key for r in engine.search(StorageQuery(tags={"team": "a"}))}
    assert found == {f"user:{n}" for n in range(20)} - {"user:1", "user:2"}
    assert corrupt_count() == before + 2
    assert "has no ids entry" in caplog.text and "b'user:2', which has no record" in caplog.text
    assert not engine.check().ok
    engine.check(repair=True)
    assert engine.check().ok


def test_delete_matching_passes_over_a_damaged_record(engine: LmdbEngine, caplog: pytest.LogCaptureFixture) -> None:
    damage_lmdb(engine, "user:9", DAMAGE["version"])
    damage_lmdb(engine, "user:8", lambda record: record[:64] + b"\xff\xff\xff\x00" + record[68:])  # tags run past
    with caplog.at_level(logging.ERROR, logger="unistore"):
        assert engine.delete_matching(StorageQuery(pattern="user:*")) == 18
    assert "'user:9'" in caplog.text and "'user:8'" in caplog.text
    assert MetricsManager.get_instance().value(index.CORRUPT_RECORDS, operation="delete_matching") >= 1


def test_delete_matching_passes_over_a_record_whose_header_matches_but_tags_do_not_parse(
    engine: LmdbEngine, caplog: pytest.LogCaptureFixture
) -> None:
    damage_lmdb(engine, "user:5", miscount_tags)
    before = MetricsManager.get_instance().value(index.CORRUPT_RECORDS, operation="delete_matching")
    with caplog.at_level(logging.ERROR, logger="unistore"):
        assert engine.delete_matching(StorageQuery(pattern="user:*")) == 19
    [logged] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged.startswith("delete_matching skipped the record under key 'user:5', which does not decode")
    assert MetricsManager.get_instance().value(index.CORRUPT_RECORDS, operation="delete_matching") == before + 1
    with pytest.raises(StorageCorruptionError):
        engine.load("user:5")  # passed over, not removed: a delete of its key removes it
    assert engine.delete("user:5") is True and list(engine.search(StorageQuery())) == []


# -- writes over damage ------------------------------------------------------------------


def test_a_save_over_a_damaged_expiring_record_drops_its_expiry_entry(
    engine: LmdbEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Tags that do not parse: the ids, created and expiry entries are found at their
    fixed offsets in the header and dropped; the rest is left for ``check --repair``."""
    engine.save("soon", 1, "t", expires_at=datetime.now(UTC) + timedelta(hours=1), tags={"team": "a"})
    assert engine.check().expires_entries == 1
    damage_lmdb(engine, "soon", miscount_tags)
    item = engine.save("soon", 2, "t")
    report = engine.check()
    assert (report.expires_entries, report.records) == (0, 21)
    assert engine.load("soon") == item and item.metadata.expires_at is None
    with caplog.at_level(logging.ERROR, logger="unistore"):  # its tag's posting stays, and is passed over
        assert len(list(engine.search(StorageQuery(tags={"team": "a"})))) == 20
    engine.check(repair=True)
    assert engine.check().ok and engine.load("soon") == item


@pytest.mark.parametrize("how", DAMAGE)
def test_a_save_replaces_a_damaged_record(engine: LmdbEngine, how: str) -> None:
    damage_lmdb(engine, "user:9", DAMAGE[how])
    item = engine.save("user:9", "new", "t2", tags={"team": "b"})
    assert engine.load("user:9") == item
    assert [r.item.metadata.key for r in engine.search(StorageQuery(tags={"team": "b"}))] == ["user:9"]
    assert len(list(engine.search(StorageQuery(pattern="user:*")))) == 20
    report = engine.check()
    if how in ("version", "payload"):  # a header that still parses names every entry it had
        assert report.ok, report.problems
    engine.check(repair=True)
    assert engine.check().ok
    assert engine.load("user:9") == item and engine.load("user:8").data == {"n": 8}


@pytest.mark.parametrize("how", DAMAGE)
def test_a_delete_removes_a_damaged_record(engine: LmdbEngine, how: str) -> None:
    damage_lmdb(engine, "user:9", DAMAGE[how])
    damage_lmdb(engine, "user:8", DAMAGE[how])
    assert engine.delete("user:9") is True
    assert engine.delete_many(["user:8", "user:7", "nothing"]) == 2
    assert {r.item.metadata.key for r in engine.search(StorageQuery(created_after=OLD))} == {
        f"user:{n}" for n in range(20) if n not in (7, 8, 9)
    }
    engine.check(repair=True)
    assert engine.check().ok and len(list(engine.search(StorageQuery()))) == 17


def test_save_many_replaces_damaged_records(engine: LmdbEngine) -> None:
    damage_lmdb(engine, "user:9", DAMAGE["version"])
    damage_lmdb(engine, "user:3", DAMAGE["garbage"])
    items = engine.save_many({"user:9": 9, "user:3": 3, "new": 0}, "t")
    assert [engine.load(key) for key in ("user:9", "user:3", "new")] == items
    engine.check(repair=True)
    assert engine.check().ok and len(list(engine.search(StorageQuery()))) == 21


def test_check_reports_damage_and_repair_keeps_healthy_items(engine: LmdbEngine) -> None:
    before = {r.item.metadata.key: r.item for r in engine.search(StorageQuery())}
    damage_lmdb(engine, "user:9", DAMAGE["payload"])
    report = engine.check()
    assert not report.ok and any("'user:9' does not decode" in problem for problem in report.problems)
    engine.check(repair=True)
    assert engine.check().ok
    del before["user:9"]
    assert {r.item.metadata.key: r.item for r in engine.search(StorageQuery())} == before


# -- a truncated data file ----------------------------------------------------------------

_OPEN_AND_READ = """
import sys
from unistore import StorageCorruptionError, StorageQuery
from unistore.providers.lmdb.engine import LmdbEngine
try:
    engine = LmdbEngine(sys.argv[1])
    print(len(list(engine.search(StorageQuery()))), engine.load("k5").data)
except StorageCorruptionError as exc:
    print("refused:", exc)
"""


@pytest.mark.watchdog(60)
def test_a_truncated_data_file_is_refused_in_a_process_that_lives(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    engine = LmdbEngine(whole, durability="none")
    engine.save_many({f"k{n}": "x" * 300 for n in range(3000)}, "t")
    engine.close()
    size = os.path.getsize(whole / "data.mdb")
    for cut in (size - 4096, size // 2, 3 * 4096, 2 * 4096 + 100):
        copy = tmp_path / f"cut{cut}"
        shutil.copytree(whole, copy)
        os.truncate(copy / "data.mdb", cut)
        ran = subprocess.run(
            [sys.executable, "-c", _OPEN_AND_READ, str(copy)], check=False, capture_output=True, text=True, timeout=50
        )
        assert ran.returncode == 0, (cut, ran.returncode, ran.stderr)  # -7 would be a SIGBUS
        assert ran.stdout.startswith("refused: the store's data.mdb is"), (cut, ran.stdout)


# -- silent merges -----------------------------------------------------------------------


async def test_keys_that_encode_alike_are_refused_not_merged() -> None:
    naive = datetime(2024, 5, 1, 12, 30)
    aware = naive.astimezone(UTC)
    provider = MemoryStorageProvider()
    for data in ({naive: 1, aware: 2}, {"deep": [{naive: 1, aware.astimezone(): 2}]}):
        with pytest.raises(SerializationError, match="keys that are distinct but encode alike"):
            await provider.save("k", data, "t")
    assert await provider.load_many(["k"]) == {}
    # Alike keys that Python already holds as one, and equal values, are fine.
    item = await provider.save("k", {aware: [naive, aware], aware + timedelta(hours=1): 3}, "t")
    assert item.data == {aware: [aware, aware], aware + timedelta(hours=1): 3}


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**5000], ids=["above", "below", "huge"])
def test_an_integer_beyond_msgpack_says_so(value: int) -> None:
    with pytest.raises(SerializationError, match=r"outside msgpack's range \(-2\*\*63 to 2\*\*64-1\)"):
        encode_payload({"n": value})
    assert encode_payload([2**64 - 1, -(2**63)])[1] == [2**64 - 1, -(2**63)]


# -- Redis ----------------------------------------------------------------------------------


@pytest.fixture
async def redis_provider(redis_port: int, redis_db: int, raw: redis.Redis) -> AsyncIterator[RedisStorageProvider]:
    provider = RedisStorageProvider({"host": "127.0.0.1", "port": redis_port, "db": redis_db}, namespace="dmg")
    await provider.save_many({f"user:{n}": {"n": n} for n in range(20)}, "t", tags={"team": "a"})
    yield provider
    await provider.cleanup()


def damage_redis(raw: redis.Redis, key: str, how: Callable[[bytes], bytes]) -> None:
    record_key = redis_layout.record_key(redis_layout.shard_prefix(b"dmg", 0, 1), key.encode())
    record = raw.get(record_key)
    assert isinstance(record, bytes)
    raw.set(record_key, how(record))


@pytest.mark.parametrize("how", DAMAGE)
async def test_redis_load_search_save_and_delete_over_damage(
    redis_provider: RedisStorageProvider, raw: redis.Redis, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    damage_redis(raw, "user:9", DAMAGE[how])
    damage_redis(raw, "user:8", DAMAGE[how])
    with pytest.raises(StorageCorruptionError) as caught:
        await redis_provider.load("user:9")
    assert caught.value.details == {"key": "user:9"}
    for name, (query, expected) in QUERIES.items():
        before = corrupt_count()
        with caplog.at_level(logging.ERROR, logger="unistore"):
            found = {r.item.metadata.key async for r in redis_provider.search(query)}
        assert found == expected - {"user:8"}, name
        assert corrupt_count() == before + (1 if name == "suffix" else 2), name
    assert "'user:9'" in caplog.text
    item = await redis_provider.save("user:9", "new", "t", tags={"team": "b"})
    assert await redis_provider.load("user:9") == item
    assert await redis_provider.delete("user:8", content_type="t") is True
    assert [r.item.metadata.key async for r in redis_provider.search(StorageQuery(tags={"team": "b"}))] == ["user:9"]
    assert len([r async for r in redis_provider.search(StorageQuery(pattern="user:*"))]) == 19
    await redis_provider.check(repair=True)
    assert (await redis_provider.check()).ok
