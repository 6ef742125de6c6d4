"""The hot paths in plain Python: the record layout, header-only query matching
and Redis-style glob matching.

This is the reference twin of the native core (``ext/``); ``unistore.core``
decides which one runs. Everything here works on bytes and integers only, so
the two twins can be held against each other on random inputs.

The record layout is described in :mod:`unistore._coretypes`.

One module, as long as the parts it mirrors together (``ext/_core_*.pxi``): it is
read beside them, function for function, and kept in their order.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from ._coretypes import (
    ALL_BITS,
    EXT_DATETIME,
    EXT_UUID,
    FLAG_EXPIRES,
    GLOB_MAX_NESTING,
    HEADER_FORMAT,
    HEADER_SIZE,
    PAYLOAD_ERRORS,
    RECORD_FORMAT_VERSION,
    RecordFields,
    corrupt,
    plan_glob,
    read_header,
    uuid_from_bytes,
)
from .errors import StorageCorruptionError
from .model import StorageItem, StorageMetadata, StorageResult, micros_to_datetime

HEADER = struct.Struct(HEADER_FORMAT)
_U32 = struct.Struct("<I")


def pack_record(
    sid: int,
    uuid: bytes,
    created: int,
    updated: int,
    expires: int | None,
    key: bytes,
    content_type: bytes,
    tags: Sequence[tuple[bytes, bytes]],
    payload: bytes,
) -> bytes:
    """Lay out one record. ``tags`` must already be sorted by key."""
    tag_parts: list[bytes] = []
    for tag_key, tag_value in tags:
        tag_parts += (_U32.pack(len(tag_key)), tag_key, _U32.pack(len(tag_value)), tag_value)
    tag_section = b"".join(tag_parts)
    head = HEADER.pack(
        RECORD_FORMAT_VERSION,
        FLAG_EXPIRES if expires is not None else 0,
        0,
        len(tags),
        sid,
        uuid,
        created,
        updated,
        expires if expires is not None else 0,
        len(key),
        len(content_type),
        len(tag_section),
    )
    return b"".join((head, key, content_type, tag_section, payload))


class _Decoded:
    """A payload decoder that returns the data the payload was made from."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data

    def __call__(self, payload: bytes) -> Any:
        return self.data


def pack_new(
    key_bytes: list[bytes],
    payloads: list[bytes],
    data: list[Any],
    content_type: bytes,
    tags: Sequence[tuple[bytes, bytes]],
    expires: int | None,
    now: int,
    first_sid: int,
    uuids: bytes,
) -> tuple[list[bytes], list[StorageItem[Any]]]:
    """The records and items of new items saved together at ``now``, sharing one
    content type, tags and expiry: ids from ``first_sid`` up, each UUID (version 4)
    from 16 of the random bytes ``uuids``, each item's data as already decoded.
    Keys, content type and tags must be UTF-8 (they come checked).

    Raises:
        ValueError: the lists and ``uuids`` do not hold one of each per key.
    """
    count = len(key_bytes)
    if len(payloads) != count or len(data) != count or len(uuids) != 16 * count:
        raise ValueError("pack_new needs one payload, one value and 16 random bytes per key")
    records, items = [], []
    for index, key in enumerate(key_bytes):
        raw = bytearray(uuids[16 * index : 16 * index + 16])
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        record = pack_record(first_sid + index, bytes(raw), now, now, expires, key, content_type, tags, payloads[index])
        item = unpack_item(record, None, None, _Decoded(data[index]))
        records.append(record)
        items.append(item)
    return records, items  # type: ignore[return-value]  # items are None only when expiry or type is checked


def _check_header(record: bytes) -> tuple[Any, ...]:
    if len(record) < HEADER_SIZE:
        raise corrupt(f"{len(record)} bytes is shorter than the {HEADER_SIZE}-byte header")
    header = read_header(record)
    if header.version != RECORD_FORMAT_VERSION:
        raise corrupt(f"unknown format version {header.version}")
    if header.flags & ~FLAG_EXPIRES or header.reserved:
        raise corrupt(f"unknown flags {header.flags:#x}/{header.reserved:#x}")
    if HEADER_SIZE + header.key_length + header.type_length + header.tags_length > len(record):
        raise corrupt("section lengths run past the end")
    return header


