"""An in-process provider for tests and ephemeral data.

It stores the same encoded records as the persistent providers, so it runs the
codec, the query matcher and the index layer's search loop for real; it just
keeps the records in a dict, and has no indexes to plan over: every search
reads every record. Its maintenance is that of a dict: a check counts the records and
names those that do not decode, a namespace is the provider itself, and there is no
backup (the records live and die with the process).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Generator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .. import index, ordering
from ..codec import (
    PreparedSave,
    decode_fields,
    is_live,
    live_fields,
    live_items,
    load_item,
    prepare_many,
    prepare_restore,
    prepare_save,
)
from ..core import RecordFields
from ..errors import StorageCorruptionError, StorageError
from ..model import (
    StorageItem,
    StorageQuery,
    StorageResult,
    Tags,
    now_micros,
    validate_key,
    validate_keys,
    validate_name,
    validate_wanted_type,
)
from .base import StorageProvider, SyncEngine
from .maintenance import CheckReport, Namespace, Usage, tally


class MemoryEngine:
    """Items in a dict of encoded records; gone when the process ends: the memory
    provider's operations, synchronous (:class:`MemoryStorageProvider` is their async face).

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
        return f"MemoryEngine(namespace={self.namespace!r})"

    def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        """As :meth:`~unistore.providers.base.StorageProvider.save`."""
        [item] = self._save_all([prepare_save(key, data, content_type, expires_at, tags)])
        return item

    def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        """As :meth:`~unistore.providers.base.StorageProvider.save_many`."""
        batch = prepare_many(items, content_type, expires_at, tags)
        return self._save_all([batch.save(index) for index in range(len(batch.keys))])

    def restore_many(self, items: Sequence[StorageItem[Any]]) -> int:
        """As :meth:`~unistore.providers.base.StorageProvider.restore_many`."""
        return len(self._save_all(prepare_restore(items)))

    def _save_all(self, prepared: list[PreparedSave]) -> list[StorageItem[Any]]:
        records = self._records
        now = now_micros()
        # Every old record decoded before anything is replaced; a damaged one is replaced as new.
        olds = [self._replaced(save.key) for save in prepared]
        items = []
        for save, old in zip(prepared, olds, strict=True):
            _, record, item = save.build(old, now, self._sids.__next__)
            records[save.key] = record
            items.append(item)
        return items

    def _replaced(self, key: str) -> RecordFields | None:
        """The fields of the record a save over ``key`` replaces; None when there is
        none, or it is damaged (a save replaces a record that does not decode)."""
        record = self._records.get(key)
        try:
            return None if record is None else decode_fields(record, key)
        except StorageCorruptionError:
            return None

    def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        """As :meth:`~unistore.providers.base.StorageProvider.load`."""
        validate_key(key)
        return load_item(self._records.get(key), key, content_type, now_micros())

    def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        """As :meth:`~unistore.providers.base.StorageProvider.load_many`."""
        checked = validate_keys(keys)
        return live_items(checked, map(self._records.get, checked), validate_wanted_type(content_type), now_micros())

    def delete(self, key: str, *, content_type: str | None = None) -> bool:
        """As :meth:`~unistore.providers.base.StorageProvider.delete`."""
        validate_key(key)
        return self._delete_all([key], content_type) == 1

    def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        """As :meth:`~unistore.providers.base.StorageProvider.delete_many`."""
        checked = validate_keys(keys)
        validate_wanted_type(content_type)
        return self._delete_all(checked, content_type)

    def _delete_all(self, keys: Iterable[str], content_type: str | None) -> int:
        now = now_micros()
        live = [key for key in keys if self._deletable(key, content_type, now)]
        for key in live:
            del self._records[key]
        return len(live)

    def _deletable(self, key: str, content_type: str | None, now: int) -> bool:
        """Whether a delete of ``key`` removes something: a live item (of ``content_type``,
        if given), or a damaged record (a delete removes a record that does not decode)."""
        try:
            return live_fields(self._records.get(key), key, content_type, now) is not None
        except StorageCorruptionError:
            return True

    def _reader(self) -> Any:
        """A chunk reader over a snapshot of the records: the caller may save or
        delete while it iterates."""
        snapshot = list(self._records.items())

        def read(position: int | None) -> index.Chunk:
            start = position or 0
            end = start + index.SEARCH_CHUNK
            return snapshot[start:end], end if end < len(snapshot) else None

        return read

    def search(self, query: StorageQuery | index.CompiledQuery) -> Generator[StorageResult[Any], None, None]:
        """As :meth:`~unistore.providers.base.StorageProvider.search`, yielding (closing it ends the search)."""
        compiled = index.compile_query(query)
        if compiled.spec.order is not None:  # every match by its header, ordered; the results decoded
            matches = index.matching_chunks(ordering.every_match(compiled), self._reader())
            for result in ordering.pick(compiled, itertools.chain.from_iterable(matches)):
                yield result
            return
        for chunk in index.search_chunks(compiled, self._reader()):
            for result in chunk:
                yield result

    def count(self, query: StorageQuery | index.CompiledQuery) -> int:
        """As :meth:`~unistore.providers.base.StorageProvider.count`."""
        compiled = ordering.unordered(query)
        return sum(len(chunk) for chunk in index.matching_chunks(compiled, self._reader()))

    def delete_matching(self, query: StorageQuery | index.CompiledQuery) -> int:
        """As :meth:`~unistore.providers.base.StorageProvider.delete_matching`."""
        compiled = index.compile_query(query)
        matched = [key for chunk in index.matching_chunks(compiled, self._reader()) for key, _ in chunk]
        for key in matched:
            del self._records[key]
        return len(matched)

    def purge_expired(self) -> int:
        """Drop expired records (readers never see them anyway); returns how many."""
        now = now_micros()
        expired = [key for key, record in self._records.items() if self._has_expired(key, record, now)]
        for key in expired:
            del self._records[key]
        return len(expired)

    @staticmethod
    def _has_expired(key: str, record: bytes, now: int) -> bool:
        try:
            return not is_live(decode_fields(record, key).expires, now)
        except StorageCorruptionError:  # not known to be expired; a load names the damage
            return False

    def check(self, repair: bool = False) -> CheckReport:
        """Count the records and name each that does not decode; with ``repair``, drop those."""
        report = CheckReport(records=len(self._records))
        for key, record in list(self._records.items()):
            try:
                decode_fields(record, key)
            except StorageCorruptionError as exc:
                report.problems.append(str(exc))
                if repair:
                    del self._records[key]
        return report

    def usage(self) -> dict[str, Usage]:
        """As :meth:`~unistore.providers.base.StorageProvider.usage`."""
        return tally(self._records.values(), now_micros())

    def namespaces(self) -> list[Namespace]:
        """This provider's own namespace: a memory store is one provider."""
        return [Namespace(self.namespace)]

    def drop_namespace(self) -> int:
        """Drop every record (the provider is its namespace); how many there were."""
        count = len(self._records)
        self._records.clear()
        return count

    def explain(self, query: StorageQuery | index.CompiledQuery) -> index.Plan:
        """Every record is read (the ``keys`` path over all keys): there is no index."""
        index.compile_query(query)  # (a bad query is refused as a search would refuse it)
        return index.Plan(index.KEYS, candidates=len(self._records))

    def backup(self, dest: str | os.PathLike[str], *, compact: bool = False) -> None:
        """Refused: a memory store lives and dies with its process.

        Raises:
            StorageError: always.
        """
        raise StorageError(
            "memory://: a memory store lives and dies with its process; it has no backup "
            "(copy it into a persistent store with unistore.migrate.copy)",
            {"provider": type(self).__name__},
        )

    def close(self) -> None:
        """Nothing to release: the records are the store, and stay."""


