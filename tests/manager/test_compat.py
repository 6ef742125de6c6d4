"""unistore.compat.ContentStorage: the framework's legacy synchronous content storage,
its call sites unchanged, on every provider."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from helpers import Factory
from unistore import (
    ItemNotFoundError,
    SerializationError,
    StorageError,
    StorageProvider,
    UnifiedStorageManager,
    ValidationError,
)
from unistore.compat import ContentStorage
from unistore.compat.content import DEFAULT_CONTENT_TYPE, content_id_of
from unistore.compat.memory import MemoryEntry, MemoryQuery, UnifiedMemoryStore
from unistore.metrics import MetricsManager
from unistore.providers import LmdbStorageProvider, MemoryStorageProvider, RedisStorageProvider


@dataclasses.dataclass
class Content:
    """The framework's content model, as far as a call site sees it."""

    title: str
    body: str
    published: datetime
    id: UUID = dataclasses.field(default_factory=uuid4)


def publish(storage: Any, title: str, body: str) -> UUID:
    content = Content(title, body, datetime(2024, 2, 22, 12, 0, tzinfo=timezone.utc))
    return storage.save(content)  # type: ignore[no-any-return]


def headline(storage: Any, content_id: UUID) -> str:
    return storage.load(content_id).title  # type: ignore[no-any-return]


def retract(storage: Any, content_id: UUID) -> bool:
    """Delete, then make sure it is gone the way legacy code checks: a KeyError on load."""
    storage.delete(content_id)
    try:
        storage.load(content_id)
    except KeyError:
        return True
    return False


def legacy_storage(provider: StorageProvider[Any] | str) -> ContentStorage[Content]:
    """The one line that changes in the framework: which ContentStorage it builds."""
    return ContentStorage(provider, encode=dataclasses.asdict, decode=lambda data: Content(**data))


def run_call_site(storage: ContentStorage[Content]) -> None:
    first = publish(storage, "R065", "one storage interface")
    second = publish(storage, "R024", "observability")
    assert headline(storage, first) == "R065" and headline(storage, second) == "R024"
    loaded = storage.load(first)
    assert loaded.published == datetime(2024, 2, 22, 12, 0, tzinfo=timezone.utc) and loaded.id == first
    assert retract(storage, first)
    assert headline(storage, second) == "R024"


def test_legacy_call_sites_work_on_every_provider(provider_factory: Factory) -> None:
    provider = provider_factory()
    with legacy_storage(provider) as storage:
        run_call_site(storage)


def test_legacy_call_sites_work_on_lmdb_across_instances(tmp_path: Path) -> None:
    with legacy_storage(f"lmdb://{tmp_path}/store?namespace=content") as storage:
        run_call_site(storage)
        kept = publish(storage, "kept", "on disk")
    with legacy_storage(LmdbStorageProvider(tmp_path / "store", namespace="content")) as again:
        assert headline(again, kept) == "kept"


def test_legacy_call_sites_work_on_redis(redis_port: int) -> None:
    namespace = uuid4().hex
    with legacy_storage(f"redis://127.0.0.1:{redis_port}/0?namespace={namespace}") as storage:
        run_call_site(storage)
        kept = publish(storage, "kept", "shared")
    provider = RedisStorageProvider({"host": "127.0.0.1", "port": redis_port, "namespace": namespace})
    with legacy_storage(provider) as again:
        assert headline(again, kept) == "kept"
        item = asyncio.run(_load_and_close(provider, str(kept)))  # the provider stays usable elsewhere
        assert item.metadata.content_type == DEFAULT_CONTENT_TYPE and item.data["title"] == "kept"


async def _load_and_close(provider: StorageProvider[Any], key: str) -> Any:
    try:
        return await provider.load(key)
    finally:
        await provider.cleanup()


def test_unknown_ids_raise_item_not_found_which_is_a_key_error() -> None:
    with ContentStorage(MemoryStorageProvider()) as storage:
        missing = uuid4()
        for call in (storage.load, storage.delete):
            with pytest.raises(ItemNotFoundError, match=f"no content with id {missing}") as raised:
                call(missing)
            assert isinstance(raised.value, KeyError) and raised.value.details["content_id"] == missing


def test_an_item_of_another_content_type_is_not_content() -> None:
    provider = MemoryStorageProvider()
    content_id = uuid4()
    asyncio.run(provider.save(str(content_id), {"not": "content"}, "session"))
    with ContentStorage(provider) as storage:
        with pytest.raises(ItemNotFoundError):
            storage.load(content_id)
        with pytest.raises(ItemNotFoundError):
            storage.delete(content_id)
    assert asyncio.run(provider.load(str(content_id))).data == {"not": "content"}


