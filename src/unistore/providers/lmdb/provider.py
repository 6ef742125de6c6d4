"""The embedded default: an async face on :class:`~unistore.providers.lmdb.engine.LmdbEngine`.

Reads run inline in the coroutine: an LMDB read takes microseconds, far less
than a hop to a thread (~200 µs here). Writes that must reach the disk
(durability ``"sync"`` or ``"async"``) go to the environment's group-commit
thread, so concurrent saves share one transaction and one fsync; with
durability ``"none"`` a commit costs microseconds and runs inline too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from ...errors import StoreNotFoundError
from ...index import CompiledQuery, Plan
from ...model import StorageItem, StorageQuery, StorageResult, Tags, validate_name
from ..base import StorageProvider, SyncEngine
from ..maintenance import CheckReport, Namespace, Usage
from . import layout
from .backup import backup
from .engine import LmdbEngine
from .environment import DEFAULT_MAP_SIZE, DEFAULT_MAX_READERS, SharedEnvironment, StoreOptions
from .upgrade import upgrade as upgrade_store


class LmdbStorageProvider(StorageProvider[Any]):
    """Items in an LMDB store on local disk.

    Args:
        path: the store directory; created (mode 0700, files 0600) if missing.
        namespace: the keyspace inside the store (as many per store as you make).
        durability: ``"sync"`` (the default: fsync per commit), ``"async"`` (may
            lose the last commits on power loss) or ``"none"`` (flushing left to the OS).
        map_size: the initial map size in bytes (address space, not disk); it grows by itself.
        max_readers: read transactions that may run at once across every process
            on the store (fixed by the first process to open it).
        create: False to open only a store and namespace that exist (what
            maintenance and the ``unistore`` command's reads do): nothing is
            created, not even the directory.

    The synchronous :class:`LmdbEngine` underneath is :attr:`engine`.

    Raises:
        ValidationError: a bad namespace or option.
        StoreNotFoundError: not ``create``, and the store or the namespace does not exist.
        StorageError: the store cannot be opened, or is of another format version.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        namespace: str = "default",
        durability: str = "sync",
        map_size: int = DEFAULT_MAP_SIZE,
        max_readers: int = DEFAULT_MAX_READERS,
        create: bool = True,
    ) -> None:
        engine = functools.partial(
            LmdbEngine, path, namespace=namespace, durability=durability, map_size=map_size, max_readers=max_readers
        )
        if create:
            #: The synchronous engine: the same operations, for callers that are not async.
            self.engine = engine()
            return
        name = validate_name(namespace, "namespace")
        with existing_store(path, durability=durability, map_size=map_size, max_readers=max_readers) as shared:
            if shared.read(lambda txn, dbs: layout.find_namespace(txn, dbs.meta, name)) is None:
                raise StoreNotFoundError(
                    f"the store {shared.path!r} has no namespace {namespace!r}",
                    {"path": shared.path, "namespace": namespace},
                )
            self.engine = engine()  # while the store is held open: it finds the namespace there

    def __repr__(self) -> str:
        engine = self.engine
        return f"LmdbStorageProvider({engine.path!r}, namespace={engine.namespace!r})"

    def synchronous(self) -> SyncEngine | None:
        """The engine (:attr:`engine`), unless a subclass overrides an operation."""
        return self._engine_of(self.engine, LmdbStorageProvider)

    def _write(self, op: Callable[..., Any]) -> asyncio.Future[Any]:
        """A future of ``op``'s outcome: the group-commit writer's, or at once when
        there is nothing to sync (a plain function, not a coroutine: one frame less
        on every save)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        engine = self.engine
        if engine.durability != "none":
            engine.shared.writer().submit(op, loop, future)
            return future
        try:
            future.set_result(engine.write(op))
        except Exception as exc:
            future.set_exception(exc)
        return future

    async def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        item: StorageItem[Any] = await self._write(self.engine.writes.save(key, data, content_type, expires_at, tags))
        return item

    async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        return self.engine.load(key, content_type=content_type)

    async def delete(self, key: str, *, content_type: str | None = None) -> bool:
        deleted: bool = await self._write(self.engine.writes.delete(key, content_type))
        return deleted

    async def search(self, query: StorageQuery | CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        for chunk in self.engine.search_chunks(query):
            for result in chunk:
                yield result
            await asyncio.sleep(0)  # a long search lets other tasks run between chunks

    async def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        saved: list[StorageItem[Any]] = await self._write(
            self.engine.writes.save_many(items, content_type, expires_at, tags)
        )
        return saved

    async def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        return self.engine.load_many(keys, content_type=content_type)

    async def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        deleted: int = await self._write(self.engine.writes.delete_many(keys, content_type))
        return deleted

    async def count(self, query: StorageQuery | CompiledQuery) -> int:
        return self.engine.count(query)

    async def delete_matching(self, query: StorageQuery | CompiledQuery) -> int:
        deleted: int = await self._write(self.engine.writes.delete_matching(query))
        return deleted

    # Housekeeping runs in a worker thread: it may take long, and a hop is cheap next to it.

    async def purge_expired(self) -> int:
        """Remove expired items and their index entries; returns how many."""
        return await asyncio.to_thread(self.engine.purge_expired)

    async def restore_many(self, items: Sequence[StorageItem[Any]]) -> int:
        restored: int = await self._write(self.engine.writes.restore_many(items))
        return restored

    async def check(self, repair: bool = False) -> CheckReport:
        """Verify the indexes against the records, and with ``repair`` fix them (see
        :meth:`LmdbEngine.check`); returns what was found."""
        return await asyncio.to_thread(self.engine.check, repair)

    async def usage(self) -> dict[str, Usage]:
        """This namespace's live items and record bytes per content type (see
        :mod:`unistore.maintenance`)."""
        return await asyncio.to_thread(self.engine.usage)

    async def namespaces(self) -> list[Namespace]:
        """Every namespace of this provider's store (its own once it exists), in the order
        they were made."""
        return store_namespaces(self.engine.path, durability=self.engine.durability)

    async def namespace_exists(self) -> bool:
        """Whether the store holds this provider's namespace (one opened to write makes it at once)."""
        return self.engine.namespace in [found.name for found in await self.namespaces()]

    async def drop_namespace(self) -> int:
        """Remove this namespace from the store (see :meth:`LmdbEngine.drop_namespace`)."""
        return await asyncio.to_thread(self.engine.drop_namespace)

    async def explain(self, query: StorageQuery | CompiledQuery) -> Plan:
        """The plan a search of ``query`` would follow now (see :meth:`LmdbEngine.explain`)."""
        return self.engine.explain(query)

    async def backup(self, dest: str | os.PathLike[str], *, compact: bool = False) -> None:
        """Write a hot, consistent copy of this provider's whole store (every
        namespace) into the directory ``dest``, created (mode 0700) if missing; its
        ``data.mdb`` is made private (0600). ``compact``: leave out free pages, so
        the copy holds only live data (the store's own file never shrinks).

        Raises:
            ValidationError: ``dest`` already holds a store, or is not a usable path.
            StorageError: the copy could not be written.
        """
        await asyncio.to_thread(backup, self.engine.shared, dest, compact)

    async def cleanup(self) -> None:
        """Release the store (the last user closes it, after the writer's last fsync,
        in a worker thread so that the event loop runs on); it reopens on next use."""
        await asyncio.to_thread(self.engine.close)


