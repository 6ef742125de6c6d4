"""A hostile review of issue 12's last changes: Redis cleanup() with steps under way,
migrate over damaged records, LMDB backups made private by fd."""

from __future__ import annotations

import asyncio
import gc
import signal
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from unistore import StorageError, StorageQuery, ValidationError
from unistore.migrate import copy, prune
from unistore.providers import LmdbStorageProvider, MemoryStorageProvider, RedisStorageProvider
from unistore.providers.base import StorageProvider
from unistore.providers.redis import layout as redis_layout


@pytest.fixture
def admin(redis_port: int) -> Iterator[redis.Redis]:
    with redis.Redis(port=redis_port) as client:
        yield client
        client.client_unpause()


def _connected(admin: redis.Redis) -> int:
    return int(admin.info("clients")["connected_clients"]) - 1  # less the admin's own


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (polling the loop) until ``condition()`` holds, 10 s at most."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


def _under_way(provider: RedisStorageProvider) -> Callable[[], bool]:
    """Whether a step of this loop's connection is under way (a command sent, not yet answered)."""
    return lambda: any(connection.busy for connection in provider._connections.values())


@pytest.mark.watchdog(120)
async def test_a_second_cleanup_returns_only_once_the_first_has_closed(redis_port: int, admin: redis.Redis) -> None:
    # The first cleanup pops the connection, so a second found none and returned at once,
    # the connection still open (a shutdown path that awaits its own cleanup then leaks).
    before = _connected(admin)
    provider = RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex})
    await provider.save("k", 1, "t")
    admin.client_pause(400, all=False)  # writes wait: the save below is under way meanwhile
    saving = asyncio.ensure_future(provider.save("k", 2, "t"))
    await _until(_under_way(provider))
    [connection] = provider._connections.values()
    first = asyncio.ensure_future(provider.cleanup())
    await _until(lambda: connection.closed)  # the first cleanup has begun, and waits for the save
    await provider.cleanup()  # a second cleanup (another task's, say) while the first waits
    assert _connected(admin) == before, "the second cleanup() returned with the connection still open"
    await first
    assert (await saving).data == 2
    gc.collect()


@pytest.mark.watchdog(120)
async def test_a_cleanup_during_the_first_check_leaves_nothing_open(redis_port: int, admin: redis.Redis) -> None:
    before = _connected(admin)
    provider = RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex})
    # The first check (it reads the shard count and the maxmemory policy) ran outside any
    # step: a cleanup meanwhile closed the client under it, and redis-py's retry reopened a
    # connection that nothing closed.
    admin.client_pause(400, all=True)  # every command waits: the first check's GET is under way
    loading = asyncio.ensure_future(provider.load("k"))
    await _until(_under_way(provider))
    await provider.cleanup()
    [outcome] = await asyncio.gather(loading, return_exceptions=True)  # it ends once the pause does
    assert "closed (cleanup) during this operation" in str(outcome), repr(outcome)
    gc.collect()  # an unclosed connection warns when collected (an error in this suite)
    assert _connected(admin) == before


@pytest.mark.watchdog(120)
async def test_a_cleanup_given_up_while_a_command_is_under_way_leaves_nothing_open(
    redis_port: int, admin: redis.Redis
) -> None:
    # A cleanup cancelled (here by wait_for's timeout, as a caller bounding its shutdown
    # would) closed the client under the command still under way: redis-py retried it on
    # a new connection of the closed client, which nothing closed (the leak 5c6c396 fixed).
    before = _connected(admin)
    provider = RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex})
    await provider.save("k", 1, "t")
    admin.client_pause(400, all=False)
    saving = asyncio.ensure_future(provider.save("k", 2, "t"))
    await _until(_under_way(provider))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(provider.cleanup(), 0.1)
    await asyncio.gather(saving, return_exceptions=True)  # it ends once the pause does
    await provider.cleanup()  # and any close still under way with it
    gc.collect()  # an unclosed connection warns when collected (an error in this suite)
    assert _connected(admin) == before
    assert (await provider.load("k")).data == 2  # the save landed
    await provider.cleanup()


@pytest.mark.watchdog(120)
async def test_one_provider_in_two_threads_each_with_its_loop_cleans_up_its_own(
    redis_port: int, admin: redis.Redis
) -> None:
    # Kept: a provider shared by two threads (an event loop each) keeps a connection per
    # loop; each thread's cleanup closes its own, never the other's, with steps under way.
    before = _connected(admin)
    provider = RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex, "shards": 2})
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    async def work(number: int) -> None:
        await provider.save_many({f"t{number}-{n}": n for n in range(200)}, "t")
        barrier.wait(10)  # both loops hold a connection now
        keys = [f"t{number}-{n}" for n in range(200)]
        loads = [asyncio.ensure_future(provider.load_many(keys)) for _ in range(20)]
        await asyncio.sleep(0)
        await provider.cleanup()  # this loop's only
        for outcome in await asyncio.gather(*loads, return_exceptions=True):
            if isinstance(outcome, StorageError):
                assert "closed (cleanup) during this operation" in str(outcome)
            else:
                assert isinstance(outcome, dict) and len(outcome) == 200, repr(outcome)
        assert len(await provider.load_many([f"t{1 - number}-{n}" for n in range(200)])) == 200
        await provider.cleanup()

    def run(number: int) -> None:
        try:
            asyncio.run(work(number))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(number,)) for number in range(2)]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(lambda: [thread.join(60) for thread in threads])
    assert errors == [] and _connected(admin) == before
    gc.collect()


