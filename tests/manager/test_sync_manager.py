"""The synchronous manager: every operation without ``await``, inline on LMDB and memory
(no thread), through one loop thread on Redis (started by the first call, stopped by
close), refused from a coroutine, safe from many threads."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from unistore import (
    ItemNotFoundError,
    MetricsManager,
    ProviderNotFoundError,
    StorageError,
    StorageProvider,
    StorageQuery,
    SyncStorageManager,
    ValidationError,
)
from unistore.providers import LmdbStorageProvider, MemoryStorageProvider, RedisStorageProvider
from unistore.syncmanager import LoopThread

KINDS = ["memory", "lmdb", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], StorageProvider[Any]]:
    """Makes providers of one kind (fresh and empty each)."""
    numbers = iter(range(100))

    def provider() -> StorageProvider[Any]:
        number = next(numbers)
        if request.param == "memory":
            return MemoryStorageProvider(namespace=f"ns{number}")
        if request.param == "lmdb":
            return LmdbStorageProvider(tmp_path / "store", namespace=f"ns{number}", durability="none")
        port = request.getfixturevalue("redis_port")
        return RedisStorageProvider(port=port, namespace=uuid.uuid4().hex)

    return provider


def threads() -> set[str]:
    """The threads running, less the pools of event loops' default executors (other tests')."""
    return {thread.name for thread in threading.enumerate() if not thread.name.startswith("asyncio_")}


def test_every_operation_without_await(make: Callable[[], StorageProvider[Any]]) -> None:
    metrics = MetricsManager()
    with SyncStorageManager(metrics=metrics) as manager:
        manager.register_provider("doc", make())
        manager.register_provider("note", make())
        saved = manager.save("a", {"n": 1}, "doc", tags={"t": "x"})
        assert saved.metadata.key == "a" and manager.load("a", "doc").data == {"n": 1}
        assert [item.metadata.key for item in manager.save_many({"b": 2, "c": 3}, "doc", tags={"t": "y"})] == ["b", "c"]
        manager.save_many({"b": "note b", "z": "note z"}, "note")
        assert {key: item.data for key, item in manager.load_many(["a", "b", "nope"], "doc").items()} == {
            "a": {"n": 1},
            "b": 2,
        }
        ordered = [
            (r.item.metadata.key, r.item.metadata.content_type) for r in manager.search(StorageQuery(order_by="key"))
        ]
        assert ordered == [("a", "doc"), ("b", "doc"), ("b", "note"), ("c", "doc"), ("z", "note")]
        assert [r.item.metadata.key for r in manager.search(StorageQuery(content_type="doc", tags={"t": "y"}))] in (
            ["b", "c"],
            ["c", "b"],
        )
        assert [r.item.metadata.key for r in manager.search(StorageQuery(order_by="-key", limit=2))] == ["z", "c"]
        first = manager.page(StorageQuery(), 2)
        second = manager.page(StorageQuery(), 2, first.next)
        third = manager.page(StorageQuery(), 2, second.next)
        walked = [r.item.metadata.key for page in (first, second, third) for r in page.results]
        assert walked == ["a", "b", "b", "c", "z"] and third.next is None
        with pytest.raises(ValidationError, match="cursor"):
            manager.page(StorageQuery(content_type="doc"), 2, first.next)
        assert manager.count(StorageQuery()) == 5 and manager.count(StorageQuery(limit=3)) == 3
        assert manager.count(StorageQuery(content_type="note")) == 2
        ranked = list(manager.retrieve(StorageQuery(content_type="note"), "note z"))
        assert [(r.item.metadata.key, r.score) for r in ranked] == [("z", 1.0), ("b", 0.5)]
        assert manager.delete("a", "note") is False and manager.delete("a", "doc") is True
        with pytest.raises(ItemNotFoundError):
            manager.load("a", "doc")
        assert manager.delete_many(["b", "c", "a"], "doc") == 2
        assert manager.delete_matching(StorageQuery()) == 2
        assert manager.count(StorageQuery()) == 0
        with pytest.raises(ProviderNotFoundError):
            manager.load("a", "nothing here")
        for bad in (["doc"], 5, ""):
            with pytest.raises(ValidationError, match="content_type"):
                manager.load("a", bad)  # type: ignore[arg-type]
    # the async manager's metrics, by the same names and labels
    assert metrics.value("storage_operations", operation="load", content_type="doc", success="true") == 1
    assert metrics.value("storage_operations", operation="load", content_type="doc", success="false") == 1
    assert metrics.value("storage_operations", operation="search", content_type="*", success="true") == 2
    assert metrics.value("storage_operations", operation="count", content_type="*", success="true") == 3
    assert metrics.value("storage_operations", operation="load", content_type="nothing here", success="false") == 1


def test_a_search_left_early_ends_the_providers_searches(make: Callable[[], StorageProvider[Any]]) -> None:
    with SyncStorageManager(metrics=MetricsManager()) as manager:
        manager.register_provider("doc", make())
        manager.save_many({f"k{n}": n for n in range(50)}, "doc")
        results = manager.search(StorageQuery(order_by="key"))
        assert next(results).item.metadata.key == "k0"
        results.close()  # (an LMDB search holds a read transaction until then)
        for _ in manager.search(StorageQuery()):
            break
        assert manager.count(StorageQuery()) == 50


def test_lmdb_and_memory_run_inline_and_redis_on_one_thread_stopped_by_close(tmp_path: Path, redis_port: int) -> None:
    before = threads()
    manager = SyncStorageManager(metrics=MetricsManager())
    manager.register_provider("m", MemoryStorageProvider())
    manager.register_provider("l", LmdbStorageProvider(tmp_path / "store", durability="none"))
    for content_type in ("m", "l"):
        manager.save("k", 1, content_type)
        assert manager.load("k", content_type).data == 1
        assert [r.item.data for r in manager.search(StorageQuery(content_type=content_type))] == [1]
    assert threads() == before  # no thread: inline
    manager.register_provider("r", RedisStorageProvider(port=redis_port, namespace=uuid.uuid4().hex))
    manager.save("k", 2, "r")
    assert manager.load("k", "r").data == 2
    started = threads() - before
    assert len(started) == 1, started
    manager.close()
    assert threads() == before
    assert manager.load("k", "r").data == 2  # used again: a loop thread again
    manager.delete_matching(StorageQuery(content_type="r"))
    manager.cleanup()  # (close's other name, the async manager's)
    assert threads() == before


def test_a_call_from_a_coroutine_is_refused_and_names_the_async_manager() -> None:
    manager = SyncStorageManager(metrics=MetricsManager())
    manager.register_provider("doc", MemoryStorageProvider())

    async def inside() -> None:
        with pytest.raises(StorageError, match=r"UnifiedStorageManager \(await manager.load"):
            manager.load("k", "doc")
        with pytest.raises(StorageError, match="UnifiedStorageManager"):
            manager.save("k", 1, "doc")
        with pytest.raises(StorageError, match="UnifiedStorageManager"):
            list(manager.search(StorageQuery()))
        with pytest.raises(StorageError, match="UnifiedStorageManager"):
            manager.close()

    asyncio.run(inside())
    assert manager.count(StorageQuery()) == 0  # nothing was written


def test_eight_threads_at_once(make: Callable[[], StorageProvider[Any]]) -> None:
    with SyncStorageManager(metrics=MetricsManager()) as manager:
        manager.register_provider("doc", make())

        def work(worker: int) -> list[int]:
            seen = []
            for n in range(40):
                manager.save(f"w{worker}:{n}", n, "doc", tags={"worker": str(worker)})
                seen.append(manager.load(f"w{worker}:{n}", "doc").data)
            found = manager.search(StorageQuery(tags={"worker": str(worker)}))
            assert sorted(r.item.data for r in found) == list(range(40))
            assert manager.delete_many([f"w{worker}:{n}" for n in range(0, 40, 2)], "doc") == 20
            return seen

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(work, range(8))) == [list(range(40))] * 8
        assert manager.count(StorageQuery()) == 8 * 20


def test_a_failing_close_tries_every_provider_and_raises_the_first(tmp_path: Path) -> None:
    class Failing(MemoryStorageProvider):
        def synchronous(self) -> Any:
            engine = super().synchronous()

            class Closing:
                def __getattr__(self, name: str) -> Any:
                    return getattr(engine, name)

                def close(self) -> None:
                    raise StorageError("close failed")

            return Closing()

    closed = LmdbStorageProvider(tmp_path / "store", durability="none")
    manager = SyncStorageManager(metrics=MetricsManager())
    manager.register_provider("bad", Failing())
    manager.register_provider("good", closed)
    manager.save("k", 1, "good")
    with pytest.raises(StorageError, match="close failed"):
        manager.close()
    assert closed.engine._now is None  # (the LMDB store was released all the same)


def test_a_provider_whose_operation_is_overridden_runs_its_override(tmp_path: Path) -> None:
    saved: list[str] = []

    class Audited(LmdbStorageProvider):
        async def save(self, key: str, *args: Any, **kwargs: Any) -> Any:
            saved.append(key)
            return await super().save(key, *args, **kwargs)

    plain = LmdbStorageProvider(tmp_path / "plain", durability="none")
    audited = Audited(tmp_path / "audited", durability="none")
    assert plain.synchronous() is plain.engine and audited.synchronous() is None
    with SyncStorageManager(metrics=MetricsManager()) as manager:
        manager.register_provider("a", audited)
        manager.save("k", 1, "a")  # (on the loop thread: the override runs)
        assert saved == ["k"] and manager.load("k", "a").data == 1


@pytest.mark.watchdog(60)
def test_a_forked_child_runs_on_a_loop_thread_of_its_own(redis_port: int) -> None:
    manager = SyncStorageManager(metrics=MetricsManager())
    manager.register_provider("r", RedisStorageProvider(port=redis_port, namespace=uuid.uuid4().hex))
    manager.save("k", "parent", "r")
    parents = manager._runner
    pid = os.fork()
    if pid == 0:  # the child: the parent's loop thread is not here
        signal.alarm(30)
        status = 1
        try:
            if manager.load("k", "r").data == "parent":
                manager.save("k", "child", "r")
                status = 0 if manager._runner is not parents else 2
            manager.close()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert manager.load("k", "r").data == "child" and manager._runner is parents
    manager.delete("k", "r")
    manager.close()


@pytest.mark.watchdog(60)
def test_close_waits_for_a_call_in_flight_on_the_loop_thread() -> None:
    started = threading.Event()

    class Slow(MemoryStorageProvider):
        async def save(self, *args: Any, **kwargs: Any) -> Any:
            started.set()
            await asyncio.sleep(0.3)
            return await super().save(*args, **kwargs)

    manager = SyncStorageManager(metrics=MetricsManager())
    manager.register_provider("s", Slow())
    with ThreadPoolExecutor(1) as pool:
        saving = pool.submit(manager.save, "k", 1, "s")
        assert started.wait(5)
        manager.close()
        assert saving.result(5).metadata.key == "k"  # (it used to wait forever on a stopped loop)
    assert manager.load("k", "s").data == 1
    manager.close()


def test_a_loop_thread_refuses_a_call_begun_as_it_stops() -> None:
    runner = LoopThread("unistore-test")
    assert runner.run(lambda: asyncio.sleep(0, "ran")) == "ran"
    runner.stop()
    assert not runner.thread.is_alive()
    with pytest.raises(StorageError, match="closed as this call began"):
        runner.run(lambda: asyncio.sleep(0))