@contextlib.contextmanager
def existing_store(
    path: str | os.PathLike[str],
    *,
    durability: str = "sync",
    map_size: int = DEFAULT_MAP_SIZE,
    max_readers: int = DEFAULT_MAX_READERS,
    upgrade: bool = False,
) -> Iterator[SharedEnvironment]:
    """``with existing_store(path) as shared:`` the open environment of the store at
    ``path``, which must exist (nothing is created), released on leaving. A store of
    the previous format is refused, or with ``upgrade`` upgraded in place (see
    :mod:`.upgrade`).

    Raises:
        ValidationError: ``path`` or an option is not usable.
        StoreNotFoundError: there is no unistore store at ``path``.
        StorageError: the store is of the previous format (and not ``upgrade``), or of none this reads.
    """
    options = StoreOptions.checked(path, durability, map_size, max_readers)  # (a bad option opens nothing)
    opener = functools.partial(layout.open_databases, create=False, upgrade=upgrade_store if upgrade else None)
    shared = SharedEnvironment.acquire(options, opener, create=False)
    try:
        yield shared
    finally:
        shared.release()


def store_namespaces(path: str | os.PathLike[str], **options: Any) -> list[Namespace]:
    """Every namespace of the store at ``path``, in the order they were made
    (``options``: as :func:`existing_store` takes them).

    Raises:
        ValidationError: ``path`` or an option is not usable.
        StoreNotFoundError: there is no unistore store at ``path``.
    """
    with existing_store(path, **options) as shared:
        return [Namespace(name) for name, _ in shared.read(lambda txn, dbs: layout.namespaces(txn, dbs.meta))]


__all__ = ["LmdbStorageProvider", "existing_store", "store_namespaces"]
