"""The integrity check of one Redis namespace shard: every index entry belongs to a
record that has it, and every record is fully indexed (what ``unistore check`` runs).

It reads the shard with SCAN, SSCAN, ZSCAN and HSCAN, a page at a time, so the
server is never blocked for long; writes made meanwhile may show as problems,
so check a store at rest. The index entries of a record that Redis has expired
are *stale*, not damage: its head in the ``heads`` hash vouches for them until
``purge_expired`` removes them.
"""

from __future__ import annotations

from typing import Any

from ... import index
from ...codec import decode_fields
from ...core import RecordFields
from ...errors import StorageCorruptionError
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
        entries["created" if kind == index.CREATED else "expires"].add((member, micros))
    return entries


def _empty() -> dict[str, set[Any]]:
    return {name: set() for _, _, name in _POSTING_PARTS + _TIME_PARTS}


async def _records(
    client: Any, prefix: bytes, node: dict[str, Any], report: index.CheckReport
) -> tuple[dict[bytes, RecordFields | None], dict[str, set[Any]]]:
    """Every record of the shard by key (None: it does not decode), and the index entries they give."""
    cut = len(prefix) + len(layout.RECORD)
    expected = _empty()
    records: dict[bytes, RecordFields | None] = {}
    record_keys = await _keys(client, layout.scan_pattern(prefix, None), node)
    for start in range(0, len(record_keys), BATCH):
        batch = record_keys[start : start + BATCH]
        found = zip(batch, await client.mget(batch), strict=True)
        for record_key, record in [(key, record) for key, record in found if record is not None]:  # not gone since
            member = record_key[cut:]
            report.records += 1
            records[member] = None
            try:
                fields = decode_fields(record, member.decode(errors="replace"))
            except StorageCorruptionError as exc:
                report.problems.append(str(exc))
                continue
            if fields.key != member:
                report.problems.append(f"record under {member!r} says its key is {fields.key!r}")
            records[member] = fields
            for name, entries in _entries(prefix, member, fields).items():
                expected[name] |= entries
    return records, expected


async def _stale(
    client: Any, prefix: bytes, records: dict[bytes, RecordFields | None], report: index.CheckReport
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
            if fields is not None and fields.expires is None:
                report.problems.append(f"heads entry {member!r} belongs to a record that does not expire")
            continue
        try:
            fields = decode_fields(head, member.decode(errors="replace"))
        except StorageCorruptionError as exc:
            report.problems.append(f"heads entry: {exc}")
            continue
        for name, entries in _entries(prefix, member, fields).items():
            stale[name] |= entries
    expiring = {member for member, fields in records.items() if fields is not None and fields.expires is not None}
    report.problems.extend(f"heads lacks entry {member!r}" for member in sorted(expiring - set(heads)))
    return stale


async def check_shard(client: Any, prefix: bytes, node: dict[str, Any], report: index.CheckReport) -> None:
    """Check the shard whose keys start with ``prefix`` (``node``: where its SCANs go),
    adding its counts and problems to ``report``."""
    records, expected = await _records(client, prefix, node, report)
    stale = await _stale(client, prefix, records, report)
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
        stray = sorted(entries - expected[name] - stale[name])
        report.problems.extend(f"{name} index entry {entry!r} points at no record that has it" for entry in stray)
        report.problems.extend(f"{name} index lacks entry {entry!r}" for entry in sorted(expected[name] - entries))


__all__ = ["check_shard", "scan_page"]
