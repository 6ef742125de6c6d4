"""An in-process provider for tests and ephemeral data.

It stores the same encoded records as the persistent providers, so it runs the
codec and the query matcher for real; it just keeps them in a dict.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from ..codec import compile_query, decode_fields, is_live, live_fields, load_item, prepare_save, select
from ..errors import StorageCorruptionError
from ..model import StorageItem, StorageQuery, StorageResult, Tags, now_micros, validate_key, validate_name
from .base import StorageProvider


class MemoryStorageProvider(StorageProvider[Any]):
    """Items in a dict of encoded records; gone when the process ends.

    Args:
        namespace: a label for the keyspace (each instance is its own keyspace).

    Raises:
        ValidationError: ``namespace`` is not a non-empty str.
    """

    def __init__(self, *, namespace: str = "default") -> None:
        validate_name(namespace, "namespace")
        self.namespace = namespace
        self._records: dict[str, bytes] = {}
        self._sids = itertools.count(1)

    def __repr__(self) -> str:
        return f"MemoryStorageProvider(namespace={self.namespace!r})"

    async def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        prepared = prepare_save(key, data, content_type, expires_at, tags)
        old = self._records.get(key)
        old_fields = decode_fields(old, key) if old is not None else None
        _, record, item = prepared.build(old_fields, now_micros(), self._sids.__next__)
        self._records[key] = record
        return item

    async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        validate_key(key)
        return load_item(self._records.get(key), key, content_type, now_micros())

    async def delete(self, key: str, *, content_type: str | None = None) -> bool:
        validate_key(key)
        if live_fields(self._records.get(key), key, content_type, now_micros()) is None:
            return False
        del self._records[key]
        return True

    async def search(self, query: StorageQuery) -> AsyncIterator[StorageResult[Any]]:
        compiled = compile_query(query)
        # A snapshot: the caller may save or delete while it iterates.
        for result in select(compiled, list(self._records.items()), now_micros(), compiled.spec.limit):
            yield result

    async def purge_expired(self) -> int:
        """Drop expired records (readers never see them anyway); returns how many."""
        now = now_micros()

        def has_expired(key: str, record: bytes) -> bool:
            try:
                return not is_live(decode_fields(record, key).expires, now)
            except StorageCorruptionError:  # not known to be expired; a load names the damage
                return False

        expired = [key for key, record in self._records.items() if has_expired(key, record)]
        for key in expired:
            del self._records[key]
        return len(expired)

    async def cleanup(self) -> None:
        """Nothing to release: the records are the store, and stay."""
