"""The in-place upgrade of a format-2 store (providers/lmdb/upgrade.py): a store written by
the format-2 release (tests/fixtures/format2_store.tar.gz) opens, upgrades and answers
ordered queries; a maintenance open refuses it and says what to do; an upgrade killed in
the middle leaves a store of the old format that the next open finishes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tarfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import lmdb
import pytest

from helpers import UTC
from unistore import StorageError, StorageQuery
from unistore._coretypes import HEADER_OFFSETS
from unistore.cli import main
from unistore.providers import LmdbStorageProvider
from unistore.providers.lmdb import upgrade as upgrading
from unistore.providers.lmdb.layout import open_databases
from unistore.providers.lmdb.provider import existing_store, store_namespaces

FIXTURE = Path(__file__).parent.parent.parent / "fixtures" / "format2_store.tar.gz"
START = datetime(2026, 1, 1, tzinfo=UTC)
UPDATED = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    """A copy of the store the format-2 release wrote (see tests/fixtures/make_format2_store.py)."""
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path / "store"


def _raw(path: Path) -> lmdb.Environment:
    return lmdb.open(str(path), max_dbs=10)


def format_of(path: Path, env: lmdb.Environment | None = None) -> tuple[int, bytes | None, int | None]:
    """The store's format number, its upgrade position, and the entries of ``updated`` (None:
    no such database); read through ``env`` if the test has it open."""
    opened = env or _raw(path)
    try:
        with opened.begin() as txn:  # (a reader: it never waits for an upgrade's step)
            names = {bytes(name) for name in txn.cursor().iternext(values=False)}
            meta = opened.open_db(b"meta", txn=txn, create=False)
            number = int.from_bytes(txn.get(b"format", db=meta), "big")
            position = txn.get(b"upgrade", db=meta)
            updated = None
            if b"updated" in names:
                updated = txn.stat(opened.open_db(b"updated", txn=txn, create=False))["entries"]
    finally:
        if env is None:
            opened.close()
    return number, position, updated


def downgrade(path: Path) -> None:
    """Make a store written by this release what the format-2 release wrote: no ``updated``, format 2."""
    env = _raw(path)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"updated", txn=txn), delete=True)
        txn.put(b"format", (2).to_bytes(4, "big"), db=env.open_db(b"meta", txn=txn))
    env.close()


def expected_by_update() -> list[str]:
    """The fixture's namespace "a", newest update first (see make_format2_store.py)."""
    times = {f"k{n:02d}": UPDATED + timedelta(seconds=n * 7 % 60) for n in range(60)}
    return sorted(times, key=lambda key: (times[key], key), reverse=True)


