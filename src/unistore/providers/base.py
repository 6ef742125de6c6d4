"""The provider interface: five async methods (save, load, delete, search, cleanup), five bulk ones,
and the maintenance methods.

``load`` and ``delete`` take one keyword more, ``content_type``: when
given, only an item stored under that content type counts (the manager uses it
so that a content type is part of an item's identity, checked atomically by
the provider rather than by a load followed by a delete).

The bulk methods (``save_many``, ``load_many``, ``delete_many``,
``delete_matching``, and ``restore_many``, a migration's write path) are each
native to their backend: one transaction, script or pipeline for the whole
batch, never a loop of single calls. ``search`` and
``delete_matching`` also take a query the index layer has compiled already
(:class:`unistore.index.CompiledQuery`), so that the manager checks a query once.

The maintenance methods (``check``, ``purge_expired``, ``usage``, ``namespaces``,
``namespace_exists``, ``drop_namespace``, ``explain``, ``backup``) are part of the same contract: every
provider of this package has each of them, with these signatures and return types
(:mod:`unistore.providers.maintenance` holds the values they return), so that the
``unistore`` command and the URL openers never ask which provider they hold. A backend
without something to offer (a memory store's backup) raises :class:`StorageError`
saying so. They are not abstract, so that a provider written before they were part of
the contract still loads; each raises :class:`StorageError` until it is implemented.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Generator, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from .. import ordering
from ..errors import StorageError
from ..index import CompiledQuery, Plan
from ..model import StorageItem, StoragePage, StorageQuery, StorageResult, Tags
from .maintenance import CheckReport, Namespace, Usage

T = TypeVar("T")


_C = TypeVar("_C", bound="CleanupOnExit")


#: The operations a synchronous engine answers in its provider's place (``cleanup`` is its ``close``).
_ENGINE_OPERATIONS = (
    "save",
    "load",
    "delete",
    "save_many",
    "load_many",
    "delete_many",
    "delete_matching",
    "count",
    "search",
    "page",
    "cleanup",
)


class SyncEngine(Protocol):
    """A provider's operations, synchronous: what an embedded provider (LMDB, memory)
    runs underneath its async methods, and what :class:`~unistore.SyncStorageManager`
    calls inline (no event loop, no thread) when a provider offers one
    (:meth:`StorageProvider.synchronous`). The same arguments, results and errors as
    the provider's methods of the same names; ``search`` yields, ``close`` is the
    provider's ``cleanup``."""

    def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        """As :meth:`StorageProvider.save`."""

    def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        """As :meth:`StorageProvider.load`."""

    def delete(self, key: str, *, content_type: str | None = None) -> bool:
        """As :meth:`StorageProvider.delete`."""

    def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        """As :meth:`StorageProvider.save_many`."""

    def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        """As :meth:`StorageProvider.load_many`."""

    def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        """As :meth:`StorageProvider.delete_many`."""

    def delete_matching(self, query: StorageQuery | CompiledQuery) -> int:
        """As :meth:`StorageProvider.delete_matching`."""

    def count(self, query: StorageQuery | CompiledQuery) -> int:
        """As :meth:`StorageProvider.count`."""

    def search(self, query: StorageQuery | CompiledQuery) -> Generator[StorageResult[Any], None, None]:
        """As :meth:`StorageProvider.search`, yielding (closing the generator ends the search)."""

    def close(self) -> None:
        """As :meth:`StorageProvider.cleanup`: release what it holds; it may be used again."""


class CleanupOnExit(ABC):
    """``async with`` support for whatever has an async :meth:`cleanup`."""

    @abstractmethod
    async def cleanup(self) -> None:
        """Release resources; the object can be used again afterwards."""

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.cleanup()


