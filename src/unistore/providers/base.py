"""The provider interface: five async methods, as the requirement (R065) draws them.

``load`` and ``delete`` take one keyword beyond R065, ``content_type``: when
given, only an item stored under that content type counts (the manager uses it
so that a content type is part of an item's identity, checked atomically by
the provider rather than by a load followed by a delete).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from datetime import datetime
from types import TracebackType
from typing import Generic, TypeVar

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
    def search(self, query: StorageQuery) -> AsyncIterator[StorageResult[T]]:
        """The live items that meet every criterion of ``query``, in no set order.

        Raises:
            ValidationError: a bad query field (when iteration starts).
        """
