"""Copy items between any two providers, verbatim, and verify the copy.

:func:`copy` reads the items a query matches from one provider and writes them
into another through its bulk write path (:meth:`StorageProvider.restore_many`),
batch by batch, keeping each item's key, id, ``created_at``, ``updated_at``,
expiry, tags and content type. A rollback is the same copy in the other
direction. The procedure, including a migration while the service keeps
writing, is in ``docs/migration.md``.

- **Streaming**: one batch of items is held at a time, never the whole store.
- **Idempotent**: an item the target already holds identically (same record:
  data and metadata) is not written again, so a re-run writes nothing new.
- **Resumable**: each batch lands atomically (one transaction, or one script
  per shard), so a copy killed mid-way leaves whole items only, and running it
  again completes the job, writing only what is missing or changed.
- **Verified**: both sides are read again; every item of each is looked up on
  the other and compared by checksum (:func:`checksum`), and the counts are
  reported with any difference. An item that expires meanwhile is not a problem.

A copy never deletes: :func:`prune` removes from the target what the source no
longer holds (the items deleted during a migration). A copy may run while the
source keeps changing; what changed after an item was copied shows up in the
verification, and the next run copies it (see the docs).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from .codec import item_record
from .errors import ItemNotFoundError, StorageCorruptionError, ValidationError
from .index import CompiledQuery, compile_query, damage_met, skipped
from .model import StorageItem, StorageQuery, now_micros, validate_time
from .providers.base import StorageProvider

DEFAULT_BATCH_SIZE = 500
"""Items read, compared and written together, by default: one transaction, or one script per shard,
each (a Redis script blocks its server while it runs: keep it short).
"""
MAX_BATCH_SIZE = 100_000
"""The largest batch :func:`copy` takes."""
NAMED_PROBLEMS = 20
"""Keys a report names for each kind of problem; the rest are counted."""

Progress = Callable[[int, "int | None"], None]
"""``progress(done, total)``: items read so far, and the number that matched when the copy began
(None when not counted); called after each batch lands.
"""


@dataclass(frozen=True)
class MigrationReport:
    """What a :func:`copy` did.

    Attributes:
        read: items read from the source (the live items the query matched).
        written: items written to the target.
        unchanged: items the target already held identically, left alone.
        verified: True when the verification found the two sides equal, False
            when it did not (see ``problems``), None when it was not asked for.
        problems: one line per difference found (named keys, then counts).
    """

    read: int
    written: int
    unchanged: int
    verified: bool | None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing went wrong: no problem found (verified, or not asked to be)."""
        return not self.problems


def checksum(item: StorageItem[Any]) -> bytes:
    """A digest of everything an item is: key, id, times, expiry, content type, tags and
    data (the record it would be stored as, without any store's own numbering).
    Two stores hold the same item exactly when its checksums agree.

    Raises:
        ValidationError, SerializationError: ``item`` could not be stored.
    """
    return hashlib.blake2b(item_record(item), digest_size=16).digest()