class StorageProvider(CleanupOnExit, Generic[T]):
    """One keyspace of stored items. Use ``async with`` to clean up on exit."""

    @abstractmethod
    async def save(
        self, key: str, data: T, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[T]:
        """Store ``data`` under ``key``, replacing what was there (keeping its id and ``created_at``).

        Raises:
            ValidationError: a bad key, content type, tags or ``expires_at``.
            SerializationError: ``data`` cannot be stored.
        """

    @abstractmethod
    async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[T]:
        """The live item under ``key`` (of ``content_type``, if given).

        Raises:
            ItemNotFoundError: there is none.
        """

    @abstractmethod
    async def delete(self, key: str, *, content_type: str | None = None) -> bool:
        """Remove the item under ``key``; True if a live item (of ``content_type``, if given) was removed."""

    @abstractmethod
    def search(self, query: StorageQuery | CompiledQuery) -> AsyncIterator[StorageResult[T]]:
        """The live items that meet every criterion of ``query``, in the order its
        ``order_by`` names (for a compiled query with a position, those strictly after
        it: see :mod:`unistore.ordering`), in no set order without one; ``limit`` takes
        the first.

        Raises:
            ValidationError: a bad query field (when iteration starts).
        """

    async def page(self, query: StorageQuery | CompiledQuery, size: int, cursor: str | None = None) -> StoragePage[T]:
        """The ``size`` results that follow ``cursor`` (None: the first page) in the
        query's order (``"key"`` when it names none); the page's ``next`` is the cursor
        of the following page, None on the last. A page reads what an ordered search of
        ``size + 1`` results from the cursor's position reads.

        Raises:
            ValidationError: a bad query field or ``size``, or a cursor that is damaged,
                altered, or was made for another query.
        """
        request = ordering.page_request(query, size, cursor)
        results = [result async for result in self.search(request.compiled)]
        return ordering.finish_page(request, results)

    async def count(self, query: StorageQuery | CompiledQuery) -> int:
        """How many live items ``query`` matches (up to its ``limit``; its order plays no
        part). This default counts a search's results; the providers of this package
        count by record headers, without decoding a payload.

        Raises:
            ValidationError: a bad query field.
        """
        return sum([1 async for _ in self.search(ordering.unordered(query))])

    def synchronous(self) -> SyncEngine | None:
        """The provider's synchronous engine, which :class:`~unistore.SyncStorageManager`
        calls inline; None (this default) when it has none: the sync manager then runs
        the provider's coroutines on an event loop of its own, in a thread."""
        return None

    def _engine_of(self, engine: SyncEngine, base: type) -> SyncEngine | None:
        """``engine`` (the synchronous engine under ``base``'s async methods), unless this
        provider's class overrides one of them: the engine would then skip what the
        override does, so the provider is run as async code (None)."""
        kind = type(self)
        if any(getattr(kind, name) is not getattr(base, name) for name in _ENGINE_OPERATIONS):
            return None
        return engine

    @abstractmethod
    async def save_many(
        self, items: Mapping[str, T], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[T]]:
        """Store every ``key → data`` of ``items`` with the same content type, expiry and
        tags, atomically: every item is checked before anything is written, and a
        refused batch writes nothing. Returns the items in the order of ``items``.

        Raises:
            ValidationError: ``items`` is not a mapping, or a bad key, content type, tags or ``expires_at``.
            SerializationError: an item's data cannot be stored (its key is named).
        """

    async def restore_many(self, items: Sequence[StorageItem[T]]) -> int:
        """Store each item verbatim, as another store held it: its key, id,
        ``created_at``, ``updated_at``, expiry, tags and content type are kept as
        given (a migration's write path, :func:`unistore.migrate.copy`). An item
        under a key that exists replaces it, index entries included. Atomic like
        :meth:`save_many`: every item is checked before anything is written.
        Returns how many items were written. An item whose expiry has passed is
        written, and invisible at once.

        Not abstract, so that a provider written before it existed still loads;
        every provider of this package implements it natively.

        Raises:
            ValidationError: ``items`` is not a sequence of :class:`StorageItem`,
                names a key twice, or an item has a bad field (its key is named).
            SerializationError: an item's data cannot be stored (its key is named).
            NotImplementedError: the provider cannot restore items.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot restore items verbatim (no restore_many)")

    @abstractmethod
    async def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[T]]:
        """The live items under ``keys`` (of ``content_type``, if given), by key; keys
        without one are absent.

        Raises:
            ValidationError: ``keys`` is not an iterable of keys (a lone str is refused), or a bad key.
        """

    @abstractmethod
    async def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        """Remove the items under ``keys`` atomically; how many live ones (of ``content_type``, if given) there were.

        Raises:
            ValidationError: ``keys`` is not an iterable of keys, or a bad key.
        """

    @abstractmethod
    async def delete_matching(self, query: StorageQuery | CompiledQuery) -> int:
        """Remove every live item that ``query`` matches (up to its ``limit``) with
        its index entries, atomically; returns how many.

        Raises:
            ValidationError: a bad query field.
        """

    # -- maintenance ---------------------------------------------------------------------

    def _lacks(self, what: str) -> StorageError:
        return StorageError(f"{type(self).__name__} has no {what}", {"provider": type(self).__name__})

    async def check(self, repair: bool = False) -> CheckReport:
        """Verify that every index entry belongs to a record that has it and every record
        is fully indexed; with ``repair``, also drop the records that do not decode and put
        every index entry right, leaving healthy items untouched. Returns what was found.

        Raises:
            StorageConnectionError: the backend is unreachable.
        """
        raise self._lacks("check")

    async def purge_expired(self) -> int:
        """Remove the expired items and their index entries; returns how many."""
        raise self._lacks("purge_expired")

    async def usage(self) -> dict[str, Usage]:
        """The live items and their record bytes per content type, in content type order,
        read from the store itself (a fresh process sees them)."""
        raise self._lacks("usage")

    async def namespaces(self) -> list[Namespace]:
        """Every namespace of the store this provider's namespace is in (its own once it
        exists), by name, each with the settings that open it again; nothing is created."""
        raise self._lacks("namespaces")

    async def namespace_exists(self) -> bool:
        """Whether the store holds this provider's namespace; nothing is created."""
        raise self._lacks("namespace_exists")

    async def drop_namespace(self) -> int:
        """Remove this provider's namespace from its store: every record, every index entry
        and the namespace's own entries; returns how many records there were. Stop the
        namespace's writers first (a write racing the removal may outlive it). The provider
        stays usable: its next write (on LMDB, its next use) makes the namespace anew, empty.

        Raises:
            StorageConnectionError: the backend is unreachable.
        """
        raise self._lacks("drop_namespace")

    async def explain(self, query: StorageQuery | CompiledQuery) -> Plan:
        """The plan a search of ``query`` would follow now (a :class:`~unistore.index.Plan`).

        Raises:
            ValidationError: a bad query field.
        """
        raise self._lacks("explain")

    async def backup(self, dest: str | os.PathLike[str], *, compact: bool = False) -> None:
        """Write a hot, consistent copy of the whole store into the directory ``dest``
        (``compact``: as small as its data).

        Raises:
            ValidationError: ``dest`` is not a usable place for a copy.
            StorageError: the backend has no backup of its own making (say, Redis: the
                server's persistence is the operator's), or the copy could not be written.
        """
        raise self._lacks("backup")
