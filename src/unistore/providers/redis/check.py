"""The maintenance of a Redis store: the integrity check of one namespace shard (every
index entry belongs to a record that has it, and every record is fully indexed: what
``unistore check`` runs), its repair, the sizes ``unistore stats`` shows, and the
namespaces a server holds.

It reads the shard with SCAN, SSCAN, ZSCAN and HSCAN, a page at a time, so the
server is never blocked for long; writes made meanwhile may show as problems,
so check (and above all repair) a store at rest. The index entries of a record
that Redis has expired are *stale*, not damage: its head in the ``heads`` hash
vouches for them until ``purge_expired`` removes them.

A repair deletes the records that do not decode (or hold another key than their
own) with their heads, removes every index entry and head that belongs to no
record, and adds every one a record lacks, in pipelines of :data:`BATCH`
commands; a healthy record is never rewritten.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ... import index
from ...codec import decode_fields, decode_item
from ...core import RecordFields
from ...errors import StorageCorruptionError
from ...maintenance import Usage, merge, tally
from . import layout

#: Keys read per MGET.
BATCH = 500
#: What one SCAN, SSCAN, ZSCAN or HSCAN call is asked to visit.
PAGE = 1000

_POSTING_PARTS = ((layout.TAG, "tag_entries", "tags"), (layout.CONTENT_TYPE, "type_entries", "types"))
_TIME_PARTS = ((layout.CREATED, "created_entries", "created"), (layout.EXPIRES, "expires_entries", "expires"))


async def scan_page(
    client: Any, cursor: int, match: bytes, count: int, node: dict[str, Any]
) -> tuple[int, list[bytes]]:
    """One SCAN call on ``node`` (a shard's node on a cluster, see the provider's ``_node``):
    the cursor to go on from (0: done) and the keys it met."""
    after, keys = await client.scan(cursor, match=match, count=count, **node)
    if isinstance(after, dict):  # a cluster's SCAN answers per node: here one node's
        [after] = after.values()
    return int(after), keys


async def _keys(client: Any, match: bytes, node: dict[str, Any]) -> list[bytes]:
    """Every key that matches ``match`` (a SCAN may meet one twice: once here)."""
    found: set[bytes] = set()
    cursor = 0
    while True:
        cursor, keys = await scan_page(client, cursor, match, PAGE, node)
        found.update(keys)
        if not cursor:
            return sorted(found)


def _entries(prefix: bytes, member: bytes, fields: RecordFields) -> dict[str, set[Any]]:
    """The index entries a record (or an expired record's head) gives its key."""
    entries = _empty()
    for kind, term in index.postings(fields):
        entries["tags" if kind == index.TAG else "types"].add((layout.posting_key(prefix, kind, term), member))
    for kind, micros in index.times(fields):
        # As a sorted set keeps it: a score is a double, which rounds times past 2**53 µs (year 2255).
        entries["created" if kind == index.CREATED else "expires"].add((member, int(float(micros))))
    return entries


def _empty() -> dict[str, set[Any]]:
    return {name: set() for _, _, name in _POSTING_PARTS + _TIME_PARTS}


async def _shard_records(client: Any, prefix: bytes, node: dict[str, Any]) -> AsyncIterator[tuple[bytes, bytes]]:
    """The (item key, record) of every record of the shard, read :data:`BATCH` at a time."""
    cut = len(prefix) + len(layout.RECORD)
    record_keys = await _keys(client, layout.scan_pattern(prefix, None), node)
    for start in range(0, len(record_keys), BATCH):
        batch = record_keys[start : start + BATCH]
        found = zip(batch, await client.mget(batch), strict=True)
        for record_key, record in [(key, record) for key, record in found if record is not None]:  # not gone since
            yield record_key[cut:], record


class _Repair:
    """What a repair of one shard does: records to delete, heads to drop and to
    write, index entries to remove and to add."""

    def __init__(self) -> None:
        self.doomed: list[bytes] = []
        self.drop_heads: list[bytes] = []
        self.heads: dict[bytes, bytes] = {}  # member -> the head an expiring record should have
        self.stray: dict[str, list[Any]] = {}
        self.lacking: dict[str, list[Any]] = {}

    def commands(self, prefix: bytes) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """The commands that carry it out, as (name, arguments)."""
        heads = prefix + b"heads"
        for member in self.doomed:
            yield "delete", (layout.record_key(prefix, member),)
        for member in self.drop_heads:
            yield "hdel", (heads, member)
        for name, entries in self.stray.items():
            for entry in entries:
                if name in ("tags", "types"):
                    yield "srem", entry
                else:
                    yield "zrem", (prefix + name.encode(), entry[0])
        for name, entries in self.lacking.items():
            for entry in entries:
                if name in ("tags", "types"):
                    yield "sadd", entry
                else:
                    yield "zadd", (prefix + name.encode(), {entry[0]: entry[1]})
        for member, head in sorted(self.heads.items()):
            yield "hset", (heads, member, head)


async def _records(
    client: Any, prefix: bytes, node: dict[str, Any], report: index.CheckReport, repair: _Repair
) -> tuple[dict[bytes, RecordFields | None], dict[str, set[Any]]]:
    """Every record of the shard by key (None: it does not decode, or is under
    another key than its own), and the index entries they give."""
    expected = _empty()
    records: dict[bytes, RecordFields | None] = {}
    async for member, record in _shard_records(client, prefix, node):
        report.records += 1
        records[member] = None
        name = member.decode(errors="replace")
        try:
            fields = decode_fields(record, name)
            decode_item(record, name)  # the payload too: a load would fail on it
        except StorageCorruptionError as exc:
            report.problems.append(str(exc))
            repair.doomed.append(member)
            continue
        if fields.key != member:
            report.problems.append(f"record under {member!r} says its key is {fields.key!r}")
            repair.doomed.append(member)
            continue
        records[member] = fields
        if fields.expires is not None:
            repair.heads[member] = record[: len(record) - len(fields.payload)]  # as the save script writes it
        for part, entries in _entries(prefix, member, fields).items():
            expected[part] |= entries
    return records, expected


async def _stale(
    client: Any, prefix: bytes, records: dict[bytes, RecordFields | None], report: index.CheckReport, repair: _Repair
) -> dict[str, set[Any]]:
    """The index entries that the heads of records Redis has expired vouch for; checks
    that every expiring record has its head, and nothing else has one."""
    stale = _empty()
    heads: dict[bytes, bytes] = {}
    cursor = 0
    while True:
        cursor, page = await client.hscan(prefix + b"heads", cursor, count=PAGE)
        heads.update(page)
        if not cursor:
            break
    for member, head in sorted(heads.items()):
        if member in records:
            fields = records[member]
            if fields is None:  # a record that a repair deletes: its head goes with it
                repair.drop_heads.append(member)
            elif fields.expires is None:
                report.problems.append(f"heads entry {member!r} belongs to a record that does not expire")
                repair.drop_heads.append(member)
            elif repair.heads[member] == head:
                del repair.heads[member]  # right as it is
            else:
                report.problems.append(f"heads entry {member!r} does not match its record")
            continue
        try:
            fields = decode_fields(head, member.decode(errors="replace"))
        except StorageCorruptionError as exc:
            report.problems.append(f"heads entry: {exc}")
            repair.drop_heads.append(member)
            continue
        for name, entries in _entries(prefix, member, fields).items():
            stale[name] |= entries
    expiring = {member for member, fields in records.items() if fields is not None and fields.expires is not None}
    report.problems.extend(f"heads lacks entry {member!r}" for member in sorted(expiring - set(heads)))
    return stale


async def check_shard(
    client: Any, prefix: bytes, node: dict[str, Any], report: index.CheckReport, repair: bool = False
) -> None:
    """Check the shard whose keys start with ``prefix`` (``node``: where its SCANs go),
    adding its counts and problems to ``report``; with ``repair``, fix what it finds."""
    plan = _Repair()
    records, expected = await _records(client, prefix, node, report, plan)
    stale = await _stale(client, prefix, records, report, plan)
    found = _empty()
    for part, counter, name in _POSTING_PARTS:
        for set_key in await _keys(client, prefix + part + b"*", node):
            async for member in client.sscan_iter(set_key, count=PAGE):
                found[name].add((set_key, member))
        setattr(report, counter, getattr(report, counter) + len(found[name]))
    for part, counter, name in _TIME_PARTS:
        found[name] = {(member, int(score)) async for member, score in client.zscan_iter(prefix + part, count=PAGE)}
        setattr(report, counter, getattr(report, counter) + len(found[name]))
    for name, entries in found.items():
        plan.stray[name] = sorted(entries - expected[name] - stale[name])
        plan.lacking[name] = sorted(expected[name] - entries)
        report.problems.extend(
            f"{name} index entry {entry!r} points at no record that has it" for entry in plan.stray[name]
        )
        report.problems.extend(f"{name} index lacks entry {entry!r}" for entry in plan.lacking[name])
    if repair:
        await _run(client, plan.commands(prefix))


async def _run(client: Any, commands: Iterator[tuple[str, tuple[Any, ...]]]) -> None:
    """Send ``commands`` in pipelines of :data:`BATCH` (every key in one shard: one node)."""
    while True:
        batch = list(itertools.islice(commands, BATCH))
        if not batch:
            return
        async with client.pipeline(transaction=False) as pipe:
            for name, args in batch:
                getattr(pipe, name)(*args)
            await pipe.execute()


async def shard_usage(client: Any, prefix: bytes, node: dict[str, Any], now: int) -> dict[str, Usage]:
    """The live items and record bytes per content type of the shard of ``prefix``."""
    parts: list[dict[str, Usage]] = []
    batch: list[bytes] = []
    async for _, record in _shard_records(client, prefix, node):
        batch.append(record)
        if len(batch) == BATCH:
            parts.append(tally(batch, now))
            batch = []
    parts.append(tally(batch, now))
    return merge(parts)


async def namespace_exists(client: Any, shards_key: bytes, prefixes: list[bytes]) -> bool:
    """Whether the server holds any key of a namespace: its shard count (recorded by
    the first client to use it) or, failing that, any shard's creation order (every
    item has an entry there)."""
    for key in (shards_key, *(prefix + layout.CREATED for prefix in prefixes)):
        if await client.exists(key):
            return True
    return False


async def namespaces(client: Any) -> list[tuple[str, int]]:
    """Every namespace the server (every master of a cluster) holds, with its shard
    count, by name: those whose shard count is recorded (see :func:`namespace_exists`)."""
    found: dict[str, int] = {}
    async for key in client.scan_iter(match=b"us{*}:shards", count=PAGE, _type="string"):
        name = layout.namespace_of(key)
        count = await client.get(key)
        if name is not None and count is not None and count.isdigit():
            found[name] = int(count)
    return sorted(found.items())


__all__ = ["check_shard", "namespace_exists", "namespaces", "scan_page", "shard_usage"]
