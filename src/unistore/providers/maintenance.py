"""What the maintenance of a store shares across backends: the integrity check's
report and the sizes per content type.

Every provider has the maintenance methods of :class:`~unistore.StorageProvider`
(``check``, ``purge_expired``, ``usage``, ``namespaces``, ``namespace_exists``,
``explain``, ``backup``); these are the values they return.

*Bytes* are those of the stored records (header, key, content type, tags and
payload), the same measure on every backend; index entries are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..codec import decode_fields, is_live
from ..errors import StorageCorruptionError


@dataclass
class CheckReport:
    """What an integrity check of a namespace found: entry counts, and one line per problem."""

    records: int = 0
    ids: int = 0  # LMDB: its id index; Redis: its key order (items are reached by key)
    tag_entries: int = 0
    type_entries: int = 0
    created_entries: int = 0
    expires_entries: int = 0
    updated_entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every index entry points at its record and every record is indexed."""
        return not self.problems


@dataclass(frozen=True)
class Namespace:
    """One namespace of a store: its name, and what its provider must be told, beyond the
    store and the name, to open it again (a Redis namespace's shard count; nothing on LMDB)."""

    name: str
    settings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """The live items of one content type and the bytes of their records."""

    items: int = 0
    bytes: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.items + other.items, self.bytes + other.bytes)


def tally(records: Iterable[bytes], now: int) -> dict[str, Usage]:
    """The :class:`Usage` per content type of the live items among ``records``
    (a record that does not decode is left out: ``check`` reports it)."""
    counts: dict[bytes, list[int]] = {}
    for record in records:
        try:
            fields = decode_fields(record, "")
        except StorageCorruptionError:
            continue
        if is_live(fields.expires, now):
            count = counts.setdefault(fields.content_type, [0, 0])
            count[0] += 1
            count[1] += len(record)
    return {name.decode(errors="replace"): Usage(items, size) for name, (items, size) in sorted(counts.items())}


def merge(usages: Iterable[dict[str, Usage]]) -> dict[str, Usage]:
    """Several :func:`tally` results added up per content type, in content type order."""
    total: dict[str, Usage] = {}
    for usage in usages:
        for content_type, part in usage.items():
            total[content_type] = total.get(content_type, Usage()) + part
    return dict(sorted(total.items()))


__all__ = ["CheckReport", "Namespace", "Usage", "merge", "tally"]
