"""The integrity check of one namespace: every index entry points at a live record
of the right id, and every record is fully indexed (what ``unistore check`` runs)."""

from __future__ import annotations

from typing import Any

from ...codec import decode_fields
from ...core import RecordFields
from ...errors import StorageCorruptionError
from ...index import CheckReport
from . import layout

#: Each index database (its number in :class:`~.layout.Databases`), its name and
#: the :class:`CheckReport` field that counts its entries.
_INDEXES = (
    (1, "ids", "ids"),
    (2, "tags", "tag_entries"),
    (3, "types", "type_entries"),
    (4, "created", "created_entries"),
    (5, "expires", "expires_entries"),
)


def _entries(txn: Any, db: Any, prefix: bytes) -> set[tuple[bytes, bytes]]:
    """Every (key, value) of ``db`` whose key starts with ``prefix``."""
    cursor = txn.cursor(db=db)
    found: set[tuple[bytes, bytes]] = set()
    if cursor.set_range(prefix):
        for key, value in cursor.iternext():
            if not key.startswith(prefix):
                break
            found.add((key, value))
    return found


def check_namespace(txn: Any, dbs: layout.Databases, prefix: bytes) -> CheckReport:
    """Check the namespace whose keys start with ``prefix``, in the read transaction ``txn``."""
    report = CheckReport()
    problems = report.problems
    by_id: dict[int, RecordFields] = {}
    for record_key, raw in sorted(_entries(txn, dbs.records, prefix)):
        report.records += 1
        stored = record_key[len(prefix) :]
        try:
            fields = decode_fields(raw, stored)
        except StorageCorruptionError as exc:
            problems.append(str(exc))
            continue
        if layout.stored_key(fields.key) != stored:
            problems.append(f"record under {stored!r} says its key is {fields.key!r}")
        by_id[fields.sid] = fields
    expected: dict[int, set[tuple[bytes, bytes]]] = {db: set() for db, _, _ in _INDEXES}
    for fields in by_id.values():
        for db, key, value in layout.index_entries(prefix, fields):
            expected[db].add((key, value))
    for db, name, counter in _INDEXES:
        found = _entries(txn, dbs[db], prefix)
        setattr(report, counter, len(found))
        stray = sorted(found - expected[db])
        problems.extend(f"{name} index entry {e!r} points at no record that has it" for e in stray)
        problems.extend(f"{name} index lacks entry {e!r}" for e in sorted(expected[db] - found))
    return report


__all__ = ["CheckReport", "check_namespace"]