async def test_a_format_2_store_is_upgraded_by_its_first_open_for_writing(
    old_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert format_of(old_store) == (2, None, None)
    caplog.set_level(logging.WARNING, "unistore.providers.lmdb.upgrade")
    provider = LmdbStorageProvider(old_store, namespace="a")
    try:
        messages = [record.getMessage() for record in caplog.records]
        assert messages[0] == f"starting the in-place upgrade of the store {str(old_store)!r} from format 2 to format 3"
        assert messages[-1].startswith(f"upgraded the store {str(old_store)!r} to format 3: 62 records indexed")
        found = [r.item.metadata.key async for r in provider.search(StorageQuery(order_by="-updated_at"))]
        long_key = "L" * 600  # saved last, after every restored item
        assert found == [long_key, *expected_by_update()]
        page = await provider.page(StorageQuery(order_by="updated_at", tags={"group": "1"}), 5)
        ones = [key for key in reversed(expected_by_update()) if int(key[1:]) % 3 == 1]
        assert [r.item.metadata.key for r in page.results] == ones[:5]
        oldest = await provider.page(StorageQuery(order_by="created_at"), 1)
        assert [r.item.metadata.key for r in oldest.results] == ["k59"]
        report = await provider.check()
        assert report.ok and (report.records, report.updated_entries) == (61, 61)
        item = await provider.load("k10")
        assert (item.data, item.metadata.expires_at) == ({"n": 10}, datetime(2100, 1, 1, tzinfo=UTC))
        await provider.save("k00", "again", "text/plain")
        first = [r.item.metadata.key async for r in provider.search(StorageQuery(order_by="-updated_at", limit=1))]
        assert first == ["k00"]
    finally:
        await provider.cleanup()
    other = LmdbStorageProvider(old_store, namespace="b")
    try:
        assert (await other.load("other")).data == "b's"
        assert (await other.check()).updated_entries == 1
    finally:
        await other.cleanup()
    assert format_of(old_store) == (3, None, 62)  # 60 items and a long key in "a" (one saved again), one in "b"


def test_a_maintenance_open_refuses_a_format_2_store_and_says_what_to_do(old_store: Path) -> None:
    before = (old_store / "data.mdb").read_bytes()
    with pytest.raises(StorageError, match=r"format version 2, which this version of unistore upgrades in place"):
        store_namespaces(old_store)
    with pytest.raises(StorageError, match=r"run `unistore --store lmdb:///PATH upgrade`"):
        LmdbStorageProvider(old_store, namespace="a", create=False)
    assert (old_store / "data.mdb").read_bytes() == before
    status = main(["--store", f"lmdb://{old_store}", "check"])
    assert status != 0 and format_of(old_store)[0] == 2


def test_the_upgrade_command_upgrades_in_place(old_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", f"lmdb://{old_store}", "upgrade"]) == 0
    assert capsys.readouterr().out == f"lmdb://{old_store} is in this release's format\n"
    assert format_of(old_store) == (3, None, 62)
    assert main(["--store", f"lmdb://{old_store}", "upgrade"]) == 0  # nothing left to do
    assert [namespace.name for namespace in store_namespaces(old_store)] == ["a", "b"]
    assert main(["--store", "redis://127.0.0.1:9/0", "upgrade"]) != 0
    assert "only LMDB stores have a format to upgrade" in capsys.readouterr().err
    assert main(["--store", f"lmdb://{old_store.parent / 'none'}", "upgrade"]) != 0
    assert not (old_store.parent / "none").exists()


async def _big_old_store(path: Path, items: int) -> None:
    provider = LmdbStorageProvider(path, durability="none")
    for start in range(0, items, 5000):
        await provider.save_many({f"k{n:06}": n for n in range(start, start + 5000)}, "t", tags={"g": str(start)})
    await provider.save_many({f"k{n:06}": -n for n in range(0, items, 7)}, "t")  # updated later than created
    await provider.cleanup()
    downgrade(path)


def test_an_upgrade_killed_in_the_middle_is_finished_by_the_next_open(tmp_path: Path) -> None:
    store = tmp_path / "store"
    asyncio.run(_big_old_store(store, 30_000))
    pid = os.fork()
    if pid == 0:  # the child: upgrade in small steps until killed
        try:
            upgrading.STEP = 200
            LmdbStorageProvider(store)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 60
        while format_of(store)[1] is None:  # until a step has been committed
            assert time.monotonic() < deadline, "the child never committed a step"
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    number, position, updated = format_of(store)
    assert number == 2 and position is not None and updated is not None and 0 < updated < 30_000
    asyncio.run(_finished(store))
    assert format_of(store) == (3, None, 30_000)


async def _finished(store: Path) -> None:
    provider = LmdbStorageProvider(store, durability="none")  # finishes the upgrade
    try:
        report = await provider.check()
        assert report.ok and report.updated_entries == 30_000
        newest = [r.item.data async for r in provider.search(StorageQuery(order_by="-updated_at", limit=3))]
        assert newest == [-29_995, -29_988, -29_981]  # the last save_many: one instant, so by key, descending
    finally:
        await provider.cleanup()


def test_an_upgrade_goes_on_from_its_last_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    asyncio.run(_big_old_store(store, 10_000))
    env = _raw(store)
    dbs = open_databases(env, upgrade=lambda env, dbs: None)  # the databases, the store left at format 2
    monkeypatch.setattr(upgrading, "STEP", 1000)
    with env.begin(write=True) as txn:  # two steps done, then a crash
        done, last = upgrading._index(txn, dbs, None, 2000)
        txn.put(b"upgrade", last, db=dbs.meta)
    assert (done, format_of(store, env)[1]) == (2000, last)
    with env.begin(write=True) as txn:  # the record at the position went since (deleted by a writer)
        txn.delete(last, db=dbs.records)
        txn.put(b"zz", b"x" * 8, db=dbs.records)  # and one too short to hold a header (for check --repair)
    upgrading.upgrade(env, dbs)
    assert format_of(store, env) == (3, None, 10_000)  # the deleted record's entries stay (for check --repair)
    upgrading.upgrade(env, dbs)  # at format 3 already (another process finished it): nothing
    env.close()


def test_a_store_written_between_two_steps_is_indexed_again_whole(tmp_path: Path) -> None:
    store = tmp_path / "store"
    asyncio.run(_big_old_store(store, 5_000))
    env = _raw(store)
    dbs = open_databases(env, upgrade=lambda env, dbs: None)
    with env.begin(write=True) as txn:
        _, last = upgrading._index(txn, dbs, None, 1000)
        txn.put(b"upgrade", last, db=dbs.meta)
        cursor = txn.cursor(db=dbs.updated)  # a record saved behind the position by the previous release
        assert cursor.first() and cursor.delete()
    upgrading.upgrade(env, dbs)
    env.close()
    assert format_of(store) == (3, None, 5_000)
    with existing_store(store) as shared:
        assert shared.read(lambda txn, dbs: txn.stat(dbs.updated)["entries"]) == 5_000


def test_a_record_saved_again_behind_the_upgrade_by_the_previous_release_is_indexed(tmp_path: Path) -> None:
    # A writer of the previous release saving between two steps: it rewrites a record the
    # upgrade has passed (its header's update time changes) and writes no updated entry,
    # leaving the counts equal. The last step finds the record's entry missing.
    store = tmp_path / "store"
    asyncio.run(_big_old_store(store, 5_000))
    env = _raw(store)
    dbs = open_databases(env, upgrade=lambda env, dbs: None)
    offset = HEADER_OFFSETS["updated"]
    with env.begin(write=True) as txn:
        _, last = upgrading._index(txn, dbs, None, 1000)
        txn.put(b"upgrade", last, db=dbs.meta)
        cursor = txn.cursor(db=dbs.records)
        assert cursor.first()
        record = bytearray(cursor.value())
        later = int.from_bytes(record[offset : offset + 8], "little") + 1_000_000
        record[offset : offset + 8] = later.to_bytes(8, "little")
        assert cursor.put(cursor.key(), bytes(record))
    upgrading.upgrade(env, dbs)
    env.close()
    assert format_of(store) == (3, None, 5_000)
    provider = LmdbStorageProvider(store, durability="none")
    try:
        assert asyncio.run(provider.check()).ok
    finally:
        asyncio.run(provider.cleanup())


def test_the_upgrade_s_last_log_counts_every_record_however_many_opens_it_took(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    asyncio.run(_big_old_store(store, 5_000))
    env = _raw(store)
    dbs = open_databases(env, upgrade=lambda env, dbs: None)
    with env.begin(write=True) as txn:  # an open that did two steps, then failed (a full map)
        _, last = upgrading._index(txn, dbs, None, 3000)
        txn.put(b"upgrade", last, db=dbs.meta)
    caplog.set_level(logging.WARNING, "unistore.providers.lmdb.upgrade")
    upgrading.upgrade(env, dbs)
    env.close()
    assert "to format 3: 5000 records indexed by update time" in caplog.records[-1].getMessage()