# -- migrate over damaged records ----------------------------------------------------------


def _damage(provider: StorageProvider[Any], key: str, redis_port: int) -> None:
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
        assert isinstance(provider, MemoryStorageProvider) and key in provider._records
        provider._records[key] = b"garbage"


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
        _damage(source, "bad", redis_port)
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
            _damage(target, key, redis_port)
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
        _damage(source, "b", redis_port)
        _damage(target, "a", redis_port)
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


# -- LMDB backups ----------------------------------------------------------------------------


@pytest.mark.watchdog(120)
@pytest.mark.parametrize("compact", [False, True])
async def test_backups_at_once_into_one_directory_leave_one_whole_backup(tmp_path: Path, compact: bool) -> None:
    # A backup that lost the race for data.mdb (O_EXCL: another backup had just made it)
    # removed it as its own half-written file: the winner reported success and left
    # nothing. (The compact copy opened the same file as the other, unlocked.)
    provider = LmdbStorageProvider(tmp_path / "store", durability="none")
    items = {f"k{number}": "x" * 100 for number in range(3000)}
    await provider.save_many(items, "t")
    try:
        for round_ in range(6):
            dest = tmp_path / f"dest{round_}"
            outcomes = await asyncio.gather(
                *(provider.backup(dest, compact=compact) for _ in range(4)), return_exceptions=True
            )
            assert (dest / "data.mdb").is_file(), outcomes  # a backup said it was done
            assert outcomes.count(None) == 1, outcomes
            for outcome in outcomes:
                assert outcome is None or isinstance(outcome, ValidationError), repr(outcome)
            backup = LmdbStorageProvider(dest)
            try:
                assert len([result async for result in backup.search(StorageQuery())]) == len(items)
            finally:
                await backup.cleanup()
    finally:
        await provider.cleanup()


async def test_a_backup_through_a_link_to_a_directory_lands_there_private(tmp_path: Path) -> None:
    # Kept: dest may be a symbolic link to a directory (resolved first); data.mdb is made 0600.
    provider = LmdbStorageProvider(tmp_path / "store")
    await provider.save("k", 1, "t")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    try:
        await provider.backup(tmp_path / "link")
        assert stat.S_IMODE((tmp_path / "real" / "data.mdb").stat().st_mode) == 0o600
        with pytest.raises(ValidationError, match="already holds a store"):
            await provider.backup(tmp_path / "link", compact=True)
    finally:
        await provider.cleanup()


@pytest.mark.watchdog(120)
@pytest.mark.parametrize("compact", [False, True])
async def test_a_backup_while_writers_run_is_a_consistent_store(tmp_path: Path, compact: bool) -> None:
    # Kept: each batch lands whole in the copy or not at all, and the copy checks clean.
    provider = LmdbStorageProvider(tmp_path / "store", durability="none")
    stop = False

    async def writer(number: int) -> None:
        round_ = 0
        while not stop:
            await provider.save_many({f"w{number}-{n}": round_ for n in range(50)}, "t", tags={"round": str(round_)})
            round_ += 1
            await asyncio.sleep(0)  # a save with durability "none" may finish without yielding

    writers = [asyncio.ensure_future(writer(number)) for number in range(3)]
    await asyncio.sleep(0.05)
    try:
        await provider.backup(tmp_path / "dest", compact=compact)
    finally:
        stop = True
        await asyncio.gather(*writers)
    backup = LmdbStorageProvider(tmp_path / "dest")
    try:
        assert (await backup.check()).ok
        rounds: dict[str, set[int]] = {}
        async for result in backup.search(StorageQuery()):
            rounds.setdefault(result.item.metadata.key.split("-")[0], set()).add(result.item.data)
        assert all(len(seen) == 1 for seen in rounds.values()), rounds  # one batch: one round
    finally:
        await backup.cleanup()
        await provider.cleanup()


_KILLED_MID_BACKUP = """
import asyncio, resource, signal, sys
from unistore.providers import LmdbStorageProvider

signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: a write past the limit now kills

async def main():
    provider = LmdbStorageProvider(sys.argv[1])
    await provider.save_many({f"k{number}": "x" * 1000 for number in range(2000)}, "t")  # ~3 MB
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))  # SIGXFSZ kills it
    await provider.backup(sys.argv[2], compact=sys.argv[3] == "compact")

asyncio.run(main())
"""


@pytest.mark.parametrize("compact", [False, True])
def test_a_backup_killed_part_way_leaves_no_data_file(tmp_path: Path, compact: bool) -> None:
    # A process killed during a backup left a truncated data.mdb: refused at open, but a
    # directory that looks like a backup, and a new backup into it was refused.
    dest = tmp_path / "dest"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_MID_BACKUP,
            str(tmp_path / "store"),
            str(dest),
            "compact" if compact else "plain",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    # The plain copy writes with write(2): the kernel kills the process. The compact one's
    # commit meets the limit as an I/O error and the backup fails: the same either way.
    assert done.returncode == (1 if compact else -signal.SIGXFSZ), done.stderr
    assert not (dest / "data.mdb").exists()

    async def again() -> None:
        provider = LmdbStorageProvider(tmp_path / "store")
        await provider.backup(dest, compact=compact)  # the directory is not taken
        await provider.cleanup()
        backup = LmdbStorageProvider(dest)
        assert len(await backup.load_many([f"k{number}" for number in range(2000)])) == 2000
        await backup.cleanup()

    asyncio.run(again())
