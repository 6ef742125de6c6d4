"""What the maintenance of a store shares across backends: sizes per content type,
and the face a provider shows to the ``unistore`` command.

A provider that can be maintained (LMDB and Redis; not ``memory://``, which
lives and dies with one process) has, beyond :class:`~unistore.StorageProvider`:

- ``usage()``: its live items and their bytes per content type (:class:`Usage`),
  read from the store itself, so a fresh process sees them;
- ``check(repair=False)``: the integrity check (:class:`~unistore.index.CheckReport`);
  with ``repair=True`` it also drops the records that do not decode and puts
  every index entry right, leaving healthy items untouched;
- ``purge_expired()``: the expired items removed, how many.

*Bytes* are those of the stored records (header, key, content type, tags and
payload), the same measure on every backend; index entries are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .codec import decode_fields, is_live
from .errors import StorageCorruptionError
from .index import CheckReport


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


@runtime_checkable
class MaintainedProvider(Protocol):
    """A provider the ``unistore`` command can maintain (see the module's docstring)."""

    async def usage(self) -> dict[str, Usage]:
        """Live items and record bytes per content type."""

    async def check(self, repair: bool = False) -> CheckReport:
        """Check (and with ``repair``, fix) the namespace's records and indexes."""

    async def purge_expired(self) -> int:
        """Remove expired items; how many."""

    async def cleanup(self) -> None:
        """Release resources."""


__all__ = ["MaintainedProvider", "Usage", "merge", "tally"]
