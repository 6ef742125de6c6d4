"""The maintenance of a Redis store: the integrity check of one namespace shard (every
index entry belongs to a record that has it, and every record is fully indexed: what
``unistore check`` runs), its repair, the sizes ``unistore stats`` shows, what the server
says of eviction, and the namespaces a server holds.

A shard is read on the node that serves it (SCAN, SSCAN, ZSCAN and HSCAN, a page at a
time, so the server is never blocked for long); if that node stops serving it meanwhile,
the shard is read again from the start on its new owner. Writes made meanwhile may show
as problems, so check (and above all repair) a store at rest. The index entries of a
record that Redis has expired are *stale*, not damage: its head in the ``heads`` hash
vouches for them until ``purge_expired`` removes them. A head whose record is gone
before the expiry it names was evicted: ``check`` says so.

A repair deletes the records that do not decode (or hold another key than their own)
with their heads, removes every index entry and head that belongs to no record, and adds
every one a record lacks, in pipelines of :data:`BATCH` commands; a healthy record is
never rewritten. Before it deletes anything it reads the records and heads concerned
again, by key, from the node that serves them now: what a stale view took for stray is
kept.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from ... import index
from ...codec import decode_fields, decode_item
from ...core import RecordFields
from ...errors import StorageCorruptionError
from ..maintenance import CheckReport, Namespace, Usage, merge, tally
from . import layout
from .connection import Connection, NodeChanged, Pinned
from .search import Shard

R = TypeVar("R")

#: Keys read per MGET, and commands per repair pipeline.
BATCH = 500
#: What one SCAN, SSCAN, ZSCAN or HSCAN call is asked to visit.
PAGE = 1000

_POSTING_PARTS = ((layout.TAG, "tag_entries", "tags"), (layout.CONTENT_TYPE, "type_entries", "types"))
#: The sorted sets: (part, the report's counter, name). The key order's entries are counted as
#: ``ids`` (Redis reaches an item by its key: the key order is what stands for LMDB's id index).
_TIME_PARTS = (
    (layout.CREATED, "created_entries", "created"),
    (layout.EXPIRES, "expires_entries", "expires"),
    (layout.UPDATED, "updated_entries", "updated"),
    (layout.KEY_ORDER, "ids", "keys"),
)
_TIME_NAMES = {index.CREATED: "created", index.EXPIRES: "expires", index.UPDATED: "updated"}
_COUNTERS = ("records", "tag_entries", "type_entries", *(counter for _, counter, _ in _TIME_PARTS))
#: The maxmemory policies that never drop a key by themselves.
KEEPING_POLICIES = frozenset({"noeviction"})


async def _scan(pinned: Pinned, command: str, key: bytes | None, match: bytes | None = None) -> list[Any]:
    """Every element a SCAN-family walk meets (SCAN: keys matching ``match``; SSCAN:
    members; ZSCAN and HSCAN: flat pairs), each once."""
    found: dict[Any, None] = {}
    cursor: Any = 0
    while True:
        arguments: list[Any] = [command] + ([key] if key is not None else []) + [cursor]
        if match is not None:
            arguments += ["MATCH", match]
        arguments += ["COUNT", PAGE]
        [(cursor, page)] = await pinned.run([tuple(arguments)], keyless=key is None)
        if command in ("ZSCAN", "HSCAN"):
            page = list(zip(page[::2], page[1::2], strict=True))
        found.update(dict.fromkeys(page))
        if not int(cursor):
            return list(found)


async def _on_its_node(pinned: Pinned, read: Callable[[], Awaitable[R]]) -> R:
    """``read()``, all on the node that serves the shard: from the start again, on the node
    that serves it then, whenever the shard moves while it reads."""
    while True:
        try:
            return await read()
        except NodeChanged as moved:
            await pinned.restart(moved)


async def _shard_records(
    pinned: Pinned, prefix: bytes, shard: _Shard | None = None
) -> AsyncIterator[tuple[bytes, bytes]]:
    """The (item key, record) of every record of the shard, read :data:`BATCH` at a time.
    MGET answers nil for a key gone since the SCAN and for one of another type: those are
    asked their type, and one of another type is reported to ``shard`` (given: a check)."""
    cut = len(layout.record_key(prefix, b""))
    record_keys = sorted(await _scan(pinned, "SCAN", None, layout.scan_pattern(prefix, None)))
    for start in range(0, len(record_keys), BATCH):
        batch = record_keys[start : start + BATCH]
        [records] = await pinned.run([("MGET", *batch)])
        found = [(record_key, record) for record_key, record in zip(batch, records, strict=True) if record is not None]
        if shard is not None and len(found) < len(batch):
            await _typed(
                pinned, shard, [key for key, record in zip(batch, records, strict=True) if record is None], b"string"
            )
        for record_key, record in found:
            yield record_key[cut:], record


def _entries(prefix: bytes, member: bytes, fields: RecordFields) -> dict[str, set[Any]]:
    """The index entries a record (or an expired record's head) gives its key."""
    entries = _empty()
    for kind, term in index.postings(fields):
        entries["tags" if kind == index.TAG else "types"].add((layout.posting_key(prefix, kind, term), member))
    for kind, micros in index.times(fields):
        # As a sorted set keeps it: a score is a double, which rounds times past 2**53 µs (year 2255).
        entries[_TIME_NAMES[kind]].add((member, int(float(micros))))
    entries["keys"].add((member, 0))
    return entries


def _empty() -> dict[str, set[Any]]:
    return {name: set() for _, _, name in _POSTING_PARTS + _TIME_PARTS}


@dataclass
class _Shard:
    """What one reading of a shard found, and what a repair of it would do."""

    report: CheckReport = field(default_factory=CheckReport)
    records: dict[bytes, RecordFields | None] = field(default_factory=dict)  # None: does not decode
    damaged: dict[bytes, bytes] = field(default_factory=dict)  # member -> the record that does not decode
    heads: dict[bytes, bytes] = field(default_factory=dict)  # the heads hash as found
    expected: dict[str, set[Any]] = field(default_factory=_empty)
    stale: dict[str, set[Any]] = field(default_factory=_empty)
    found: dict[str, set[Any]] = field(default_factory=_empty)
    # the repair
    drop_heads: list[bytes] = field(default_factory=list)
    write_heads: dict[bytes, bytes] = field(default_factory=dict)  # member -> the head an expiring record should have
    stray: dict[str, list[Any]] = field(default_factory=dict)
    lacking: dict[str, list[Any]] = field(default_factory=dict)
    wrong_type: list[bytes] = field(default_factory=list)  # keys of ours that hold another type: deleted
    marker: bytes | None = None  # the shard's marker, rewritten (when damaged)


async def _typed(pinned: Pinned, shard: _Shard, keys: list[bytes], kind: bytes) -> list[bytes]:
    """Those of ``keys`` that hold a ``kind`` (or nothing); the others are reported, and
    deleted by a repair (someone's key under our name, or damage: the index entries
    they should hold come back from the records)."""
    kept = []
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        for key, reply in zip(batch, await pinned.run([("TYPE", key) for key in batch]), strict=True):
            found = reply if isinstance(reply, bytes) else str(reply).encode()  # (a status: str or bytes)
            if found in (kind, b"none"):
                kept.append(key)
            else:
                shard.report.problems.append(f"{key!r} holds a {found.decode()}, not a {kind.decode()}")
                shard.wrong_type.append(key)
    return kept


async def _read(pinned: Pinned, prefix: bytes, now: int, shards: int) -> _Shard:
    """Read the whole shard on one node and find its problems (``shards``: the namespace's
    count, which the shard's marker must say)."""
    shard = _Shard()
    report = shard.report
    marker = prefix + layout.MARKER
    if await _typed(pinned, shard, [marker], b"string"):
        [recorded] = await pinned.run([("GET", marker)])
        if recorded is not None and recorded != str(shards).encode():
            report.problems.append(f"shard marker {marker!r} says {recorded!r}, not {shards}")
            if not recorded.isdigit():  # damaged (another count is not ours to overwrite)
                shard.marker = str(shards).encode()
    else:  # (of another type: reported by _typed)
        shard.marker = str(shards).encode()
    async for member, record in _shard_records(pinned, prefix, shard):
        report.records += 1
        shard.records[member] = None
        name = member.decode(errors="replace")
        try:
            fields = decode_fields(record, name)
            decode_item(record, name)  # the payload too: a load would fail on it
        except StorageCorruptionError as exc:
            report.problems.append(str(exc))
            shard.damaged[member] = record
            continue
        if fields.key != member:
            report.problems.append(f"record under {member!r} says its key is {fields.key!r}")
            shard.damaged[member] = record
            continue
        shard.records[member] = fields
        if fields.expires is not None:
            shard.write_heads[member] = record[: len(record) - len(fields.payload)]  # as the save script writes it
        for kind, entries in _entries(prefix, member, fields).items():
            shard.expected[kind] |= entries
    for heads in await _typed(pinned, shard, [prefix + layout.HEADS], b"hash"):
        shard.heads = dict(await _scan(pinned, "HSCAN", heads))
    _judge_heads(shard, prefix, now)
    for part, counter, name in _POSTING_PARTS:
        set_keys = sorted(await _scan(pinned, "SCAN", None, prefix + part + b"*"))
        for set_key in await _typed(pinned, shard, set_keys, b"set"):
            shard.found[name] |= {(set_key, member) for member in await _scan(pinned, "SSCAN", set_key)}
        setattr(report, counter, len(shard.found[name]))
    for part, counter, name in _TIME_PARTS:
        for time_key in await _typed(pinned, shard, [prefix + part], b"zset"):
            pairs = await _scan(pinned, "ZSCAN", time_key)
            shard.found[name] = {(member, int(float(score))) for member, score in pairs}
        setattr(report, counter, len(shard.found[name]))
    for name, entries in shard.found.items():
        shard.stray[name] = sorted(entries - shard.expected[name] - shard.stale[name])
        shard.lacking[name] = sorted(shard.expected[name] - entries)
        report.problems.extend(
            f"{name} index entry {entry!r} points at no record that has it" for entry in shard.stray[name]
        )
        report.problems.extend(f"{name} index lacks entry {entry!r}" for entry in shard.lacking[name])
    return shard


def _judge_heads(shard: _Shard, prefix: bytes, now: int) -> None:
    """Check the heads hash against the records: every expiring record has its head, nothing
    else has one; the heads of records Redis has expired vouch for their stale entries, and
    one whose record is gone before its expiry was evicted."""
    report = shard.report
    for member, head in sorted(shard.heads.items()):
        if member in shard.records:
            fields = shard.records[member]
            if fields is None:  # a record that a repair deletes: its head goes with it
                shard.drop_heads.append(member)
            elif fields.expires is None:
                report.problems.append(f"heads entry {member!r} belongs to a record that does not expire")
                shard.drop_heads.append(member)
            elif shard.write_heads[member] == head:
                del shard.write_heads[member]  # right as it is
            else:
                report.problems.append(f"heads entry {member!r} does not match its record")
            continue
        try:
            fields = decode_fields(head, member.decode(errors="replace"))
        except StorageCorruptionError as exc:
            report.problems.append(f"heads entry: {exc}")
            shard.drop_heads.append(member)
            continue
        if fields.expires is not None and fields.expires > now:
            report.problems.append(
                f"the record under {member!r} is gone before its expiry: evicted (Redis needs "
                "maxmemory-policy noeviction; see docs/operations.md)"
            )
        for name, entries in _entries(prefix, member, fields).items():
            shard.stale[name] |= entries
    expiring = {member for member, fields in shard.records.items() if fields is not None and fields.expires}
    report.problems.extend(f"heads lacks entry {member!r}" for member in sorted(expiring - set(shard.heads)))


async def check_shard(
    connection: Connection, shard: Shard, shards: int, report: CheckReport, now: int, repair: bool = False
) -> None:
    """Check ``shard`` (of ``shards``) on the node that serves it, adding its counts and
    problems to ``report``; with ``repair``, fix what it finds (confirmed first: see the module)."""
    pinned = shard.pinned(connection)
    found = await _on_its_node(pinned, lambda: _read(pinned, shard.prefix, now, shards))
    for counter in _COUNTERS:
        setattr(report, counter, getattr(report, counter) + getattr(found.report, counter))
    report.problems += found.report.problems
    if repair:
        await _confirm(connection, shard, found)
        await _run(connection, shard.slot, _commands(shard.prefix, found))


async def _confirm(connection: Connection, shard: Shard, found: _Shard) -> None:
    """Keep out of the repair every deletion that the records and heads, read again by key
    on the node that serves them now, do not confirm."""
    prefix = shard.prefix
    members = sorted(
        {*found.damaged, *found.drop_heads}
        | {member for name in ("tags", "types") for _, member in found.stray[name]}
        | {member for _, _, name in _TIME_PARTS for member, _ in found.stray[name]}
    )
    for start in range(0, len(members), BATCH):
        batch = members[start : start + BATCH]
        records, heads = await connection.routed(
            shard.slot,
            [
                ("MGET", *(layout.record_key(prefix, member) for member in batch)),
                ("HMGET", prefix + layout.HEADS, *batch),
            ],
        )
        for member, record, head in zip(batch, records, heads, strict=True):
            if member in found.damaged and record != found.damaged[member]:
                del found.damaged[member]  # rewritten (or removed) since: not ours to delete
            if member in found.drop_heads and not _stray_head(found, member, record, head):
                found.drop_heads.remove(member)
            kept = _empty()  # what the record (or head) there now vouches for
            for source in (record, head):
                if source is not None and member not in found.damaged:
                    try:
                        fields = decode_fields(source, "")
                    except StorageCorruptionError:
                        continue
                    for name, entries in _entries(prefix, member, fields).items():
                        kept[name] |= entries
            for name in found.stray:
                found.stray[name] = [entry for entry in found.stray[name] if entry not in kept[name]]


def _stray_head(found: _Shard, member: bytes, record: bytes | None, head: bytes | None) -> bool:
    """Whether the head of ``member`` is still one to drop, by its record and head as read again."""
    if head is None or head != found.heads.get(member):
        return False  # changed since it was judged: left alone
    if member in found.damaged:
        return True  # it goes with its record
    try:
        if record is None:
            decode_fields(head, "")
            return False  # the head of a record Redis has expired: it vouches for its entries
        fields = decode_fields(record, "")
    except StorageCorruptionError:
        return record is None  # a head that does not decode, with no record
    return fields.expires is None


def _commands(prefix: bytes, found: _Shard) -> Iterator[tuple[Any, ...]]:
    """The commands that carry a shard's repair out."""
    heads = prefix + layout.HEADS
    for key in found.wrong_type:  # first: what is added next may go under these names
        yield ("DEL", key)
    if found.marker is not None:
        yield ("SET", prefix + layout.MARKER, found.marker)
    for member in found.damaged:
        yield ("DEL", layout.record_key(prefix, member))
    for member in found.drop_heads:
        yield ("HDEL", heads, member)
    for name, entries in found.stray.items():
        for entry in entries:
            if name in ("tags", "types"):
                yield ("SREM", *entry)
            else:
                yield ("ZREM", prefix + name.encode(), entry[0])
    for name, entries in found.lacking.items():
        for entry in entries:
            if name in ("tags", "types"):
                yield ("SADD", *entry)
            else:
                yield ("ZADD", prefix + name.encode(), entry[1], entry[0])
    for member, head in sorted(found.write_heads.items()):
        yield ("HSET", heads, member, head)


async def _run(connection: Connection, slot: int, commands: Iterator[tuple[Any, ...]]) -> None:
    """Send ``commands`` in pipelines of :data:`BATCH` to the node that serves ``slot`` (each
    command may run twice on a retry: each is idempotent)."""
    while True:
        batch = list(itertools.islice(commands, BATCH))
        if not batch:
            return
        await connection.routed(slot, batch)


async def shard_usage(connection: Connection, shard: Shard, now: int) -> dict[str, Usage]:
    """The live items and record bytes per content type of ``shard``."""
    pinned = shard.pinned(connection)

    async def tallied() -> dict[str, Usage]:
        parts: list[dict[str, Usage]] = []
        batch: list[bytes] = []
        async for _, record in _shard_records(pinned, shard.prefix):
            batch.append(record)
            if len(batch) == BATCH:
                parts.append(tally(batch, now))
                batch = []
        parts.append(tally(batch, now))
        return merge(parts)

    return await _on_its_node(pinned, tallied)


async def eviction(connection: Connection) -> list[tuple[str, str | None, int]]:
    """What each node that serves data says of eviction: (node, its ``maxmemory-policy``,
    how many keys it has evicted since it started), read from ``INFO`` (which managed
    services allow where ``CONFIG GET`` is refused); the policy is None where ``INFO`` is
    refused (an ACL user without it, a server that renamed it)."""
    found: list[tuple[str, str | None, int]] = []
    for address in connection.broadcast_targets():
        node = f"{address[0]}:{address[1]}"
        memory, stats = await connection.on_node(address, [("INFO", "memory"), ("INFO", "stats")])
        if any(isinstance(reply, ResponseError) for reply in (memory, stats)):  # no INFO here (ACL, renamed)
            found.append((node, None, 0))
            continue
        info = _info(memory) | _info(stats)
        found.append((node, info.get("maxmemory_policy", "noeviction"), int(info.get("evicted_keys", 0))))
    return found


def _info(reply: Any) -> dict[str, str]:
    text = reply.decode(errors="replace") if isinstance(reply, (bytes, bytearray)) else str(reply)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


async def drop_shard(connection: Connection, shard: Shard) -> int:
    """Delete every key of ``shard``, :data:`BATCH` at a time, its marker last (a pinned read
    tells a moved shard by it); how many records there were."""
    pinned = shard.pinned(connection)
    keys = await _on_its_node(pinned, lambda: _scan(pinned, "SCAN", None, shard.prefix + b"*"))  # (no glob in it)
    records: int = sum(1 for key in keys if key.startswith(shard.prefix + layout.RECORD))
    rest = [key for key in keys if key != shard.marker]
    for start in range(0, len(rest), BATCH):
        await connection.call(shard.slot, "UNLINK", *rest[start : start + BATCH])
    await connection.call(shard.slot, "UNLINK", shard.marker)
    return records


async def namespace_exists(connection: Connection, shards_key: bytes, shards: list[Shard]) -> bool:
    """Whether the server holds any key of a namespace: its shard count (recorded by its
    first write) or, failing that, any shard's marker or creation order (every item has an
    entry there)."""
    if await connection.call(layout.key_slot(shards_key), "EXISTS", shards_key):
        return True
    for shard in shards:
        if await connection.call(shard.slot, "EXISTS", shard.marker, shard.prefix + layout.CREATED):
            return True
    return False


async def namespaces(connection: Connection) -> list[Namespace]:
    """Every namespace the server (every master of a cluster) holds, with its shard
    count, by name: those whose shard count is recorded (see :func:`namespace_exists`)."""
    found: dict[str, int] = {}
    for address in connection.broadcast_targets():
        cursor: Any = 0
        while True:
            [reply] = await connection.on_node(
                address, [("SCAN", cursor, "MATCH", b"us{*}:shards", "COUNT", PAGE, "TYPE", "string")]
            )
            if isinstance(reply, Exception):
                raise reply
            cursor, keys = reply
            names = [(name, key) for key in keys if (name := layout.namespace_of(key)) is not None]
            if names:
                counts = [await connection.call(layout.key_slot(key), "GET", key) for _, key in names]
                for (name, _), count in zip(names, counts, strict=True):
                    if count is not None and count.isdigit():
                        found[name] = int(count)
            if not int(cursor):
                break
    return [Namespace(name, {"shards": str(count)}) for name, count in sorted(found.items())]


__all__ = [
    "BATCH",
    "KEEPING_POLICIES",
    "PAGE",
    "check_shard",
    "drop_shard",
    "eviction",
    "namespace_exists",
    "namespaces",
    "shard_usage",
]
