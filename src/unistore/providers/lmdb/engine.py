"""The LMDB engine: one namespace of a store, a synchronous API, persistent secondary indexes.

:class:`LmdbEngine` is usable on its own by callers that are not async;
:class:`~unistore.providers.lmdb.LmdbStorageProvider` is its async face. The
on-disk layout is :mod:`.layout`'s; the environment, its sharing, growth and
fork safety are :mod:`.environment`'s. Every write holds the record and all
its index entries in one transaction. Searches are planned and run by the
index layer (:mod:`unistore.index`); this engine gives it the sizes of its
candidate sources and reads their candidates in chunks of short read
transactions.

One module, longer than most, because it is one idea read top to bottom: a
namespace's operations (writes, bulk writes, reads, searches, maintenance), each
beside the transaction-scoped helper it runs, all over one prefix. What is not
about a namespace's operations lives beside it: the layout, the environment and
its gate, the writer, the check, backups.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import lmdb

from ... import index, ordering
from ..._coretypes import FLAG_EXPIRES, HEADER_SIZE, RECORD_FORMAT_VERSION, read_header
from ...codec import (
    PreparedBatch,
    PreparedSave,
    decode_fields,
    live_fields,
    live_items,
    load_item,
    prepare_many,
    prepare_restore,
    prepare_save,
)
from ...core import RecordFields, ids_from_entries, intersect_ids, pack_new, unpack_record
from ...errors import ItemNotFoundError, StorageCorruptionError
from ...model import (
    QuerySpec,
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
from ..maintenance import CheckReport, Usage
from . import layout, walk
from .check import check_namespace
from .check import usage as namespace_usage
from .environment import DEFAULT_MAP_SIZE, DEFAULT_MAX_READERS, SharedEnvironment, StoreOptions
from .layout import SHORT_KEY, Databases, stored_key
from .upgrade import upgrade

R = TypeVar("R")

#: Expired items one write transaction of purge_expired removes.
PURGE_BATCH = 1000
#: Expired items a write transaction removes in passing.
PURGE_IN_PASSING = 8
#: What a candidate costs this engine on each access path, in µs, native core:
#: measured over the 100,000 items of benches/test_planner.py (docs/benchmarks.md, "Searches and the planner").
COSTS = index.Costs(scan=0.46, fetch=1.36, posting=0.01, time_entry=0.3)
#: What an ordered walk pays per entry, by the order it walks (µs, as COSTS): a record
#: in key order, or a time index's entry and the record it names.
_WALKS = {"key": COSTS.scan, "created_at": COSTS.time_entry + COSTS.fetch, "updated_at": COSTS.time_entry + COSTS.fetch}
#: What ordering one candidate by its header costs on top of reading it (µs).
SORT_COST = 0.5
#: What an id of a posting list costs a sifted walk (read and kept in a set, µs).
SIFT_ID_COST = 0.1
#: A count from posting lists reads at most this many expired entries not yet purged
#: (each checked against the lists); past it, the count reads the records' headers.
EXPIRED_COUNTED = 1000
#: A namespace with more content types than this is sized by its store's records.
NAMESPACE_TYPES_COUNTED = 64

_get: Callable[[Any, bytes], Any] = lmdb.Transaction.get  # a C method: as a read action it costs no frame
_logger = logging.getLogger(__name__)


class LmdbEngine:
    """One namespace of an LMDB store, with a synchronous API.

    Args:
        path: the store directory; created (mode 0700, files 0600) if missing.
        namespace: the keyspace inside the store (any non-empty str; a store
            holds as many as it is given).
        durability: ``"sync"`` (default; fsync per commit), ``"async"`` (may lose
            the last commits on power loss, never consistency) or ``"none"``
            (flushing left to the OS).
        map_size: the initial map size in bytes; it grows by itself.
        max_readers: how many read transactions may run at once across every
            process using the store (fixed by the first process to open it).

    Raises:
        ValidationError: a bad option, or a durability that differs from the
            one this process already opened the store with.
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
        self._namespace_bytes = validate_name(namespace, "namespace")
        self._options = options = StoreOptions.checked(path, durability, map_size, max_readers)
        self.path = options.path
        self.namespace = namespace
        self.durability = options.durability
        self._now: _Opened | None = None
        #: The namespace's prefix, for the helpers that run inside a transaction (which runs
        #: on an open environment); the entry points take it from what :meth:`_opened` returns.
        self._prefix = b""
        #: Records a search has checked, all searches together: what the planner saves shows here.
        self.candidates_examined = 0
        #: The same writes as operations, for a writer that commits them in groups.
        self.writes = EngineWrites(self)
        self._open()

    def __repr__(self) -> str:
        return f"LmdbEngine({self.path!r}, namespace={self.namespace!r}, durability={self.durability!r})"

    def _open(self) -> _Opened:
        shared = SharedEnvironment.acquire(self._options, functools.partial(layout.open_databases, upgrade=upgrade))
        try:
            name = self._namespace_bytes
            prefix = shared.read(lambda txn, dbs: layout.find_namespace(txn, dbs.meta, name))
            if prefix is None:
                prefix = shared.write_one(lambda txn, dbs: layout.claim_namespace(txn, dbs.meta, name))
        except BaseException:
            shared.release()
            raise
        self._prefix = prefix
        self._now = opened = _Opened(shared, prefix)
        return opened

    def _opened(self) -> _Opened:
        """The open environment and the namespace's prefix in it (reopened if :meth:`close` was called)."""
        return self._now if self._now is not None else self._open()

    @property
    def shared(self) -> SharedEnvironment:
        """The open environment (reopened if :meth:`close` was called)."""
        return self._opened().shared

    def close(self) -> None:
        """Release the environment; the engine reopens it on next use."""
        opened, self._now = self._now, None
        if opened is not None:
            opened.shared.release()

    def record_key(self, key_bytes: bytes) -> bytes:
        """The ``records`` database key of an item key (its namespace prefix, its stored form)."""
        return _record_key(self._opened().prefix, key_bytes)

    def _record_key(self, key_bytes: bytes) -> bytes:
        """:meth:`record_key` inside a transaction (the environment is open)."""
        return _record_key(self._prefix, key_bytes)

    # -- writes --------------------------------------------------------------

    def _index(self, txn: Any, dbs: Databases, fields: Any, old: Any = None) -> None:
        """Write every index entry of ``fields``, and remove those of ``old`` (the record it
        replaces; None: none) that it does not have. Every entry is written, those it had
        too included: a save puts right what damage took from its own entries."""
        entries = layout.index_entries(self._prefix, fields)
        if old is not None:
            kept = set(entries)
            for entry in layout.index_entries(self._prefix, old):
                if entry not in kept:
                    db, key, value = entry
                    txn.delete(key, value, db=dbs[db])
        put = txn.put
        for db, key, value in entries:
            put(key, value, db=dbs[db])

    def _unindex(self, txn: Any, dbs: Databases, fields: Any) -> None:
        for db, key, value in layout.index_entries(self._prefix, fields):
            txn.delete(key, value, db=dbs[db])

    def _remove(self, txn: Any, dbs: Databases, fields: Any) -> None:
        txn.delete(self._record_key(fields.key), db=dbs.records)
        self._unindex(txn, dbs, fields)

    def _purge(self, txn: Any, dbs: Databases, now: int, most: int) -> int:
        """Remove up to ``most`` expired items (expiry order); returns how many."""
        removed = 0
        prefix = self._prefix
        cursor = txn.cursor(db=dbs.expires)
        while removed < most and cursor.set_range(prefix):
            entry = cursor.key()
            if not entry.startswith(prefix):
                break
            expires, sid = layout.time_of(entry)
            if expires > now:
                break
            stored = txn.get(layout.id_key(prefix, sid), db=dbs.ids)
            raw = None if stored is None else txn.get(prefix + stored, db=dbs.records)
            try:
                fields = None if raw is None else decode_fields(raw, stored)
            except StorageCorruptionError:
                fields = None  # a damaged record stays for `check` to report; it must not block writes
            if fields is None:  # an entry whose item is gone or unreadable: drop the entry
                cursor.delete()
                continue
            self._remove(txn, dbs, fields)
            removed += 1
        return removed

    def _save_in(self, txn: Any, dbs: Databases, prepared: PreparedSave) -> StorageItem[Any]:
        """Save inside a write transaction: record and every index entry together."""
        now = now_micros()
        self._purge(txn, dbs, now, PURGE_IN_PASSING)
        record_key = self._record_key(prepared.key_bytes)
        raw = txn.get(record_key, db=dbs.records)
        old = None if raw is None else self._replaced(txn, dbs, record_key, raw, prepared.key)
        fields, record, item = prepared.build(old, now, functools.partial(layout.next_id, txn, dbs.ids, self._prefix))
        txn.put(record_key, record, db=dbs.records)
        self._index(txn, dbs, fields, old)
        return item

    def _delete_in(self, txn: Any, dbs: Databases, key: str, key_bytes: bytes, content_type: str | None) -> bool:
        """Delete inside a write transaction; True if a live item (of ``content_type``) was removed."""
        now = now_micros()
        self._purge(txn, dbs, now, PURGE_IN_PASSING)
        return self._delete_key(txn, dbs, key, key_bytes, content_type, now)

    def _delete_key(
        self, txn: Any, dbs: Databases, key: str, key_bytes: bytes, content_type: str | None, now: int
    ) -> bool:
        """Remove the live item under ``key`` (of ``content_type``, if given); True if there
        was one. A damaged record under it is removed too (and counts as one)."""
        record_key = self._record_key(key_bytes)
        raw = txn.get(record_key, db=dbs.records)
        try:
            fields = live_fields(raw, key, content_type, now)
        except StorageCorruptionError as exc:
            self._drop_damaged(txn, dbs, record_key, raw, exc)
            return True
        if fields is None or fields.key != key_bytes:
            return False
        self._remove(txn, dbs, fields)
        return True

    def _replaced(self, txn: Any, dbs: Databases, record_key: bytes, raw: bytes, key: str) -> RecordFields | None:
        """The fields of the record a save replaces; None (the save makes a new item)
        when it is damaged, which is then dropped with what can be found of its index
        entries (:meth:`_drop_damaged`)."""
        try:
            return decode_fields(raw, key)
        except StorageCorruptionError as exc:
            self._drop_damaged(txn, dbs, record_key, raw, exc)
            return None

    def _drop_damaged(
        self, txn: Any, dbs: Databases, record_key: bytes, raw: bytes, exc: StorageCorruptionError
    ) -> None:
        """Delete a record that does not decode, and every index entry of it that can be
        told apart from the rest: those of the item id its ``ids`` entry names (the one
        its header gives, if the ``ids`` entry confirms it, else found by walking the
        namespace's ``ids``). What cannot be found stays for ``check --repair``; a
        search passes over such an entry (and reports it)."""
        prefix = self._prefix
        stored = bytes(record_key[len(prefix) :])
        txn.delete(record_key, db=dbs.records)
        head = read_header(raw) if len(raw) >= HEADER_SIZE else None
        if head is not None and txn.get(layout.id_key(prefix, head.sid), db=dbs.ids) == stored:
            # The header's fixed part is the item's: its other sections may still parse.
            try:
                entries = layout.index_entries(
                    prefix, unpack_record(bytes((RECORD_FORMAT_VERSION, head.flags & FLAG_EXPIRES, 0, 0)) + raw[4:])
                )
            except StorageCorruptionError:  # its ids and times, at fixed offsets
                entries = [
                    (layout.DB_IDS, layout.id_key(prefix, head.sid), b""),
                    (layout.DB_CREATED, layout.time_key(prefix, head.created, head.sid), b""),
                    (layout.DB_UPDATED, layout.time_key(prefix, head.updated, head.sid), b""),
                ]
                if head.flags & FLAG_EXPIRES:
                    entries.append((layout.DB_EXPIRES, layout.time_key(prefix, head.expires, head.sid), b""))
            for db, key, value in entries:
                txn.delete(key, value, db=dbs[db])
        else:
            cursor = txn.cursor(db=dbs.ids)
            found = cursor.set_range(prefix)
            while found and cursor.key().startswith(prefix):
                found = cursor.delete() if cursor.value() == stored else cursor.next()
        _logger.error("dropped the damaged record under key %r to write over it: %s", exc.details.get("key"), exc)

    def write(self, op: Callable[[Any, Databases], R]) -> R:
        """Run one write operation (``op(txn, dbs)``) in its own transaction, in this thread."""
        return self.shared.write_one(op)

    def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        """Store ``data`` under ``key`` (see :meth:`StorageProvider.save`)."""
        return self.write(self.writes.save(key, data, content_type, expires_at, tags))

    def delete(self, key: str, *, content_type: str | None = None) -> bool:
        """Delete the live item under ``key``; True if there was one."""
        return self.write(self.writes.delete(key, content_type))

    # -- bulk operations ---------------------------------------------------------------

    def _save_many_in(self, txn: Any, dbs: Databases, batch: PreparedBatch) -> list[StorageItem[Any]]:
        """Save a batch inside one write transaction (see :meth:`_write_many`)."""
        return self._write_many(txn, dbs, batch.key_bytes, batch.save, batch)

    def _restore_many_in(self, txn: Any, dbs: Databases, restores: list[PreparedSave]) -> int:
        """Restore items inside one write transaction (see :meth:`restore_many`); how many."""
        return len(self._write_many(txn, dbs, [save.key_bytes for save in restores], restores.__getitem__, None))

    def _write_many(
        self,
        txn: Any,
        dbs: Databases,
        key_bytes: list[bytes],
        save: Callable[[int], PreparedSave],
        batch: PreparedBatch | None,
    ) -> list[StorageItem[Any]]:
        """Write items (``save(position)`` each, keyed ``key_bytes``) inside one write
        transaction: the old records read in one bulk read, and every record and
        index entry written database by database, in key order. The new items of a
        ``save_many`` ``batch``, alike but for key and data, are built by the core in
        one call; every other item (a replaced one, a restored one) one at a time."""
        now = now_micros()
        self._purge(txn, dbs, now, PURGE_IN_PASSING)
        prefix = self._prefix
        record_keys = [self._record_key(encoded) for encoded in key_bytes]
        old_records = dict(txn.cursor(db=dbs.records).getmulti(record_keys))
        sids = itertools.count(layout.next_id(txn, dbs.ids, prefix))
        items: list[Any] = [None] * len(record_keys)
        records: list[Any] = [None] * len(record_keys)
        one_by_one: list[list[tuple[bytes, bytes]]] = [[] for _ in dbs]  # the index entries of items built singly
        new = []
        for position, record_key in enumerate(record_keys):
            raw = old_records.get(record_key)
            if raw is None and batch is not None:
                new.append(position)
                continue
            prepared = save(position)
            old = None if raw is None else self._replaced(txn, dbs, record_key, raw, prepared.key)
            if old is not None:
                self._unindex(txn, dbs, old)
            fields, records[position], items[position] = prepared.build(old, now, sids.__next__)
            for db, key, value in layout.index_entries(prefix, fields):
                one_by_one[db].append((key, value))
        for db, pairs in enumerate(one_by_one):
            txn.cursor(db=dbs[db]).putmulti(sorted(pairs))
        if batch is not None and new:
            first = next(sids)
            keys = [batch.key_bytes[position] for position in new]
            made, built = pack_new(
                keys,
                [batch.payloads[position] for position in new],
                [batch.data[position] for position in new],
                batch.content_type_bytes,
                batch.tag_pairs,
                batch.expires,
                now,
                first,
                os.urandom(16 * len(new)),
            )
            for position, record, item in zip(new, made, built, strict=True):
                records[position], items[position] = record, item
            expires, content_type, tags = batch.expires, batch.content_type_bytes, batch.tag_pairs
            like = RecordFields(first, b"", now, now, expires, b"", content_type, tags, b"")
            for db, keys_and_values in layout.batch_entries(prefix, like, range(first, first + len(new)), keys):
                txn.cursor(db=dbs[db]).putmulti(keys_and_values)  # in key order already
        # Every record, in key order, as pairs made one at a time (zip reuses its tuple).
        order = sorted(range(len(record_keys)), key=record_keys.__getitem__)
        txn.cursor(db=dbs.records).putmulti(
            zip(map(record_keys.__getitem__, order), map(records.__getitem__, order), strict=True)
        )
        return items

    def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        """Store every item of ``items`` (key → data) in one transaction: all of them or,
        if any is refused, none. Returns the items in the order of ``items``."""
        return self.write(self.writes.save_many(items, content_type, expires_at, tags))

    def restore_many(self, items: Sequence[StorageItem[Any]]) -> int:
        """Store each item verbatim, its id, times, expiry and tags as given, in one
        transaction (see :meth:`StorageProvider.restore_many`); returns how many."""
        return self.write(self.writes.restore_many(items))

    def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        """The live items under ``keys`` (of ``content_type``, if given), read in one
        transaction; keys without one are absent.

        Raises:
            ValidationError: ``keys`` is not an iterable of keys, or a bad key or content type.
        """
        checked = validate_keys(keys)
        wanted = validate_wanted_type(content_type)
        shared, prefix = self._opened()
        record_keys = [_record_key(prefix, key_bytes) for key_bytes in checked.values()]
        found = dict(shared.read(lambda txn, dbs: txn.cursor(db=dbs.records).getmulti(record_keys)))
        return live_items(checked, map(found.get, record_keys), wanted, now_micros())

    def _delete_many_in(self, txn: Any, dbs: Databases, checked: dict[str, bytes], content_type: str | None) -> int:
        """Delete a batch inside one write transaction; how many live items were removed."""
        now = now_micros()
        self._purge(txn, dbs, now, PURGE_IN_PASSING)
        return sum(self._delete_key(txn, dbs, key, key_bytes, content_type, now) for key, key_bytes in checked.items())

    def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        """Delete the live items under ``keys`` (of ``content_type``, if given) in one
        transaction; returns how many there were."""
        return self.write(self.writes.delete_many(keys, content_type))

    def _delete_matching_in(self, txn: Any, dbs: Databases, compiled: index.CompiledQuery) -> int:
        """Delete every live item ``compiled`` matches, inside one write transaction."""
        self._purge(txn, dbs, now_micros(), PURGE_IN_PASSING)
        plan = _plan(compiled.spec, self._prefix, txn, dbs)
        source = self._source(plan, self._prefix)
        matched = [
            (key, record)
            for chunk in index.matching_chunks(compiled, lambda position: source(txn, dbs, position), self._key_name)
            for key, record in chunk
        ]
        removed = 0
        for key, record in matched:
            try:  # its header matched, but its tags may still not parse
                fields = decode_fields(record, self._key_name(key))
            except StorageCorruptionError as exc:
                index.skipped(
                    f"the record under key {self._key_name(key)!r}, which does not decode", exc, "delete_matching"
                )
                continue
            self._remove(txn, dbs, fields)
            removed += 1
        return removed

    def delete_matching(self, query: StorageQuery | index.CompiledQuery) -> int:
        """Delete every live item that ``query`` matches (up to its ``limit``), atomically;
        returns how many."""
        return self.write(self.writes.delete_matching(query))

    def purge_expired(self) -> int:
        """Remove every expired item and its index entries; returns how many.

        Readers never see expired items anyway: this only reclaims space.
        """
        total = 0
        while True:
            removed = self.write(lambda txn, dbs: self._purge(txn, dbs, now_micros(), PURGE_BATCH))
            total += removed
            if removed < PURGE_BATCH:
                return total

    # -- reads -----------------------------------------------------------------

    def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        """The live item under ``key`` (of ``content_type``, if given).

        Raises:
            ItemNotFoundError: there is none.
        """
        key_bytes = validate_key(key)
        # The read path, kept free of Python frames it can do without: no property,
        # the transaction's own C method as the action.
        shared, prefix = self._now if self._now is not None else self._open()
        short = len(key_bytes) <= SHORT_KEY  # (the record key built here: a call less than _record_key)
        record_key = prefix + (key_bytes if short else stored_key(key_bytes))
        item = load_item(shared.read(_get, record_key), key, content_type, now_micros())
        if not short and item.metadata.key != key:  # a long key's digest form names another
            raise ItemNotFoundError(f"no item under key {key!r}", {"key": key})
        return item

    def explain(self, query: StorageQuery | index.CompiledQuery) -> index.Plan:
        """The plan a search of ``query`` would follow now (a :class:`~unistore.index.Plan`).

        Raises:
            ValidationError: a bad query field.
        """
        return self._planned(index.compile_query(query).spec)

    def _source(self, plan: index.Plan, prefix: bytes) -> _Source:
        """The chunk reader of a plan's path in the namespace of ``prefix``."""
        if plan.path == index.POSTINGS:
            terms = _posting_keys(prefix, plan.terms)
            return _PostingSource(self, terms)
        if plan.path == index.KEYS:
            return functools.partial(self._from_prefix, prefix + layout.scan_prefix(plan.literal))
        kind = index.CREATED if plan.path == index.CREATED_RANGE else index.EXPIRES
        return functools.partial(self._from_time_range, layout.database_of(kind), plan.low, plan.high)

    def search_chunks(self, query: StorageQuery | index.CompiledQuery) -> Iterator[list[StorageResult[Any]]]:
        """The results of ``query`` in lists, each read in one short transaction.

        Raises:
            ValidationError: a bad query field (on the first ``next``).
        """
        compiled = index.compile_query(query)
        if compiled.spec.limit == 0:
            return
        if compiled.spec.order is not None:
            ordered = self._ordered(compiled)
            for start in range(0, len(ordered), index.SEARCH_CHUNK):
                yield ordered[start : start + index.SEARCH_CHUNK]
            return
        plan = self._planned(compiled.spec)
        yield from index.search_chunks(compiled, self._reader(plan), plan.repeats, self._key_name)

    def _ordered(self, compiled: index.CompiledQuery) -> list[StorageResult[Any]]:
        """The results of an ordered query: its order walked from the position until the
        limit is reached, where the plan says that reads less than sorting every match
        by its header (:func:`unistore.ordering.pick`, the results alone decoded)."""
        spec = compiled.spec
        assert spec.order is not None
        shared, prefix = self._opened()
        plan = self._planned(spec)
        every = ordering.every_match(compiled)
        if plan.walk is None:  # (the plan's path reads every match: it is planned once)
            return ordering.pick(compiled, self._matches(every, plan=plan).items(), self._key_name)
        descending = spec.order.descending
        position = compiled.after
        if plan.walk == "key":
            after = None if position is None else position[0]
            groups = walk.by_key(shared.read, prefix, plan.literal, descending, after)
        else:  # a time index: the query bounds creation times only
            field = plan.walk.removesuffix("_at")
            low, high = (spec.created_after, spec.created_before) if field == "created" else (None, None)
            if position is not None:  # from the position's instant on (its group included)
                if descending:
                    high = position[0] if high is None else min(high, position[0])
                else:
                    low = position[0] if low is None else max(low, position[0])
            keep = None
            if plan.sifted:  # the ids of every posting list of the query, in one read
                terms = _posting_keys(prefix, index.query_postings(spec))
                ids = shared.read(lambda txn, dbs: _ids_in_all(txn, dbs, terms))
                keep = {ids[at : at + 8] for at in range(0, len(ids), 8)}
            groups = walk.by_time(shared.read, prefix, self._by_id, field, low, high, descending, keep)
        wanted = spec.limit
        assert wanted is not None  # (a walk is planned for a query with a limit only)
        results: list[StorageResult[Any]] = []
        # Headers are matched a batch at a time, in one core call; a batch waits for the
        # candidates still wanted, and one more (a walk from a position meets its item again).
        for batch in _batches(groups, lambda: wanted + 1 - len(results)):
            candidates = [candidate for group in batch for candidate in group]
            self.candidates_examined += len(candidates)
            chunks = index.matching_chunks(every, _whole(candidates), self._key_name)
            matched = {key for hits in chunks for key, _ in hits}
            for group in batch:
                hits = [candidate for candidate in group if candidate[0] in matched]
                if hits:
                    results.extend(ordering.pick(compiled.limited(wanted - len(results)), hits, self._key_name))
                    if len(results) >= wanted:
                        return results
        return results

    def _planned(self, spec: QuerySpec) -> index.Plan:
        """The plan of ``spec`` now."""
        shared, prefix = self._opened()
        return shared.read(functools.partial(_plan, spec, prefix))

    def _reader(self, plan: index.Plan) -> Callable[[Any], index.Chunk]:
        """The reader of the chunks of ``plan``'s path: each chunk read in one short transaction."""
        shared, prefix = self._opened()
        source = self._source(plan, prefix)

        def read(position: bytes | None) -> index.Chunk:
            candidates, position = shared.read(lambda txn, dbs: source(txn, dbs, position))
            self.candidates_examined += len(candidates)
            return candidates, position

        return read

    def count(self, query: StorageQuery | index.CompiledQuery) -> int:
        """How many live items ``query`` matches (up to its ``limit``), by their record
        headers: no payload is decoded.

        Raises:
            ValidationError: a bad query field.
        """
        compiled = ordering.unordered(query)
        spec = compiled.spec
        limit = spec.limit
        found = self._indexed_count(spec) if _postings_only(spec) else None
        if found is None:
            found = len(self._matches(compiled.limited(None), limit))
        return found if limit is None else min(found, limit)

    def _indexed_count(self, spec: QuerySpec) -> int | None:
        """The count of a query of tags and content type alone, from its posting lists:
        the ids they share, less those the expiry index says have expired (not purged
        yet); None when more than :data:`EXPIRED_COUNTED` have, for the records to say.
        The index is trusted: a record damaged on disk is counted until ``check
        --repair`` removes it (a search skips it)."""
        shared, prefix = self._opened()
        terms = _posting_keys(prefix, index.query_postings(spec))
        first, last = _time_bounds(prefix, None, now_micros())

        def action(txn: Any, dbs: Databases) -> int | None:
            cursor = txn.cursor(db=dbs.expires)
            expired: list[bytes] = []
            if cursor.set_range(first):
                for entry in cursor.iternext(values=False):
                    if entry > last or len(expired) > EXPIRED_COUNTED:
                        break
                    expired.append(entry[-8:])
            if len(expired) > EXPIRED_COUNTED:
                return None
            cursors = [(txn.cursor(db=dbs[db]), key) for db, key in terms]
            if len(terms) == 1:
                [(cursor, key)] = cursors
                shared_ids = int(cursor.count()) if cursor.set_key(key) else 0
            else:
                shared_ids = len(_ids_in_all(txn, dbs, terms)) // 8
            gone = sum(1 for sid in expired if all(cursor.set_key_dup(key, sid) for cursor, key in cursors))
            return shared_ids - gone

        found: int | None = shared.read(action)
        return found

    def _matches(
        self, compiled: index.CompiledQuery, most: int | None = None, plan: index.Plan | None = None
    ) -> dict[bytes, bytes]:
        """The ``(record key, record)`` of each item ``compiled`` matches by its header, each
        once (a path that may meet an item twice, moved by a save meanwhile, keeps the
        first), read no further than ``most`` items (None: all), on ``plan``'s path (None:
        the plan of ``compiled`` now)."""
        read = self._reader(plan if plan is not None else self._planned(compiled.spec))
        found: dict[bytes, bytes] = {}
        for chunk in index.matching_chunks(compiled, read, self._key_name):
            for key, record in chunk:
                found.setdefault(bytes(key), record)
            if most is not None and len(found) >= most:
                break
        return found

    def search(self, query: StorageQuery | index.CompiledQuery) -> Generator[StorageResult[Any], None, None]:
        """The live items that meet every criterion of ``query``."""
        for chunk in self.search_chunks(query):
            yield from chunk

    def _key_name(self, record_key: bytes) -> str:
        """An item's key as errors name it: its stored form, without the prefix, as text."""
        return bytes(record_key[len(self._prefix) :]).decode(errors="replace")

    def _by_id(self, txn: Any, dbs: Databases, sids: list[bytes], deleted_ok: bool = False) -> _Candidates:
        """The (stored key, record) of each item id (8 bytes), in two bulk reads.

        An id without a key was deleted after the ids were read (``deleted_ok``)
        or is a dangling index entry; a key without its record is always damage.
        Damage is passed over and reported (:func:`unistore.index.skipped`): one
        dangling entry never fails a search.
        """
        prefix = self._prefix
        stored = txn.cursor(db=dbs.ids).getmulti([prefix + sid for sid in sids])
        if len(stored) < len(sids) and not deleted_ok:
            found = {bytes(key[len(prefix) :]) for key, _ in stored}
            for sid in sids:
                if sid not in found:
                    self._dangling(int.from_bytes(sid, "big"), "has no ids entry")
        records: _Candidates = txn.cursor(db=dbs.records).getmulti([prefix + key for _, key in stored])
        if len(records) < len(stored):
            there = {bytes(key) for key, _ in records}
            for id_key, key in stored:
                if prefix + key not in there:
                    self._dangling(
                        int.from_bytes(id_key[len(prefix) :], "big"), f"names key {bytes(key)!r}, which has no record"
                    )
        return records

    def _dangling(self, sid: int, why: str) -> None:
        index.skipped(f"item id {sid} of namespace {self.namespace!r}, found in an index", f"the id {why}")

    def _from_prefix(self, start: bytes, txn: Any, dbs: Databases, after: bytes | None) -> _Batch:
        cursor = txn.cursor(db=dbs.records)
        if not cursor.set_range(after if after is not None else start):
            return [], None
        # One C-level read of the chunk (plus one to resume after), then cut it in
        # bulk: keys are sorted, so those with the prefix are one leading run.
        wanted = index.SEARCH_CHUNK + (1 if after is None else 2)  # the resume point itself comes back first
        candidates: list[tuple[bytes, bytes]] = list(itertools.islice(cursor.iternext(), wanted))
        if after is not None and candidates[0][0] == after:
            del candidates[0]
        if candidates and not candidates[-1][0].startswith(start):
            ends = [key.startswith(start) for key, _ in candidates]
            return candidates[: ends.index(False)], None
        if len(candidates) > index.SEARCH_CHUNK:
            del candidates[index.SEARCH_CHUNK :]
            return candidates, candidates[-1][0]
        return candidates, None

    def _from_time_range(
        self, db: int, low: int | None, high: int | None, txn: Any, dbs: Databases, after: bytes | None
    ) -> _Batch:
        cursor = txn.cursor(db=dbs[db])
        first, last = _time_bounds(self._prefix, low, high)
        sids: list[bytes] = []
        if cursor.set_range(after if after is not None else first):
            for entry in cursor.iternext(values=False):
                if entry == after:
                    continue
                if entry > last:
                    break
                sids.append(entry[-8:])
                if len(sids) == index.SEARCH_CHUNK:
                    return self._by_id(txn, dbs, sids), entry
        return self._by_id(txn, dbs, sids), None

    # -- checking --------------------------------------------------------------------

    def check(self, repair: bool = False) -> CheckReport:
        """Verify that every index entry of this namespace points at a live record of
        the right id and every record is fully indexed, in one read transaction; with
        ``repair``, in one write transaction that also fixes what it finds (see
        :mod:`.check`). Returns what was found."""
        shared, prefix = self._opened()
        if repair:
            return shared.write_one(lambda txn, dbs: check_namespace(txn, dbs, prefix, repair=True))
        return shared.read(lambda txn, dbs: check_namespace(txn, dbs, prefix))

    def drop_namespace(self) -> int:
        """Remove this namespace from the store in one write transaction: its records, every
        index entry and its own entries (see :meth:`StorageProvider.drop_namespace`); returns
        how many records there were. The engine reopens the namespace, anew, on next use."""
        shared, prefix = self._opened()
        name = self._namespace_bytes

        def drop(txn: Any, dbs: Databases) -> int:
            records = 0
            for number, db in enumerate(dbs):
                if number == layout.DB_META:
                    continue
                cursor = txn.cursor(db=db)
                found = cursor.set_range(prefix)
                while found and bytes(cursor.key()).startswith(prefix):
                    records += number == layout.DB_RECORDS
                    found = cursor.delete(dupdata=True)  # (every id of a posting key at once)
            layout.forget_namespace(txn, dbs.meta, name, prefix)
            return records

        dropped = shared.write_one(drop)
        self.close()
        return dropped

    def usage(self) -> dict[str, Usage]:
        """The live items of this namespace and their record bytes, per content type,
        in one read transaction (see :mod:`unistore.maintenance`)."""
        shared, prefix = self._opened()
        return shared.read(lambda txn, dbs: namespace_usage(txn, dbs, prefix, now_micros()))


