"""The maintenance of an LMDB store: the integrity check of one namespace (every index
entry points at a live record of the right id, and every record is fully indexed:
what ``unistore check`` runs), its repair, and the sizes ``unistore stats`` shows.

A repair runs in one write transaction per namespace: it deletes the records that
do not decode (or that sit under another key than their own), deletes every index
entry that belongs to no record, and writes every entry a record lacks. A healthy
record is never rewritten.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...codec import decode_fields, decode_item
from ...core import RecordFields
from ...errors import StorageCorruptionError
from ..maintenance import CheckReport, Usage, tally
from . import layout

#: Each index database (its number in :class:`~.layout.Databases`), its name and
#: the :class:`CheckReport` field that counts its entries.
_INDEXES = (
    (layout.DB_IDS, "ids", "ids"),
    (layout.DB_TAGS, "tags", "tag_entries"),
    (layout.DB_TYPES, "types", "type_entries"),
    (layout.DB_CREATED, "created", "created_entries"),
    (layout.DB_EXPIRES, "expires", "expires_entries"),
    (layout.DB_UPDATED, "updated", "updated_entries"),
)


def _entries(txn: Any, db: Any, prefix: bytes) -> set[tuple[bytes, bytes]]:
    """Every (key, value) of ``db`` whose key starts with ``prefix``."""
    return set(_walk(txn, db, prefix))


def _walk(txn: Any, db: Any, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of ``db`` whose key starts with ``prefix``, in key order."""
    cursor = txn.cursor(db=db)
    if cursor.set_range(prefix):
        for key, value in cursor.iternext():
            if not key.startswith(prefix):
                return
            yield key, value


def check_namespace(txn: Any, dbs: layout.Databases, prefix: bytes, repair: bool = False) -> CheckReport:
    """Check the namespace whose keys start with ``prefix`` in the transaction ``txn``;
    with ``repair`` (``txn`` then writes), also fix every problem found. The report
    is of what was found (a repaired namespace checks clean afterwards)."""
    report = CheckReport()
    problems = report.problems
    decoded: list[RecordFields] = []
    doomed: list[bytes] = []
    for record_key, raw in _walk(txn, dbs.records, prefix):
        report.records += 1
        stored = record_key[len(prefix) :]
        try:
            fields = decode_fields(raw, stored)
            decode_item(raw, stored)  # the payload too: a load would fail on it
        except StorageCorruptionError as exc:
            problems.append(str(exc))
            doomed.append(record_key)
            continue
        if layout.stored_key(fields.key) != stored:
            problems.append(f"record under {stored!r} says its key is {fields.key!r}")
            doomed.append(record_key)
            continue
        decoded.append(fields)
    expected: dict[int, set[tuple[bytes, bytes]]] = {db: set() for db, _, _ in _INDEXES}
    for fields in decoded:  # (two records that claim one item id both expect its ids entry: one lacks it)
        for db, key, value in layout.index_entries(prefix, fields):
            expected[db].add((key, value))
    fixes: list[tuple[int, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]] = []
    for db, name, counter in _INDEXES:
        found = _entries(txn, dbs[db], prefix)
        setattr(report, counter, len(found))
        stray = sorted(found - expected[db])
        lacking = sorted(expected[db] - found)
        problems.extend(f"{name} index entry {e!r} points at no record that has it" for e in stray)
        problems.extend(f"{name} index lacks entry {e!r}" for e in lacking)
        fixes.append((db, stray, lacking))
    if repair:
        for record_key in doomed:
            txn.delete(record_key, db=dbs.records)
        for db, stray, lacking in fixes:  # strays first: an ids entry may be replaced by a lacking one
            for key, value in stray:
                txn.delete(key, value, db=dbs[db])
            for key, value in lacking:
                txn.put(key, value, db=dbs[db])
    return report


def usage(txn: Any, dbs: layout.Databases, prefix: bytes, now: int) -> dict[str, Usage]:
    """The live items and record bytes per content type of the namespace of ``prefix``."""
    return tally((raw for _, raw in _walk(txn, dbs.records, prefix)), now)


__all__ = ["check_namespace", "usage"]
