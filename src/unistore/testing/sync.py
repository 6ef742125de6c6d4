"""A provider seen through a :class:`~unistore.SyncStorageManager`, as a provider again:
the conformance suite and machine, run on it, check the synchronous manager's path
(inline engines, or its loop thread) against the reference model.

Each call runs the manager in a worker thread (the manager refuses a coroutine's
thread). The manager routes by content type, so every content type the suite uses is
routed to the one provider; a load or delete that names none (a provider's "any content
type") asks for the content type the item was last written with through this adapter.
``purge_expired``, which the manager has not, goes to the provider itself (the suite
asks for no other maintenance method).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any, cast

from ..index import CompiledQuery
from ..metrics import MetricsManager
from ..model import StorageItem, StoragePage, StorageQuery, StorageResult, Tags, validate_key, validate_keys
from ..providers.base import StorageProvider
from ..syncmanager import SyncStorageManager

#: The content type asked for a key this adapter never wrote (the provider says it is absent).
UNWRITTEN = "unistore-kit-unwritten"


class ThroughSyncManager(StorageProvider[Any]):
    """``provider`` behind a :class:`~unistore.SyncStorageManager` of its own (see the module)."""

    def __init__(self, provider: StorageProvider[Any]) -> None:
        self.provider = provider
        self.manager = SyncStorageManager(metrics=MetricsManager())
        self.manager.register_provider(UNWRITTEN, provider)
        self._types: dict[str, str] = {}  # key -> the content type it was last written with

    async def _run(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(call, *args, **kwargs)

    def _routed(self, content_type: Any) -> Any:
        if isinstance(content_type, str) and content_type not in self.manager._providers:
            self.manager.register_provider(content_type, self.provider)
        return content_type

    def _type_of(self, key: str, content_type: str | None) -> str:
        return self._routed(content_type) if content_type is not None else self._types.get(key, UNWRITTEN)

    def _written(self, items: Iterable[StorageItem[Any]]) -> None:
        for item in items:
            self._types[item.metadata.key] = item.metadata.content_type

    async def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        item: StorageItem[Any] = await self._run(
            self.manager.save, key, data, self._routed(content_type), expires_at, tags
        )
        self._written([item])
        return item

    async def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        saved: list[StorageItem[Any]] = await self._run(
            self.manager.save_many, items, self._routed(content_type), expires_at, tags
        )
        self._written(saved)
        return saved

    async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        validate_key(key)
        item: StorageItem[Any] = await self._run(self.manager.load, key, self._type_of(key, content_type))
        return item

    async def delete(self, key: str, *, content_type: str | None = None) -> bool:
        validate_key(key)
        deleted: bool = await self._run(self.manager.delete, key, self._type_of(key, content_type))
        return deleted

    async def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        found: dict[str, StorageItem[Any]] = {}
        for group, names in self._grouped(keys, content_type).items():
            found.update(await self._run(self.manager.load_many, names, group))
        return found

    async def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        deleted = 0
        for group, names in self._grouped(keys, content_type).items():
            deleted += await self._run(self.manager.delete_many, names, group)
        return deleted

    def _grouped(self, keys: Iterable[str], content_type: str | None) -> dict[str, list[str]]:
        checked = list(validate_keys(keys))
        if content_type is not None:
            return {self._routed(content_type): checked}
        groups: dict[str, list[str]] = {}
        for key in checked:
            groups.setdefault(self._types.get(key, UNWRITTEN), []).append(key)
        return groups

    async def search(self, query: StorageQuery | CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        if isinstance(query, CompiledQuery):  # (an outer manager's, compiled: the manager takes a StorageQuery)
            async for result in self.provider.search(query):
                yield result
            return
        for result in await self._run(lambda: list(self.manager.search(self._query(query)))):
            yield result

    async def page(self, query: StorageQuery | CompiledQuery, size: int, cursor: str | None = None) -> StoragePage[Any]:
        # (the suite pages with a StorageQuery; a manager pages through searches, not this)
        page: StoragePage[Any] = await self._run(
            self.manager.page, self._query(cast(StorageQuery, query)), size, cursor
        )
        return page

    async def count(self, query: StorageQuery | CompiledQuery) -> int:
        if isinstance(query, CompiledQuery):
            return await self.provider.count(query)
        counted: int = await self._run(self.manager.count, self._query(query))
        return counted

    async def delete_matching(self, query: StorageQuery | CompiledQuery) -> int:
        if isinstance(query, CompiledQuery):
            return await self.provider.delete_matching(query)
        deleted: int = await self._run(self.manager.delete_matching, self._query(query))
        return deleted

    def _query(self, query: StorageQuery) -> StorageQuery:
        self._routed(query.content_type)
        return query

    async def purge_expired(self) -> int:
        return await self.provider.purge_expired()

    async def cleanup(self) -> None:
        await self._run(self.manager.close)
        await self.provider.cleanup()  # (what it holds on the caller's loop: restore_many's, maintenance's)


__all__ = ["UNWRITTEN", "ThroughSyncManager"]