def _batches(groups: Iterable[_Candidates], needed: Callable[[], int]) -> Iterator[list[_Candidates]]:
    """Groups of a walk, gathered until they hold a search chunk's worth of candidates, or
    what ``needed()`` says is still needed if less (asked before each batch: a sifted
    walk's candidates are few and far between, and a batch waits for no more)."""
    batch: list[_Candidates] = []
    size, most = 0, min(index.SEARCH_CHUNK, needed())
    for group in groups:
        batch.append(group)
        size += len(group)
        if size >= most:
            yield batch
            batch, size, most = [], 0, min(index.SEARCH_CHUNK, needed())
    if batch:
        yield batch


def _whole(group: _Candidates) -> Callable[[Any], index.Chunk]:
    """A chunk reader whose one chunk is ``group``."""
    return lambda _: (group, None)


class _Opened(NamedTuple):
    """An engine's open environment and its namespace's prefix there, taken together."""

    shared: SharedEnvironment
    prefix: bytes


def _record_key(prefix: bytes, key_bytes: bytes) -> bytes:
    return prefix + (key_bytes if len(key_bytes) <= SHORT_KEY else stored_key(key_bytes))


def _plan(spec: QuerySpec, prefix: bytes, txn: Any, dbs: Databases) -> index.Plan:
    """The planner's plan for ``spec`` (:func:`unistore.index.plan_ordered`): for an ordered
    query with a limit, whether to walk its order instead, and whether a time walk reads
    the query's posting lists first to pass over the entries of other items without
    reading their records (:attr:`~unistore.index.Plan.sifted`)."""
    sizes = _Sizes(txn, dbs, prefix)
    return index.plan_ordered(
        spec, sizes, COSTS, functools.partial(sizes.keys, b"", None), _WALKS, SORT_COST, SIFT_ID_COST
    )