async def copy(
    source: StorageProvider[Any],
    target: StorageProvider[Any],
    query: StorageQuery | None = None,
    verify: bool = True,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> MigrationReport:
    """Copy the live items of ``source`` that ``query`` matches into ``target``, verbatim.

    Each batch of ``batch_size`` items is compared with what ``target`` holds
    under the same keys, and the items that are missing or differ are written
    in one :meth:`~StorageProvider.restore_many` call (atomic per batch; per
    shard on a Redis Cluster). An item under the same key in ``target`` is
    replaced, and so is a record there that does not decode (reported as a
    search reports one); items of ``target`` the query does not reach are left alone.

    Args:
        source: the provider to read.
        target: the provider to write (for a rollback, the old store).
        query: which items (None: every item); its ``limit`` must be None.
        verify: afterwards, read both sides again and compare them item by item
            (checksums of data and metadata) and in number.
        batch_size: items per batch.
        progress: called as ``progress(done, total)`` after each batch; when
            given, the matching items are counted first (one more read of the
            source) so that ``total`` is known, else ``total`` is None.

    Returns:
        A :class:`MigrationReport`; ``report.ok`` says whether all is well.

    Raises:
        ValidationError: a bad argument or query field, or a query with a limit.
        StorageError: either provider failed (what landed before stays, and a
            re-run completes the copy).
    """
    compiled = _checked(source, target, query, batch_size, progress)
    total = await _count(source, compiled) if progress is not None else None
    read = written = unchanged = 0
    async with contextlib.aclosing(_lookups(source, target, compiled, batch_size)) as lookups:
        async for batch, found, _ in lookups:
            read += len(batch)
            changed = [item for item in batch if not _same(item, found.get(item.metadata.key))]
            if changed:
                written += await target.restore_many(changed)
            unchanged += len(batch) - len(changed)
            if progress is not None:
                progress(read, None if total is None else max(total, read))
    if not verify:
        return MigrationReport(read, written, unchanged, None)
    problems = await _verify(source, target, compiled, batch_size)
    return MigrationReport(read, written, unchanged, not problems, tuple(problems))


async def prune(
    source: StorageProvider[Any],
    target: StorageProvider[Any],
    query: StorageQuery | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Delete from ``target`` the items ``query`` matches there that ``source`` does not
    hold: after a :func:`copy`, the items deleted from the source since, or moved
    out of the query there (another content type or tag under the same key); a copy
    never deletes. Returns how many items were deleted.

    It deletes whatever the source lacks, whoever wrote it: run it only where
    the target is a copy of the source, before anything else writes to it (in a
    cut-over, before the service is switched to the target; see
    ``docs/migration.md``). Writes to the source meanwhile do no harm: an item
    the source gains is not deleted, and one it loses is left for the next run.

    Raises:
        ValidationError: a bad argument or query field, or a query with a limit.
        StorageError: either provider failed (a re-run completes the job).
    """
    compiled = _checked(source, target, query, batch_size, None)
    deleted = 0
    async with contextlib.aclosing(_lookups(target, source, compiled, batch_size)) as lookups:
        async for batch, found, damaged in lookups:
            held = _matching(compiled, found)  # a damaged record in the source may be its item: kept
            gone = [key for key in (item.metadata.key for item in batch) if key not in held and key not in damaged]
            if gone:
                deleted += await target.delete_many(gone)
    return deleted


def _checked(source: object, target: object, query: object, batch_size: object, progress: object) -> CompiledQuery:
    """The compiled query, once every argument of :func:`copy` is checked."""
    for name, provider in (("source", source), ("target", target)):
        if not isinstance(provider, StorageProvider):
            raise ValidationError(f"{name} must be a StorageProvider, got {type(provider).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValidationError(f"batch_size must be an int from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}")
    if progress is not None and not callable(progress):
        raise ValidationError(f"progress must be callable or None, got {type(progress).__name__}")
    if query is not None and not isinstance(query, StorageQuery):
        raise ValidationError(f"query must be a StorageQuery or None, got {type(query).__name__}")
    compiled = compile_query(query if query is not None else StorageQuery())
    if compiled.spec.limit is not None:
        raise ValidationError("query.limit must be None: a migration copies every item the query matches")
    return compiled


async def _batches(
    provider: StorageProvider[Any], compiled: CompiledQuery, size: int
) -> AsyncGenerator[list[Any], None]:
    """The items ``compiled`` matches in ``provider``, ``size`` at a time, each key once
    per batch (an item deleted and made again during the search may be met twice)."""
    batch: dict[str, StorageItem[Any]] = {}
    async with contextlib.aclosing(provider.search(compiled)) as results:  # type: ignore[type-var]
        async for result in results:
            item = result.item
            batch[item.metadata.key] = item
            if len(batch) == size:
                yield list(batch.values())
                batch = {}
    if batch:
        yield list(batch.values())


async def _lookups(
    reading: StorageProvider[Any], other: StorageProvider[Any], compiled: CompiledQuery, size: int
) -> AsyncGenerator[tuple[list[StorageItem[Any]], dict[str, StorageItem[Any]], set[str]], None]:
    """The items ``compiled`` matches in ``reading``, a batch at a time, each with what
    ``other`` holds under the batch's keys and which of them hold a record that does not
    decode (see :func:`_held`): the one loop that copying, verifying and pruning share."""
    async with contextlib.aclosing(_batches(reading, compiled, size)) as batches:
        async for batch in batches:
            yield batch, *await _held(other, [item.metadata.key for item in batch])


async def _held(provider: StorageProvider[Any], keys: list[str]) -> tuple[dict[str, StorageItem[Any]], set[str]]:
    """What ``provider`` holds under ``keys`` (one bulk read), and the keys whose record
    there does not decode: a bulk read that meets one fails whole, so the batch is then
    read again a key at a time, and each damaged record reported as a search reports one."""
    try:
        return await provider.load_many(keys), set()
    except StorageCorruptionError:
        pass
    found: dict[str, StorageItem[Any]] = {}
    damaged: set[str] = set()
    for key in keys:
        try:
            found[key] = await provider.load(key)
        except ItemNotFoundError:
            pass
        except StorageCorruptionError as exc:
            skipped(f"the record under key {key!r}", exc, "migrate")
            damaged.add(key)
    return found, damaged


async def _count(provider: StorageProvider[Any], compiled: CompiledQuery) -> int:
    count = 0
    async with contextlib.aclosing(provider.search(compiled)) as results:  # type: ignore[type-var]
        async for _ in results:
            count += 1
    return count


def _matching(compiled: CompiledQuery, found: dict[str, StorageItem[Any]]) -> dict[str, StorageItem[Any]]:
    """The items of ``found`` that ``compiled`` matches: a store holds an item of the
    query's only if the item under that key there matches the query too (it may
    have another content type or tag by now)."""
    keys = list(found)
    records = [item_record(found[key]) for key in keys]
    return {keys[at]: found[keys[at]] for at in compiled.matcher.matching(records, now_micros(), -1)}


def _same(item: StorageItem[Any], other: StorageItem[Any] | None) -> bool:
    return other is not None and checksum(other) == checksum(item)


def _expired(item: StorageItem[Any]) -> bool:
    """Whether ``item`` has expired by now (it may have been live when it was read)."""
    expires = validate_time(item.metadata.expires_at, "expires_at")
    return expires is not None and expires <= now_micros()


class _Findings:
    """The problems of one side of a verification: each key once, in the order met;
    named up to a bound, the rest counted."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.keys: dict[str, None] = {}

    def add(self, key: str) -> None:
        self.keys[key] = None

    def lines(self) -> list[str]:
        named = [f"{self.what}: {key!r}" for key in itertools.islice(self.keys, NAMED_PROBLEMS)]
        more = len(self.keys) - len(named)
        return named + ([f"{self.what}: {more} more"] if more else [])


async def _compare(
    reading: StorageProvider[Any],
    other: StorageProvider[Any],
    compiled: CompiledQuery,
    batch_size: int,
    missing: _Findings,
    differing: _Findings | None,
    damaged: _Findings,
) -> int:
    """Look each item ``compiled`` matches in ``reading`` up in ``other``: note those it lacks
    (unless they have expired since), those whose record there does not decode, and, given
    ``differing``, those it holds otherwise; without ``differing``, an item ``other`` holds
    that the query no longer matches is lacking. Returns how many items ``reading`` holds
    (those that expired meanwhile left out)."""
    count = 0
    async with contextlib.aclosing(_lookups(reading, other, compiled, batch_size)) as lookups:
        async for batch, found, unreadable in lookups:
            # Only presence asked: an item that left the query is absent.
            held = found if differing is not None else _matching(compiled, found)
            for item in batch:
                there = held.get(item.metadata.key)
                if item.metadata.key in unreadable:
                    damaged.add(item.metadata.key)
                elif there is None:
                    if _expired(item):
                        continue
                    missing.add(item.metadata.key)
                elif differing is not None and checksum(there) != checksum(item):
                    differing.add(item.metadata.key)
                count += 1
    return count


async def _verify(
    source: StorageProvider[Any], target: StorageProvider[Any], compiled: CompiledQuery, batch_size: int
) -> list[str]:
    """The differences between what ``compiled`` matches in ``source`` and in ``target``.

    Every item of each side is looked up on the other, so when no key is named
    the two sides hold the same items; a count that differs then can only come
    from items that expired between the two reads, which is not a problem.
    """
    missing, differing, extra = (
        _Findings("missing in target"),
        _Findings("differs in target"),
        _Findings("only in target"),
    )
    damaged_target, damaged_source = _Findings("damaged in target"), _Findings("damaged in source")
    passed_over: set[str] = set()  # the damaged records the source's search passed over
    token = damage_met.set(passed_over)
    try:
        in_source = await _compare(source, target, compiled, batch_size, missing, differing, damaged_target)
    finally:
        damage_met.reset(token)
    in_target = await _compare(target, source, compiled, batch_size, extra, None, damaged_source)
    for key in sorted(passed_over):
        damaged_source.add(key)
    problems = missing.lines() + differing.lines() + damaged_target.lines() + extra.lines() + damaged_source.lines()
    if problems:
        problems.append(f"counts: {in_source} matching items in the source, {in_target} in the target")
    return problems


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCH_SIZE",
    "NAMED_PROBLEMS",
    "MigrationReport",
    "Progress",
    "checksum",
    "copy",
    "prune",
]
