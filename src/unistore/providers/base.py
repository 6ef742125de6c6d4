"""The provider interface: R065's five async methods, and five bulk ones.

``load`` and ``delete`` take one keyword beyond R065, ``content_type``: when
given, only an item stored under that content type counts (the manager uses it
so that a content type is part of an item's identity, checked atomically by
the provider rather than by a load followed by a delete).

The bulk methods (``save_many``, ``load_many``, ``delete_many``,
``delete_matching``, and ``restore_many``, a migration's write path) are each
native to their backend: one transaction, script or pipeline for the whole
batch, never a loop of single calls. ``search`` and
``delete_matching`` also take a query the index layer has compiled already
(:class:`unistore.index.CompiledQuery`), so that the manager checks a query once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Generic, TypeVar

from ..index import CompiledQuery
from ..model import StorageItem, StorageQuery, StorageResult, Tags

T = TypeVar("T")


_C = TypeVar("_C", bound="CleanupOnExit")


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
        """The live items that meet every criterion of ``query``, in no set order.

        Raises:
            ValidationError: a bad query field (when iteration starts).
        """

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
