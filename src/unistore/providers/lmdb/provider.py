"""The embedded default: an async face on :class:`~unistore.providers.lmdb.engine.LmdbEngine`.

Reads run inline in the coroutine: an LMDB read takes microseconds, far less
than a hop to a thread (~200 µs here). Writes that must reach the disk
(durability ``"sync"`` or ``"async"``) go to the environment's group-commit
thread, so concurrent saves share one transaction and one fsync; with
durability ``"none"`` a commit costs microseconds and runs inline too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from ...index import CompiledQuery
from ...model import StorageItem, StorageQuery, StorageResult, Tags
from ..base import StorageProvider
from .check import CheckReport
from .engine import LmdbEngine
from .environment import DEFAULT_MAP_SIZE, DEFAULT_MAX_READERS


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

    The synchronous :class:`LmdbEngine` underneath is :attr:`engine`.

    Raises:
        ValidationError: a bad namespace or option.
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
    ) -> None:
        #: The synchronous engine: the same operations, for callers that are not async.
        self.engine = LmdbEngine(
            path, namespace=namespace, durability=durability, map_size=map_size, max_readers=max_readers
        )

    def __repr__(self) -> str:
        engine = self.engine
        return f"LmdbStorageProvider({engine.path!r}, namespace={engine.namespace!r})"

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
        item: StorageItem[Any] = await self._write(self.engine.save_op(key, data, content_type, expires_at, tags))
        return item

    async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        return self.engine.load(key, content_type=content_type)

    async def delete(self, key: str, *, content_type: str | None = None) -> bool:
        deleted: bool = await self._write(self.engine.delete_op(key, content_type))
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
            self.engine.save_many_op(items, content_type, expires_at, tags)
        )
        return saved

    async def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        return self.engine.load_many(keys, content_type=content_type)

    async def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        deleted: int = await self._write(self.engine.delete_many_op(keys, content_type))
        return deleted

    async def delete_matching(self, query: StorageQuery | CompiledQuery) -> int:
        deleted: int = await self._write(self.engine.delete_matching_op(query))
        return deleted

    # Housekeeping runs in a worker thread: it may take long, and a hop is cheap next to it.

    async def purge_expired(self) -> int:
        """Remove expired items and their index entries; returns how many."""
        return await asyncio.to_thread(self.engine.purge_expired)

    async def check(self) -> CheckReport:
        """Verify the indexes against the records (see :meth:`LmdbEngine.check`)."""
        return await asyncio.to_thread(self.engine.check)

    async def cleanup(self) -> None:
        """Release the store (the last user closes it, after the writer's last fsync,
        in a worker thread so that the event loop runs on); it reopens on next use."""
        await asyncio.to_thread(self.engine.close)
