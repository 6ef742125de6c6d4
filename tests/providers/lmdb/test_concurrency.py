"""The LMDB environment under what deployments do to it: forks, many threads and
processes, many namespaces, opens during writes, growth under readers, address
space running out, and opening and closing from several threads.

Every test here could hang if the environment layer were wrong, so each has a
watchdog (tests/conftest.py): a hang fails the run with every thread's stack.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import lmdb
import pytest

from unistore import ItemNotFoundError, StorageError, StorageQuery, index
from unistore.providers import LmdbEngine, LmdbStorageProvider
from unistore.providers.lmdb import environment
from unistore.providers.lmdb.environment import SharedEnvironment
from unistore.providers.lmdb.writer import GroupCommitWriter


def keys_of(results: Any) -> set[str]:
    return {result.item.metadata.key for result in results}


def run_threads(work: Callable[[int], None], count: int, timeout: float) -> list[BaseException]:
    """Run ``work(0)`` to ``work(count - 1)`` in threads at once, to the end; what they raised."""
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return errors


# -- fork --------------------------------------------------------------------------


async def _child_work(provider: LmdbStorageProvider, name: str) -> None:
    await asyncio.gather(*(provider.save(f"{name}:{n}", {"n": n}, "t", tags={"child": name}) for n in range(30)))
    assert (await provider.load(f"{name}:7")).data == {"n": 7}
    found = {r.item.metadata.key async for r in provider.search(StorageQuery(tags={"child": name}))}
    assert found == {f"{name}:{n}" for n in range(30)}
    assert {r.item.metadata.key async for r in provider.search(StorageQuery(pattern="parent:*"))} == {"parent:0"}


def _child(inherited: LmdbStorageProvider, store: str, durability: str, name: str, own: bool) -> None:
    # The child's own watchdog: SIGALRM ends it. (Not faulthandler's timer: a forked child
    # inherits the parent's armed timer without its thread, and rearming it waits forever.)
    signal.alarm(60)
    try:
        provider = LmdbStorageProvider(store, namespace="app", durability=durability) if own else inherited
        asyncio.run(_child_work(provider, name))
        asyncio.run(provider.cleanup())
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


@pytest.mark.watchdog(120)
@pytest.mark.parametrize("durability", ["sync", "none"])
def test_forked_children_use_the_store_and_the_parent_goes_on(tmp_path: Path, durability: str) -> None:
    store = str(tmp_path / "store")
    provider = LmdbStorageProvider(store, namespace="app", durability=durability)
    asyncio.run(provider.save("parent:0", "before the fork", "t"))  # the writer thread runs (sync)
    assert asyncio.run(provider.load("parent:0")).data == "before the fork"
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_child, args=(provider, store, durability, f"c{n}", n % 2 == 1)) for n in range(4)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(90)
    assert [child.exitcode for child in children] == [0, 0, 0, 0]

    async def parent_after() -> None:
        await provider.save("parent:1", "after the fork", "t")
        for n in range(4):
            found = {r.item.metadata.key async for r in provider.search(StorageQuery(tags={"child": f"c{n}"}))}
            assert len(found) == 30
        assert (await provider.load("parent:1")).data == "after the fork"
        assert (await provider.check()).ok

    asyncio.run(parent_after())
    asyncio.run(provider.cleanup())


@pytest.mark.watchdog(120)
def test_a_fork_while_threads_read_and_write(tmp_path: Path) -> None:
    engine = LmdbEngine(tmp_path / "store", durability="none")
    engine.save("k", 0, "t")
    stop = threading.Event()
    errors: list[BaseException] = []

    def busy(n: int) -> None:
        try:
            while not stop.is_set():
                engine.save(f"t{n}", n, "t")
                assert engine.load("k").data == 0
                list(engine.search(StorageQuery(pattern="t*")))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=busy, args=(n,), daemon=True) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(20):
            pid = os.fork()
            if pid == 0:  # the child: its own environment, reopened on first use
                try:
                    engine.save(f"child{round_}", round_, "t")
                    os._exit(0 if engine.load("k").data == 0 else 1)
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == []
    assert keys_of(engine.search(StorageQuery(pattern="child*"))) == {f"child{n}" for n in range(20)}
    assert engine.check().ok
    engine.close()


# -- readers -----------------------------------------------------------------------


@pytest.mark.watchdog(120)
def test_three_hundred_threads_read_at_once(tmp_path: Path) -> None:
    engine = LmdbEngine(tmp_path / "store", durability="none")
    for n in range(50):
        engine.save(f"k{n}", n, "t", tags={"all": "yes"})
    together = threading.Barrier(300, timeout=60)

    def reader(n: int) -> None:
        # Every thread holds a read transaction while all 300 meet: 300 slots at once.
        engine.shared.read(lambda txn, dbs: together.wait())
        assert engine.load(f"k{n % 50}").data == n % 50
        assert len(list(engine.search(StorageQuery(tags={"all": "yes"})))) == 50

    errors = run_threads(reader, 300, 90)
    assert errors == []
    engine.close()


@pytest.mark.watchdog(180)
def test_readers_killed_mid_read_never_fill_the_table(tmp_path: Path) -> None:
    store = tmp_path / "store"
    engine = LmdbEngine(store, durability="none", max_readers=8)  # few slots: the dead would fill them fast
    engine.save("k", 1, "t")
    for _ in range(200):
        ready, holding = os.pipe()
        pid = os.fork()
        if pid == 0:  # killed while it holds a read transaction (and its reader slot)
            try:
                engine.shared.read(lambda txn, dbs, fd=holding: (os.write(fd, b"x"), time.sleep(60)))
            finally:
                os._exit(1)
        os.close(holding)
        assert os.read(ready, 1) == b"x"
        os.close(ready)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert engine.load("k").data == 1
    assert sum(1 for line in engine.shared.env.readers().splitlines()[1:] if line.strip()) <= 8
    engine.close()


def _hold_every_slot(engine: LmdbEngine, seconds: float) -> list[int]:
    """Fork two children that hold a read transaction each (all of max_readers=2) for
    ``seconds``, then free their slots and exit; returns their pids once both hold."""
    children = []
    for _ in range(2):
        ready, holding = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                engine.shared.read(lambda txn, dbs, fd=holding: (os.write(fd, b"x"), time.sleep(seconds)))
                engine.close()  # frees its slot
            finally:
                os._exit(0)
        os.close(holding)
        assert os.read(ready, 1) == b"x"
        os.close(ready)
        children.append(pid)
    return children


@pytest.mark.watchdog(60)
def test_a_reopen_waits_for_live_readers_to_free_a_slot(tmp_path: Path) -> None:
    engine = LmdbEngine(tmp_path / "store", durability="none", max_readers=2)
    engine.save("k", 1, "t")
    children = _hold_every_slot(engine, 0.5)
    assert engine.load("k").data == 1  # the reopen after the forks waits for a slot
    for pid in children:
        os.waitpid(pid, 0)
    engine.close()


@pytest.mark.watchdog(60)
def test_a_reopen_that_finds_no_slot_in_time_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "READER_SLOT_WAIT", 0.05)
    engine = LmdbEngine(tmp_path / "store", durability="none", max_readers=2)
    engine.save("k", 1, "t")
    children = _hold_every_slot(engine, 2)
    with pytest.raises(StorageError, match="raise max_readers"):
        engine.load("k")
    for pid in children:
        os.waitpid(pid, 0)
    assert engine.load("k").data == 1  # the next operation reopens it
    engine.close()


def test_readers_full_of_live_readers_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "READER_SLOT_WAIT", 0.05)
    engine = LmdbEngine(tmp_path / "store", durability="none", max_readers=1)
    engine.save("k", 1, "t")
    inside, done = threading.Event(), threading.Event()

    def hold() -> None:
        engine.shared.read(lambda txn, dbs: (inside.set(), done.wait(30)))

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    inside.wait(30)
    try:
        with pytest.raises(StorageError, match="raise max_readers") as caught:
            engine.load("k")
        assert isinstance(caught.value.__cause__, lmdb.ReadersFullError)
    finally:
        done.set()
        holder.join(30)
    assert engine.load("k").data == 1  # the slot is free again
    engine.close()


# -- namespaces --------------------------------------------------------------------


@pytest.mark.watchdog(300)
def test_a_thousand_namespaces_each_see_their_own(tmp_path: Path) -> None:
    store = tmp_path / "store"
    engines = [LmdbEngine(store, namespace=f"tenant-{n}", durability="none") for n in range(1000)]
    for n, engine in enumerate(engines):
        engine.save("same-key", n, "t", tags={"tenant": "any"})
    for n, engine in enumerate(engines):
        assert engine.load("same-key").data == n
        assert [r.item.data for r in engine.search(StorageQuery(tags={"tenant": "any"}))] == [n]
        assert [r.item.data for r in engine.search(StorageQuery())] == [n]
    assert engines[3].delete("same-key") is True
    assert engines[4].load("same-key").data == 4
    for engine in engines:
        engine.close()


@pytest.mark.watchdog(180)
async def test_opening_namespaces_while_durable_saves_run(tmp_path: Path) -> None:
    store = tmp_path / "store"
    writer = LmdbStorageProvider(store, namespace="busy")
    stop = asyncio.Event()
    saved = [0] * 8

    async def saving(task: int) -> None:
        while not stop.is_set():
            await writer.save(f"{task}:{saved[task]}", saved[task], "t")
            saved[task] += 1

    tasks = [asyncio.create_task(saving(n)) for n in range(8)]
    await asyncio.sleep(0.05)
    opened = []
    for n in range(300):  # each new namespace is numbered in a write transaction of its own
        provider = LmdbStorageProvider(store, namespace=f"new-{n}")
        await provider.save("k", n, "t")
        opened.append(provider)
        await asyncio.sleep(0)
    stop.set()
    await asyncio.gather(*tasks)
    assert sum(saved) > 0
    assert [(await p.load("k")).data for p in opened] == list(range(300))
    for provider in [*opened, writer]:
        await provider.cleanup()


@pytest.mark.watchdog(120)
def test_two_threads_open_save_and_close_one_store(tmp_path: Path) -> None:
    store = tmp_path / "store"

    def churn(thread: int) -> None:
        for n in range(1000):
            engine = LmdbEngine(store, namespace=f"t{thread}", durability="none")
            engine.save(f"k{n}", n, "t")
            engine.close()

    errors = run_threads(churn, 2, 100)
    assert errors == []
    assert str(Path(store).resolve()) not in SharedEnvironment._registry
    for name in ("t0", "t1"):
        engine = LmdbEngine(store, namespace=name)
        assert len(list(engine.search(StorageQuery()))) == 1000
        engine.close()


# -- growth -----------------------------------------------------------------------


@pytest.mark.watchdog(120)
@pytest.mark.parametrize("durability", ["sync", "none"])
async def test_map_growth_under_searching_threads(tmp_path: Path, durability: str) -> None:
    provider = LmdbStorageProvider(tmp_path / "store", map_size=1 << 20, durability=durability)
    engine = provider.engine
    for n in range(300):
        engine.save(f"small{n}", n, "t", tags={"all": "yes"})
    stop = threading.Event()
    searches = [0, 0, 0]
    errors: list[BaseException] = []

    def search(n: int) -> None:
        try:
            while not stop.is_set():
                assert len(list(engine.search(StorageQuery(tags={"all": "yes"})))) == 300
                searches[n] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=search, args=(n,), daemon=True) for n in range(3)]
    for thread in threads:
        thread.start()
    blob = os.urandom(500_000)
    try:
        for n in range(20):  # 10 MB into a 1 MiB map: it grows several times under the readers
            await provider.save(f"big{n}", blob, "t")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == [] and all(searches)
    assert engine.shared.env.info()["map_size"] >= 10_000_000
    assert (await provider.load("big19")).data == blob
    assert (await provider.check()).ok
    await provider.cleanup()


def _address_space_used() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


@pytest.mark.watchdog(120)
def test_growth_without_address_space_fails_cleanly_and_recovers(tmp_path: Path) -> None:
    engine = LmdbEngine(tmp_path / "store", map_size=1 << 20, durability="none")
    engine.save("before", 1, "t")
    blob = os.urandom(2_000_000)  # needs the map to grow past 2 MiB
    old = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_address_space_used() + 512 * 1024, old[1]))
    try:
        with pytest.raises(StorageError, match="could not grow") as caught:
            engine.save("big", blob, "t")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)
    assert isinstance(caught.value.__cause__, lmdb.Error)
    assert engine.load("before").data == 1  # the environment is reopened, at the size it had
    with pytest.raises(ItemNotFoundError):
        engine.load("big")
    engine.save("big", blob, "t")  # address space is back: the map grows
    assert engine.load("big").data == blob
    again = LmdbEngine(tmp_path / "store", namespace="other", durability="none")
    again.save("k", 2, "t")
    assert engine.check().ok
    again.close()
    engine.close()


GROW = (
    "import os, sys; from unistore.providers import LmdbEngine\n"
    "e = LmdbEngine(sys.argv[1], namespace='filler', map_size=1 << 20, durability='none')\n"
    "[e.save(f'f{n}', os.urandom(100_000), 't') for n in range(100)]\n"
)


@pytest.mark.watchdog(120)
def test_adopting_a_grown_map_without_address_space_fails_cleanly_and_recovers(tmp_path: Path) -> None:
    store = tmp_path / "store"
    engine = LmdbEngine(store, map_size=1 << 20, durability="none")
    engine.save("before", 1, "t")
    subprocess.run([sys.executable, "-c", GROW, str(store)], check=True, timeout=100)  # 10 MB
    old = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_address_space_used() + 512 * 1024, old[1]))
    try:
        with pytest.raises(StorageError) as caught:
            engine.load("before")  # MDB_MAP_RESIZED: the larger map cannot be mapped here
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)
    assert isinstance(caught.value.__cause__, lmdb.Error)
    assert engine.load("before").data == 1
    assert engine.shared.env.info()["map_size"] >= 10_000_000
    engine.close()


# -- the writer thread -------------------------------------------------------------


@pytest.mark.watchdog(60)
async def test_a_writer_started_by_another_thread_meanwhile_is_used(tmp_path: Path) -> None:
    provider = LmdbStorageProvider(tmp_path / "store")
    shared = provider.engine.shared
    got: list[Any] = []
    with SharedEnvironment._registry_lock:  # the first save's thread waits here for the lock...
        asker = threading.Thread(target=lambda: got.append(shared.writer()), daemon=True)
        asker.start()
        asker.join(0.2)
        started = shared._writer = GroupCommitWriter(shared.write_batch, "started meanwhile")
        shared._writer_pid = os.getpid()
    asker.join(10)
    assert got == [started]  # ...and finds the writer another thread started meanwhile
    await provider.save("k", 1, "t")
    assert started.batches == 1
    await provider.cleanup()


@pytest.mark.watchdog(60)
async def test_a_writer_thread_that_dies_fails_its_callers_and_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = LmdbStorageProvider(tmp_path / "store")
    await provider.save("warm", 0, "t")
    writer = provider.engine.shared.writer()

    def broken(ops: list[Any]) -> list[Any]:
        raise SystemExit("the writer's loop broke")  # a BaseException: beyond any one batch

    monkeypatch.setattr(writer, "_commit", broken)
    with pytest.raises(StorageError, match="writer stopped") as caught:
        await provider.save("lost", 1, "t")
    assert isinstance(caught.value.__cause__, SystemExit)
    writer._thread.join(10)
    assert not writer.accepting and isinstance(writer.failure, SystemExit)
    loop = asyncio.get_running_loop()
    with pytest.raises(StorageError, match="writer has stopped"):
        writer.submit(lambda txn, dbs: None, loop, loop.create_future())
    await provider.save("after", 1, "t")  # a new writer takes over
    assert provider.engine.shared.writer() is not writer
    assert (await provider.load("after")).data == 1
    await provider.cleanup()


@pytest.mark.watchdog(60)
async def test_cleanup_lets_the_event_loop_run_while_the_writer_finishes(tmp_path: Path) -> None:
    provider = LmdbStorageProvider(tmp_path / "store")
    await provider.save("warm", 0, "t")
    blocker = provider.engine.shared.env.begin(write=True)  # the writer's last batch waits for it
    pending = asyncio.create_task(provider.save("last", 1, "t"))
    await asyncio.sleep(0.02)
    closing = asyncio.create_task(provider.cleanup())
    ticks = 0
    for _ in range(10):  # the loop still runs while cleanup waits for the writer
        await asyncio.sleep(0.01)
        ticks += 1
    assert not closing.done() and ticks == 10
    blocker.abort()
    await closing
    assert (await pending).data == 1
    assert (await provider.load("last")).data == 1
    await provider.cleanup()


# -- found by attacking the environment layer ----------------------------------------


@pytest.mark.watchdog(120)
@pytest.mark.parametrize("durability", ["sync", "none"])
def test_two_threads_that_both_fill_the_map(tmp_path: Path, durability: str) -> None:
    # One writer meets a full map while the other waits for LMDB's write lock: the
    # first must not wait for the second (which waits for it) before it can grow.
    engine = LmdbEngine(tmp_path / "store", map_size=64 * 1024, durability=durability)

    def work(thread: int) -> None:
        for n in range(200):
            engine.save(f"t{thread}-{n}", "x" * 2000, "t")

    errors = run_threads(work, 2, 100)
    assert errors == []
    assert len(list(engine.search(StorageQuery()))) == 400
    assert engine.check().ok
    engine.close()


@pytest.mark.watchdog(120)
def test_forked_workers_that_grow_the_map_under_each_other(tmp_path: Path) -> None:
    # Every fork makes both sides reopen the store, while the others keep growing it.
    store = str(tmp_path / "store")
    engine = LmdbEngine(store, map_size=64 * 1024, durability="none")
    engine.save("seed", 1, "t")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_grow_in_child, args=(engine, n)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(90)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    assert len(list(engine.search(StorageQuery(pattern="w*")))) == 4 * 60
    assert engine.check().ok
    engine.close()


def _grow_in_child(engine: LmdbEngine, worker: int) -> None:
    signal.alarm(60)
    try:
        for n in range(60):
            engine.save(f"w{worker}-{n}", "x" * 3000, "t")
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


@pytest.mark.watchdog(120)
async def test_cleanup_while_saves_run(tmp_path: Path) -> None:
    provider = LmdbStorageProvider(tmp_path / "store", durability="none")
    stop = False

    refusals: list[str] = []

    async def saves() -> int:
        done = 0
        while not stop:
            try:
                await provider.save("k", done, "t")
                done += 1
            except StorageError as exc:  # a save the cleanup overtook: said plainly
                refusals.append(str(exc))
            await asyncio.sleep(0)
        return done

    saving = asyncio.create_task(saves())
    for _ in range(100):
        await provider.cleanup()
        await asyncio.sleep(0)
    stop = True
    assert await saving > 0
    assert all("closed" in refusal for refusal in refusals)
    assert (await provider.load("k")).data >= 0
    await provider.cleanup()


async def test_no_writer_starts_on_a_closed_store(tmp_path: Path) -> None:
    provider = LmdbStorageProvider(tmp_path / "store")
    shared = provider.engine.shared
    await provider.cleanup()
    with pytest.raises(StorageError, match="was closed"):
        shared.writer()  # what a save that captured the store before the cleanup meets
    await provider.save("k", 1, "t")  # the provider itself reopens
    await provider.cleanup()


@pytest.mark.watchdog(60)
async def test_cleanup_during_a_search_ends_it_with_a_clear_error(tmp_path: Path) -> None:
    provider = LmdbStorageProvider(tmp_path / "store", durability="none")
    for n in range(600):
        provider.engine.save(f"k{n:03d}", n, "t")
    seen = 0

    async def read_all() -> None:
        nonlocal seen
        async for _ in provider.search(StorageQuery(pattern="k*")):
            seen += 1
            if seen == 1:
                await provider.cleanup()

    with pytest.raises(StorageError, match="closed"):
        await read_all()
    assert seen == 256  # the chunk in hand, then the clear error
    assert len([r async for r in provider.search(StorageQuery(pattern="k*"))]) == 600  # reopened
    await provider.cleanup()


# -- exact limit under concurrent writers --------------------------------------------------


@pytest.mark.watchdog(120)
def test_a_limit_is_exact_while_another_thread_moves_items_ahead(tmp_path: Path) -> None:
    """700 items due to expire, a search for 700 of them by expiry, and a thread that
    keeps re-saving them with later expiries: items met once are met again ahead of
    the search, and must neither come back twice nor crowd out an item not yet met."""
    engine = LmdbEngine(tmp_path / "store", durability="none")
    engine.save_many({f"still{n}": n for n in range(5000)}, "t")  # no expiry: the expiry index is the cheap path
    soon = datetime.now(timezone.utc) + timedelta(hours=1)
    query = StorageQuery(expires_after=soon, limit=700)
    assert engine.explain(query).path == index.EXPIRES_RANGE
    for trial in range(4):
        for n in range(700):
            engine.save(f"due{n}", n, "t", expires_at=soon + timedelta(seconds=n))
        searching = threading.Event()
        done = threading.Event()

        def move_ahead(_: int, searching: threading.Event = searching, done: threading.Event = done) -> None:
            searching.wait(10)
            later = 1000.0
            while not done.is_set():
                for n in range(0, 700, 7):
                    later += 1
                    engine.save(f"due{n}", n, "t", expires_at=soon + timedelta(seconds=later))

        writer = threading.Thread(target=run_threads, args=(move_ahead, 1, 60), daemon=True)
        writer.start()
        found = []
        for chunk in engine.search_chunks(query):
            searching.set()
            found += [result.item.metadata.key for result in chunk]
            time.sleep(0.002)  # let the writer move items past the search
        done.set()
        writer.join(60)
        assert len(found) == len(set(found)) == 700, trial
    engine.close()