def _parse_tags(record: bytes, start: int, end: int, count: int) -> list[tuple[bytes, bytes]]:
    tags = []
    pos = start
    try:
        for _ in range(count):
            (size,) = _U32.unpack_from(record, pos)
            tag_key = record[pos + 4 : pos + 4 + size]
            pos += 4 + size
            (size,) = _U32.unpack_from(record, pos)
            tags.append((tag_key, record[pos + 4 : pos + 4 + size]))
            pos += 4 + size
    except struct.error as exc:
        raise corrupt("tags section is truncated") from exc
    if pos != end:
        raise corrupt("tags section length does not match its tags")
    return tags


def unpack_record(record: bytes) -> RecordFields:
    """Split a record into its fields, checking every length.

    Raises:
        StorageCorruptionError: the bytes are not a version-1 record.
    """
    head = _check_header(record)
    key_end = HEADER_SIZE + head[9]
    type_end = key_end + head[10]
    tags_end = type_end + head[11]
    return RecordFields(
        sid=head[4],
        uuid=head[5],
        created=head[6],
        updated=head[7],
        expires=head[8] if head[1] & FLAG_EXPIRES else None,
        key=record[HEADER_SIZE:key_end],
        content_type=record[key_end:type_end],
        tags=_parse_tags(record, type_end, tags_end, head[3]),
        payload=record[tags_end:],
    )


def unpack_item(
    record: bytes, content_type: bytes | None, now: int | None, decode: Callable[[bytes], Any]
) -> StorageItem[Any] | None:
    """The item a record holds, its payload decoded by ``decode``; or None when
    the record has expired at ``now`` (None: do not check) or is not of
    ``content_type`` (None: any).

    Raises:
        StorageCorruptionError: the record does not parse.
        whatever ``decode`` raises for a payload it cannot decode.
    """
    head = _check_header(record)
    if now is not None and head[1] & FLAG_EXPIRES and head[8] <= now:
        return None
    key_end = HEADER_SIZE + head[9]
    type_end = key_end + head[10]
    tags_end = type_end + head[11]
    if content_type is not None and record[key_end:type_end] != content_type:
        return None
    try:
        created = micros_to_datetime(head[6])
        metadata = StorageMetadata(
            id=uuid_from_bytes(head[5]),
            key=record[HEADER_SIZE:key_end].decode(),
            content_type=record[key_end:type_end].decode(),
            created_at=created,
            updated_at=created if head[7] == head[6] else micros_to_datetime(head[7]),
            expires_at=micros_to_datetime(head[8]) if head[1] & FLAG_EXPIRES else None,
            tags={k.decode(): v.decode() for k, v in _parse_tags(record, type_end, tags_end, head[3])},
        )
    except (UnicodeDecodeError, OverflowError) as exc:
        raise corrupt(str(exc)) from exc
    return StorageItem(decode(record[tags_end:]), metadata)


# -- payload ----------------------------------------------------------------------

_I64 = struct.Struct(">q")


def _unpack_ext(code: int, data: bytes) -> object:
    if code == EXT_DATETIME and len(data) == 8:
        return micros_to_datetime(_I64.unpack(data)[0])
    if code == EXT_UUID and len(data) == 16:
        return uuid_from_bytes(data)
    raise ValueError(f"unknown extension type {code} of {len(data)} bytes")


def unpack_payload(payload: bytes) -> Any:
    """The data a payload holds.

    Raises:
        ValueError, TypeError or OverflowError: bytes the codec did not write.
    """
    return msgpack.unpackb(payload, ext_hook=_unpack_ext, strict_map_key=False, raw=False)


# -- sorted id lists --------------------------------------------------------------

_ID = struct.Struct(">Q")


def _ids(packed: bytes) -> list[int]:
    if len(packed) % 8:
        raise ValueError(f"an id list is whole 8-byte ids; got {len(packed)} bytes")
    ids = [value for (value,) in _ID.iter_unpack(packed)]
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise ValueError("an id list must be sorted ascending without repeats")
    return ids


def ids_from_entries(entries: bytes | memoryview, key_size: int) -> bytes:
    """The ids of a posting list read in bulk: ``entries`` is what LMDB's
    MDB_GET_MULTIPLE gives for one key, ``key_size`` bytes of key then an
    8-byte id, repeated; the result is the ids back to back.

    Raises:
        ValueError: the entries do not divide into whole (key, id) pairs.
    """
    stride = key_size + 8
    data = bytes(entries)
    if key_size < 0 or len(data) % stride:
        raise ValueError(f"entries of {stride} bytes do not divide {len(data)} bytes")
    return b"".join(data[i + key_size : i + stride] for i in range(0, len(data), stride))