def test_without_codecs_storable_content_is_stored_as_it_is() -> None:
    with ContentStorage(MemoryStorageProvider(), content_type="note") as storage:
        first, second = storage.save({"text": "a", "tags": ("x", "y")}), storage.save({"text": "a"})
        assert first != second  # a dict has no id of its own: each save is a new content
        assert storage.load(first) == {"text": "a", "tags": ["x", "y"]}
        with pytest.raises(SerializationError):
            storage.save(Content("t", "b", datetime.now(timezone.utc)))  # not storable without encode


def test_a_content_with_its_own_id_is_saved_under_it_and_replaced() -> None:
    content = Content("v1", "b", datetime.now(timezone.utc))
    assert content_id_of(content) == content.id
    with legacy_storage(MemoryStorageProvider()) as storage:
        assert storage.save(content) == content.id
        content.title = "v2"
        assert storage.save(content) == content.id
        assert headline(storage, content.id) == "v2"


def test_bad_ids_and_arguments_are_refused() -> None:
    with ContentStorage(MemoryStorageProvider(), content_id=lambda content: str(uuid4())) as storage:  # type: ignore[arg-type,return-value]
        with pytest.raises(ValidationError, match="content_id must be a UUID, got str"):
            storage.save({"a": 1})
        with pytest.raises(ValidationError, match="content_id must be a UUID, got str"):
            storage.load(str(uuid4()))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="provider must be a StorageProvider or a URL, got dict"):
        ContentStorage({"host": "localhost"})  # type: ignore[call-overload]
    with pytest.raises(ValidationError, match="content_type must not be empty"):
        ContentStorage(MemoryStorageProvider(), content_type="")
    assert "content_type='content'" in repr(ContentStorage("memory://"))