_Candidates = list[tuple[bytes, bytes]]
_Batch = tuple[_Candidates, "bytes | None"]
_Source = Callable[[Any, Databases, "bytes | None"], _Batch]


def _read_ids(txn: Any, db: Any, key: bytes) -> bytes:
    """A whole posting list in one bulk read (MDB_GET_MULTIPLE), as ids back to back."""
    entries = txn.cursor(db=db).getmulti([key], dupdata=True, dupfixed_bytes=8, keyfixed=True)
    return ids_from_entries(entries, len(key))


def _posting_keys(prefix: bytes, terms: Iterable[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The (database number, key) of each posting-list term (kind, term) in the namespace of ``prefix``."""
    return [(layout.database_of(kind), layout.posting_key(prefix, term)) for kind, term in terms]


def _ids_in_all(txn: Any, dbs: Databases, terms: list[tuple[int, bytes]]) -> bytes:
    """The ids in every posting list of ``terms`` (database number, key), back to back,
    ascending: the first read in bulk and ANDed with the others (the smallest first is cheapest)."""
    (db, key), *others = terms
    ids = _read_ids(txn, dbs[db], key)
    for db, key in others:
        ids = intersect_ids(ids, _read_ids(txn, dbs[db], key))
    return ids


class _PostingSource:
    """Candidates from a plan's posting lists: the first (the smallest) read in bulk
    on the first chunk and ANDed there with the others; later chunks walk those
    ids. A search thus holds 8 bytes per id of its smallest list."""

    def __init__(self, engine: LmdbEngine, terms: list[tuple[int, bytes]]) -> None:
        self._engine = engine
        self._terms = terms
        self._ids: bytes | None = None
        self._offset = 0

    def __call__(self, txn: Any, dbs: Databases, after: bytes | None) -> _Batch:
        if self._ids is None:
            self._ids = _ids_in_all(txn, dbs, self._terms)
        chunk = self._ids[self._offset : self._offset + 8 * index.SEARCH_CHUNK]
        self._offset += len(chunk)
        sids = [chunk[i : i + 8] for i in range(0, len(chunk), 8)]
        # Items deleted since the first chunk read their ids are skipped, not damage.
        candidates = self._engine._by_id(txn, dbs, sids, deleted_ok=self._offset > len(chunk))
        return candidates, sids[-1] if self._offset < len(self._ids) else None


def _postings_only(spec: QuerySpec) -> bool:
    """Whether every criterion of ``spec`` is a posting list's (tags, content type), and there is one."""
    bounds = (spec.created_after, spec.created_before, spec.expires_after, spec.expires_before)
    return spec.pattern is None and bool(spec.tags or spec.content_type is not None) and bounds == (None,) * 4


def _posting_size(txn: Any, db: Any, key: bytes) -> int:
    cursor = txn.cursor(db=db)
    return int(cursor.count()) if cursor.set_key(key) else 0


class EngineWrites:
    """An engine's writes as operations for a writer that commits them in groups (the
    async provider's group commit): each method checks and encodes its arguments now,
    raising at once for bad ones, and returns ``op(txn, dbs)``, which writes inside a
    write transaction. :meth:`LmdbEngine.write` runs one in a transaction of its own."""

    def __init__(self, engine: LmdbEngine) -> None:
        self._engine = engine

    def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> Callable[[Any, Databases], StorageItem[Any]]:
        """Check and encode a save now; the returned op writes it inside a write transaction.

        Raises:
            ValidationError, SerializationError: bad arguments (nothing is queued).
        """
        return functools.partial(
            self._engine._save_in, prepared=prepare_save(key, data, content_type, expires_at, tags)
        )

    def delete(self, key: str, content_type: str | None = None) -> Callable[[Any, Databases], bool]:
        """Check a delete now; the returned op runs it inside a write transaction."""
        key_bytes = validate_key(key)
        validate_wanted_type(content_type)
        return functools.partial(self._engine._delete_in, key=key, key_bytes=key_bytes, content_type=content_type)

    def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> Callable[[Any, Databases], list[StorageItem[Any]]]:
        """Check and encode every item now; the returned op writes them all in one write transaction.

        Raises:
            ValidationError, SerializationError: a bad argument or item (nothing is queued).
        """
        return functools.partial(self._engine._save_many_in, batch=prepare_many(items, content_type, expires_at, tags))

    def restore_many(self, items: Sequence[StorageItem[Any]]) -> Callable[[Any, Databases], int]:
        """Check and encode every item now; the returned op restores them all in one write transaction.

        Raises:
            ValidationError, SerializationError: a bad item (nothing is queued).
        """
        return functools.partial(self._engine._restore_many_in, restores=prepare_restore(items))

    def delete_many(self, keys: Iterable[str], content_type: str | None = None) -> Callable[[Any, Databases], int]:
        """Check every key now; the returned op deletes them in one write transaction."""
        checked = validate_keys(keys)
        validate_wanted_type(content_type)
        return functools.partial(self._engine._delete_many_in, checked=checked, content_type=content_type)

    def delete_matching(self, query: StorageQuery | index.CompiledQuery) -> Callable[[Any, Databases], int]:
        """Check ``query`` now; the returned op deletes what it matches in one write transaction.

        Raises:
            ValidationError: a bad query field.
        """
        return functools.partial(self._engine._delete_matching_in, compiled=index.compile_query(query))


class _Sizes:
    """The sizes of one namespace's candidate sources, for the planner (:class:`unistore.index.Sizes`),
    read in the transaction ``txn``; each posting list's and the namespace's read once."""

    def __init__(self, txn: Any, dbs: Databases, prefix: bytes) -> None:
        self._txn = txn
        self._dbs = dbs
        self._prefix = prefix
        self._postings: dict[tuple[int, bytes], int] = {}

    def posting(self, kind: int, term: bytes) -> int:
        size = self._postings.get((kind, term))
        if size is None:
            db = self._dbs[layout.database_of(kind)]
            size = self._postings[kind, term] = _posting_size(self._txn, db, layout.posting_key(self._prefix, term))
        return size

    def keys(self, literal: bytes, most: int | None) -> int:
        prefix = self._prefix
        if not literal:
            return self._namespace_size
        start = prefix + layout.scan_prefix(literal)
        cursor = self._txn.cursor(db=self._dbs.records)
        if not cursor.set_range(start):
            return 0
        count = 0
        for key in cursor.iternext(values=False):
            if count == most or not key.startswith(start):
                break
            count += 1
        return count

    @functools.cached_property
    def _namespace_size(self) -> int:
        """The namespace's items: the sum of its content types' posting lists, read
        in bulk; where it has more types than is worth counting, the store's records."""
        prefix = self._prefix
        cursor = self._txn.cursor(db=self._dbs.types)
        total = 0
        found = cursor.set_range(prefix)
        for _ in range(NAMESPACE_TYPES_COUNTED):
            if not found or not cursor.key().startswith(prefix):
                return total
            total += cursor.count()
            found = cursor.next_nodup()
        return int(self._txn.stat(self._dbs.records)["entries"])

    def times(self, kind: int, low: int | None, high: int | None, most: int) -> int:
        cursor = self._txn.cursor(db=self._dbs[layout.database_of(kind)])
        first, last = _time_bounds(self._prefix, low, high)
        count = 0
        if cursor.set_range(first):
            for entry in cursor.iternext(values=False):
                if count == most or entry > last:
                    break
                count += 1
        return count


def _time_bounds(prefix: bytes, low: int | None, high: int | None) -> tuple[bytes, bytes]:
    """The first and last keys a time order may hold from ``low`` to ``high`` (inclusive)."""
    first = layout.time_key(prefix, low if low is not None else -layout.TIME_BIAS, 0)
    last = layout.time_key(prefix, high, 2**64 - 1) if high is not None else prefix + b"\xff" * 16
    return first, last


__all__ = ["COSTS", "PURGE_BATCH", "PURGE_IN_PASSING", "EngineWrites", "LmdbEngine"]