def intersect_ids(first: bytes, second: bytes) -> bytes:
    """The ids in both lists; each list is sorted, unique, 8-byte big-endian ids back to back.

    Raises:
        ValueError: a list that is not whole, sorted, unique ids.
    """
    ones, others = _ids(first), _ids(second)
    return b"".join(_ID.pack(value) for value in sorted(set(ones).intersection(others)))


def union_ids(first: bytes, second: bytes) -> bytes:
    """The ids in either list, in the same form as :func:`intersect_ids`.

    Raises:
        ValueError: a list that is not whole, sorted, unique ids.
    """
    ones, others = _ids(first), _ids(second)
    return b"".join(_ID.pack(value) for value in sorted(set(ones).union(others)))


# -- glob ---------------------------------------------------------------------


def _element_regex(bitmap: bytes) -> bytes:
    """A regex matching one byte of the set a glob element's bitmap holds: a class
    with one range per run of bytes in the set (or out of it, negated, if fewer),
    so never longer than a few bytes per byte of the glob class that made it."""
    bits = int.from_bytes(bitmap, "little")
    if bits == ALL_BITS:
        return b"."
    if not bits:
        return b"(?!)"
    if not bits & (bits - 1):
        return re.escape(bytes([bits.bit_length() - 1]))
    inside, outside = _runs(bits), _runs(bits ^ ALL_BITS)
    return b"[" + inside + b"]" if len(inside) <= len(outside) else b"[^" + outside + b"]"


def _runs(bits: int) -> bytes:
    """The ranges of the runs of ones in ``bits``, as a regex class's body."""
    runs = []
    while bits:
        low = (bits & -bits).bit_length() - 1
        shifted = bits >> low
        length = (~shifted & (shifted + 1)).bit_length() - 1  # the run of ones from ``low``
        first = re.escape(bytes([low]))
        runs.append(first if length == 1 else first + b"-" + re.escape(bytes([low + length - 1])))
        bits ^= ((1 << length) - 1) << low
    return b"".join(runs)


def _regex_of(bitmap: bytes, regexes: dict[bytes, bytes]) -> bytes:
    regex = regexes.get(bitmap)
    if regex is None:
        regex = regexes[bitmap] = _element_regex(bitmap)
    return regex


class Glob:
    """A compiled Redis glob. ``Glob(p).match(s)`` equals Redis ``SCAN MATCH p`` on key ``s``.

    Each segment of the :class:`~unistore._coretypes.GlobPlan` becomes a regex.
    """

    __slots__ = ("_empty_pattern", "_never", "_segments", "_starred")

    def __init__(self, pattern: bytes) -> None:
        segments, self._never = plan_glob(pattern)
        self._empty_pattern = not pattern
        self._starred = len(segments) > 1
        regexes: dict[bytes, bytes] = {}  # each distinct element's regex is made once
        self._segments = [
            (len(parts), re.compile(b"".join(_regex_of(part, regexes) for part in parts), re.DOTALL))
            for parts in segments
        ]

    def match(self, subject: bytes) -> bool:
        """Whether ``subject`` matches the whole pattern."""
        if not subject:
            return self._empty_pattern  # Redis never reaches its loop for an empty key
        if self._never:
            return False
        segments = self._segments
        first_size, first = segments[0]
        if not self._starred:
            return first_size == len(subject) and first.match(subject) is not None
        last_size, last = segments[-1]
        end = len(subject) - last_size
        if end < first_size or first.match(subject) is None or last.match(subject, end) is None:
            return False
        pos = first_size
        for _, middle in segments[1:-1]:
            found = middle.search(subject, pos, end)
            if found is None:
                return False
            pos = found.end()
        return True


def glob_literal_prefix(pattern: bytes) -> bytes:
    r"""The bytes every key matching ``pattern`` starts with (its leading literals).

    >>> glob_literal_prefix(rb"user:\*1?")
    b'user:*1'
    """
    prefix = bytearray()
    size = len(pattern)
    i = 0
    while i < size and pattern[i] not in b"*?[":
        if pattern[i] == 0x5C and size - i >= 2:  # '\x' is x, as in the matcher
            i += 1
        prefix.append(pattern[i])
        i += 1
    return bytes(prefix)