@pytest.mark.watchdog(60)
def test_calls_from_many_threads_at_once(tmp_path: Path) -> None:
    with legacy_storage(LmdbStorageProvider(tmp_path / "store")) as storage:
        found: dict[int, list[str]] = {}

        def worker(number: int) -> None:
            ids = [publish(storage, f"{number}:{n}", "b") for n in range(20)]
            found[number] = [headline(storage, content_id) for content_id in ids]

        threads = [threading.Thread(target=worker, args=(number,)) for number in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert found == {number: [f"{number}:{n}" for n in range(20)] for number in range(8)}


@pytest.mark.watchdog(60)
async def test_a_call_from_inside_a_running_event_loop_works(redis_port: int) -> None:
    """The caller's loop waits (as on any blocking call); the provider runs on the adapter's."""
    provider = RedisStorageProvider({"host": "127.0.0.1", "port": redis_port, "namespace": uuid4().hex})
    with legacy_storage(provider) as storage:
        content_id = publish(storage, "from async code", "b")
        assert headline(storage, content_id) == "from async code"
        assert (await provider.load(str(content_id))).data["title"] == "from async code"
        with pytest.raises(ItemNotFoundError):  # (an error of the call's own thread, raised in this one)
            storage.load(uuid4())
    await provider.cleanup()


class Reentrant(MemoryStorageProvider):
    """A provider that runs ``hook`` (code of its own) before each save, on the adapter's loop."""

    hook: Callable[[], object] = staticmethod(lambda: None)

    async def save(self, *args: Any, **kwargs: Any) -> Any:
        self.hook()
        return await super().save(*args, **kwargs)


def test_a_call_from_the_adapters_own_loop_is_refused() -> None:
    provider = Reentrant()
    with ContentStorage(provider) as storage:
        kept = storage.save({"n": 1})
        provider.hook = lambda: storage.load(kept)  # would wait for the loop it runs on
        with pytest.raises(StorageError, match="called from its own event loop"):
            storage.save({"n": 2})
        provider.hook = storage.close
        with pytest.raises(StorageError, match="close was called from its own event loop"):
            storage.save({"n": 3})
        assert storage.load(kept) == {"n": 1}  # still open: the refused close changed nothing


def test_closing_releases_the_thread_and_refuses_later_calls() -> None:
    storage = ContentStorage(MemoryStorageProvider())
    storage.close()  # never started: nothing to release
    with pytest.raises(StorageError, match="this ContentStorage is closed"):
        storage.save({"a": 1})
    inline = ContentStorage(MemoryStorageProvider())
    before = threading.active_count()
    inline.load(inline.save({"a": 1}))
    assert inline.manager._runner is None and threading.active_count() == before  # no thread hop
    inline.close()
    used = ContentStorage(Reentrant())  # (its save overridden: run on the manager's loop thread)
    used.save({"a": 1})
    runner = used.manager._runner
    assert runner is not None and runner.thread.is_alive()
    used.close()
    used.close()  # twice: nothing more
    assert not runner.thread.is_alive() and runner.loop.is_closed()
    with pytest.raises(StorageError, match="closed"):
        used.load(uuid4())


@pytest.mark.watchdog(60)
def test_a_forked_child_gets_a_loop_of_its_own(tmp_path: Path) -> None:
    storage = legacy_storage(LmdbStorageProvider(tmp_path / "store"))
    parents = publish(storage, "parent", "b")
    pid = os.fork()
    if pid == 0:  # the child: the parent's loop thread is not here
        signal.alarm(30)
        status = 1
        try:
            if headline(storage, parents) == "parent":
                status = 0 if storage.save(Content("child", "b", datetime.now(timezone.utc), id=UUID(int=7))) else 1
            storage.close()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert headline(storage, UUID(int=7)) == "child"
    storage.close()


class SlowProvider(MemoryStorageProvider):
    """A real memory provider whose saves take a while (a slow backend)."""

    def __init__(self, started: threading.Event) -> None:
        super().__init__()
        self.started = started

    async def save(self, *args: Any, **kwargs: Any) -> Any:
        self.started.set()
        await asyncio.sleep(0.3)
        return await super().save(*args, **kwargs)


@pytest.mark.watchdog(30)
def test_close_waits_for_the_calls_in_flight() -> None:
    """close() used to stop the loop under a call in flight: its caller waited forever."""
    started = threading.Event()
    provider = SlowProvider(started)
    storage: ContentStorage[Any] = ContentStorage(provider)
    outcome: list[object] = []

    def save() -> None:
        try:
            outcome.append(storage.save("slow"))
        except BaseException as exc:  # pragma: no cover - reported by the assertion below
            outcome.append(exc)

    caller = threading.Thread(target=save, daemon=True)
    caller.start()
    assert started.wait(5)
    storage.close()
    caller.join(5)
    assert not caller.is_alive(), "the caller of save() never returned"
    [content_id] = outcome
    assert isinstance(content_id, uuid.UUID)
    assert asyncio.run(provider.load(str(content_id))).data == "slow"  # the call completed
    with pytest.raises(StorageError, match="closed"):
        storage.load(content_id)


@pytest.mark.watchdog(60)
def test_close_races_with_callers_from_many_threads(tmp_path: Path) -> None:
    """Callers racing close() each get a result or 'closed', never a hang or a raw error."""
    for round_ in range(5):
        storage: ContentStorage[Any] = ContentStorage(LmdbStorageProvider(tmp_path / str(round_), durability="none"))
        storage.save("warm")
        results: list[object] = []

        def hammer(storage: ContentStorage[Any] = storage, results: list[object] = results) -> None:
            for _ in range(50):
                try:
                    results.append(storage.save("x"))
                except StorageError as exc:
                    results.append(exc)
                    return

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.01)
        storage.close()
        for thread in threads:
            thread.join(10)
        assert not any(thread.is_alive() for thread in threads)
        assert all(isinstance(result, (uuid.UUID, StorageError)) for result in results), results
        errors = [result for result in results if isinstance(result, StorageError)]
        assert all("closed" in str(error) for error in errors)


@pytest.mark.parametrize("field", ["type", "scope"])
async def test_a_memory_entry_of_an_unknown_type_or_scope_is_refused(field: str) -> None:
    """It was stored, and then every load and retrieve of the store raised a raw ValueError."""
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("memory", MemoryStorageProvider())
    store: UnifiedMemoryStore[Any] = UnifiedMemoryStore(manager)
    await store.store(MemoryEntry("good", "hello"))
    with pytest.raises(ValidationError, match=f"{field}.*bogus"):
        await store.store(MemoryEntry("bad", "hello", **{field: "bogus"}))
    await store.store(MemoryEntry("plain", "hello", type="long_term", scope="agent"))  # the values as str are fine
    assert [result.entry.key async for result in store.retrieve(MemoryQuery("hello"))] == ["good", "plain"]
    assert (await store.load("plain")).type.value == "long_term"