class MemoryStorageProvider(StorageProvider[Any]):
    """Items in a dict of encoded records; gone when the process ends.

    Args:
        namespace: a label for the keyspace (each instance is its own keyspace).

    The synchronous :class:`MemoryEngine` underneath is :attr:`engine`.

    Raises:
        ValidationError: ``namespace`` is not a non-empty str.
    """

    def __init__(self, *, namespace: str = "default") -> None:
        #: The synchronous engine: the same operations, for callers that are not async.
        self.engine = MemoryEngine(namespace=namespace)
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"MemoryStorageProvider(namespace={self.namespace!r})"

    def synchronous(self) -> SyncEngine | None:
        """The engine (:attr:`engine`), unless a subclass overrides an operation."""
        return self._engine_of(self.engine, MemoryStorageProvider)

    async def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        return self.engine.save(key, data, content_type, expires_at, tags)

    async def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        return self.engine.save_many(items, content_type, expires_at, tags)

    async def restore_many(self, items: Sequence[StorageItem[Any]]) -> int:
        return self.engine.restore_many(items)

    async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        return self.engine.load(key, content_type=content_type)

    async def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        return self.engine.load_many(keys, content_type=content_type)

    async def delete(self, key: str, *, content_type: str | None = None) -> bool:
        return self.engine.delete(key, content_type=content_type)

    async def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        return self.engine.delete_many(keys, content_type=content_type)

    async def search(self, query: StorageQuery | index.CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        for result in self.engine.search(query):
            yield result

    async def count(self, query: StorageQuery | index.CompiledQuery) -> int:
        return self.engine.count(query)

    async def delete_matching(self, query: StorageQuery | index.CompiledQuery) -> int:
        return self.engine.delete_matching(query)

    async def purge_expired(self) -> int:
        """Drop expired records (readers never see them anyway); returns how many."""
        return self.engine.purge_expired()

    async def check(self, repair: bool = False) -> CheckReport:
        """Count the records and name each that does not decode; with ``repair``, drop those."""
        return self.engine.check(repair)

    async def usage(self) -> dict[str, Usage]:
        return self.engine.usage()

    async def namespaces(self) -> list[Namespace]:
        """This provider's own namespace: a memory store is one provider."""
        return self.engine.namespaces()

    async def namespace_exists(self) -> bool:
        """True: a memory namespace lives as long as its provider."""
        return True

    async def drop_namespace(self) -> int:
        """Drop every record (the provider is its namespace); how many there were."""
        return self.engine.drop_namespace()

    async def explain(self, query: StorageQuery | index.CompiledQuery) -> index.Plan:
        """Every record is read (the ``keys`` path over all keys): there is no index."""
        return self.engine.explain(query)

    async def backup(self, dest: str | os.PathLike[str], *, compact: bool = False) -> None:
        """Refused: a memory store lives and dies with its process.

        Raises:
            StorageError: always.
        """
        self.engine.backup(dest, compact=compact)

    async def cleanup(self) -> None:
        """Nothing to release: the records are the store, and stay."""