def glob_match(pattern: bytes, subject: bytes) -> bool:
    """Whether ``subject`` matches the Redis glob ``pattern`` (both bytes)."""
    return Glob(pattern).match(subject)


# -- query matching ------------------------------------------------------------


class QueryMatcher:
    """A compiled query, checked against a record's header without its payload.

    Every argument is optional (``None`` or empty means "any"); times are
    microseconds and inclusive; ``tags`` are UTF-8 pairs that must all be present.
    """

    __slots__ = (
        "_content_type",
        "_created_after",
        "_created_before",
        "_expires_after",
        "_expires_before",
        "_glob",
        "_tags",
    )

    def __init__(
        self,
        pattern: bytes | None,
        content_type: bytes | None,
        tags: Sequence[tuple[bytes, bytes]],
        created_after: int | None,
        created_before: int | None,
        expires_after: int | None,
        expires_before: int | None,
    ) -> None:
        self._glob = Glob(pattern) if pattern is not None else None
        self._content_type = content_type
        self._tags = list(tags)
        self._created_after = created_after
        self._created_before = created_before
        self._expires_after = expires_after
        self._expires_before = expires_before

    def matches(self, record: bytes, now: int) -> bool:
        """Whether the record is live at ``now`` and meets every criterion.

        Raises:
            StorageCorruptionError: the record's header does not parse.
        """
        head = _check_header(record)
        has_expiry = head[1] & FLAG_EXPIRES
        expires = head[8]
        if has_expiry and expires <= now:
            return False
        created = head[6]
        if self._created_after is not None and created < self._created_after:
            return False
        if self._created_before is not None and created > self._created_before:
            return False
        if self._expires_after is not None and not (has_expiry and expires >= self._expires_after):
            return False
        if self._expires_before is not None and not (has_expiry and expires <= self._expires_before):
            return False
        key_end = HEADER_SIZE + head[9]
        type_end = key_end + head[10]
        if self._content_type is not None and record[key_end:type_end] != self._content_type:
            return False
        if self._glob is not None and not self._glob.match(record[HEADER_SIZE:key_end]):
            return False
        if self._tags:
            present = dict(_parse_tags(record, type_end, type_end + head[11], head[3]))
            for tag_key, tag_value in self._tags:
                if present.get(tag_key) != tag_value:
                    return False
        return True

    def matching(self, records: Sequence[bytes], now: int, most: int = -1) -> list[int]:
        """The indexes of the records that :meth:`matches`, in one call, stopping
        after ``most`` of them (-1: no limit); records after that are not read.

        Raises:
            StorageCorruptionError: a record's header does not parse;
                ``details["index"]`` says which.
        """
        found = []
        matches = self.matches
        for index, record in enumerate(records):
            try:
                hit = matches(record, now)
            except StorageCorruptionError as exc:
                exc.details["index"] = index
                raise
            if hit:
                found.append(index)
                if len(found) == most:
                    break
        return found

    def results(self, records: Sequence[bytes], now: int, most: int = -1) -> list[StorageResult[Any]]:
        """The items of the records that :meth:`matches`, decoded, as search
        results, stopping after ``most`` of them (-1: no limit).

        Raises:
            StorageCorruptionError: a record's header does not parse, or a matching
                record does not decode; ``details["index"]`` says which.
        """
        found = []
        matches = self.matches
        for index, record in enumerate(records):
            try:
                if not matches(record, now):
                    continue
                item = unpack_item(record, None, None, unpack_payload)
            except StorageCorruptionError as exc:
                exc.details["index"] = index
                raise
            except PAYLOAD_ERRORS as exc:
                error = corrupt(str(exc))
                error.details["index"] = index
                raise error from exc
            found.append(StorageResult(item))  # type: ignore[arg-type]  # None only when expiry or type is checked
            if len(found) == most:
                break
        return found


__all__ = [
    "FLAG_EXPIRES",
    "GLOB_MAX_NESTING",
    "HEADER_SIZE",
    "RECORD_FORMAT_VERSION",
    "Glob",
    "QueryMatcher",
    "RecordFields",
    "glob_literal_prefix",
    "glob_match",
    "ids_from_entries",
    "intersect_ids",
    "pack_new",
    "pack_record",
    "union_ids",
    "unpack_item",
    "unpack_payload",
    "unpack_record",
]
