"""Ordered walks of one LMDB namespace: its records in key order, or its items by
creation or update time, from a position, either way, in groups whose members the order
decides among themselves.

A search ordered by ``key``, ``created_at`` or ``updated_at`` can walk the namespace's
records (kept in the order of their stored keys) or its ``created`` or ``updated`` index
(kept by time, then item id) instead of reading every match and sorting them (:func:`unistore.ordering.pick`): it
reads from the page's position until it has the page, so a page costs what it reads.

Two stored orders differ from the order a query names, and the walk hands them over in
*groups* that the caller sorts by the records themselves:

- items created (or updated) in the same microsecond are kept by id, not by key: a group
  is every entry of one instant;
- keys too long to store whole keep their first ``KEPT_KEY_BYTES`` bytes and a digest
  (see :mod:`.layout`), so keys that share those bytes are not kept in key order among
  themselves: a group is every record whose stored key starts with the same
  ``KEPT_KEY_BYTES`` bytes (one record, for any key shorter than that).

Each chunk of entries is read in one short read transaction, as a search's are.
"""

from __future__ import annotations

import itertools
import operator
import struct
from collections.abc import Callable, Iterator
from typing import Any

from ... import index
from ..._coretypes import HEADER_SIZE, read_header
from . import layout
from .layout import KEPT_KEY_BYTES, LONG_KEY, PREFIX_SIZE, Databases

_ID = struct.Struct(">Q")  # an item id as the indexes hold it (see .layout)
#: Past every stored key that starts with a given run of bytes (a stored key is at most
#: LONG_KEY bytes): where a descending walk of that run starts.
_ABOVE = b"\xff" * (LONG_KEY + 1)

#: One chunk of a walk: (group, (record key, record)) in the walk's order, and the raw
#: key to resume after (None: the walk is over).
_Chunk = tuple[list[tuple[Any, tuple[bytes, bytes]]], "bytes | None"]
#: Reads one chunk in a read transaction: ``read(action)`` runs ``action(txn, dbs)``.
Reader = Callable[[Callable[[Any, Databases], _Chunk]], _Chunk]


def _entries(cursor: Any, start: bytes, descending: bool, resume: bytes | None) -> Iterator[tuple[bytes, bytes]]:
    """The cursor's entries from ``resume`` (excluded) or from ``start`` (included), in
    the walk's direction."""
    at = resume if resume is not None else start
    if not descending:
        if not cursor.set_range(at):
            return
        entries = cursor.iternext()
    else:  # from the last key at or before ``at``
        placed = cursor.set_range(at)
        if not placed:
            placed = cursor.last()
        elif cursor.key() > at:
            placed = cursor.prev()
        if not placed:
            return
        entries = cursor.iterprev()
    for key, value in entries:
        if key != resume:
            yield key, value


def _groups(read: Callable[[bytes | None], _Chunk]) -> Iterator[list[tuple[bytes, bytes]]]:
    """The candidates of a walk, grouped: a group is complete when the next group begins."""
    group: list[tuple[bytes, bytes]] = []
    current: Any = None
    resume: bytes | None = None
    while True:
        chunk, resume = read(resume)
        for name, candidate in chunk:
            if name != current and group:
                yield group
                group = []
            current = name
            group.append(candidate)
        if resume is None:
            break
    if group:
        yield group


def by_key(
    reader: Reader, prefix: bytes, literal: bytes, descending: bool, after: bytes | None
) -> Iterator[list[tuple[bytes, bytes]]]:
    """The namespace's records whose stored keys start with ``literal`` (all: empty), in
    key order (``descending``: the other way), from the group of the key ``after`` (its
    UTF-8; None: from the first); each group as ``(record key, record)`` candidates."""
    bound = prefix + layout.scan_prefix(literal)  # what every stored key walked starts with
    low, high = bound, bound + _ABOVE
    if after is not None:
        kept = prefix + layout.stored_key(after)[:KEPT_KEY_BYTES]
        low, high = (max(low, kept), high) if not descending else (low, min(high, kept + _ABOVE))
    start = high if descending else low

    def chunk(resume: bytes | None) -> _Chunk:
        def action(txn: Any, dbs: Databases) -> _Chunk:
            found: list[tuple[Any, tuple[bytes, bytes]]] = []
            for key, record in _entries(txn.cursor(db=dbs.records), start, descending, resume):
                if not key.startswith(bound):
                    return found, None
                found.append((bytes(key[PREFIX_SIZE : PREFIX_SIZE + KEPT_KEY_BYTES]), (bytes(key), record)))
                if len(found) == index.SEARCH_CHUNK:
                    return found, bytes(key)
            return found, None

        return reader(action)

    return _groups(chunk)


def by_time(
    reader: Reader,
    prefix: bytes,
    by_id: Callable[[Any, Databases, list[bytes]], list[tuple[bytes, bytes]]],
    field: str,
    low: int | None,
    high: int | None,
    descending: bool,
    keep: set[bytes] | None = None,
) -> Iterator[list[tuple[bytes, bytes]]]:
    """The namespace's items whose ``field`` (``"created"`` or ``"updated"``: the time index
    of that name and the header field) is from ``low`` to ``high`` (µs, inclusive; None:
    unbounded), by that time (``descending``: newest first); a group is the items of one
    instant, as ``(record key, record)`` candidates (``by_id`` reads the records of a
    chunk's item ids in its transaction). With ``keep``, only the items whose ids (8
    bytes) it holds: the others' records are not read."""
    time_of = operator.attrgetter(field)
    first = layout.time_key(prefix, low if low is not None else -layout.TIME_BIAS, 0)
    last = layout.time_key(prefix, high, 2**64 - 1) if high is not None else prefix + b"\xff" * 16
    start = last if descending else first

    def chunk(resume: bytes | None) -> _Chunk:
        def action(txn: Any, dbs: Databases) -> _Chunk:
            cursor = txn.cursor(db=getattr(dbs, field))
            entries = list(itertools.islice(_entries(cursor, start, descending, resume), index.SEARCH_CHUNK))
            inside = [entry for entry, _ in entries if first <= entry <= last]
            placed = [layout.time_of(entry) for entry in inside]  # (µs, item id), in the walk's order
            if keep is not None:
                placed = [(micros, sid) for micros, sid in placed if _ID.pack(sid) in keep]
            # Each entry gives its item's record if the record says the same time: an entry
            # left stale by damage, with its id given again since, is passed over.
            # A record too damaged to say its time and id comes first: the search reports it.
            records: dict[int, tuple[int, tuple[bytes, bytes]]] = {}
            found: list[tuple[Any, tuple[bytes, bytes]]] = []
            for key, record in by_id(txn, dbs, [_ID.pack(sid) for sid in dict.fromkeys(sid for _, sid in placed)]):
                if len(record) < HEADER_SIZE:
                    found.append((None, (bytes(key), record)))
                else:
                    head = read_header(record)
                    records[head.sid] = (time_of(head), (bytes(key), record))
            found += [records[sid] for micros, sid in placed if records.get(sid, (None,))[0] == micros]
            done = len(entries) < index.SEARCH_CHUNK or len(inside) < len(entries)
            return found, None if done else bytes(entries[-1][0])

        return reader(action)

    return _groups(chunk)


__all__ = ["Reader", "by_key", "by_time"]
