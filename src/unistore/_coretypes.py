"""What both cores share: the record layout, its constants, and the value types
and errors they return, so that the native and pure twins give the same results.

Record layout, version 1 (little-endian)::

    offset size
     0     1    format version (1)
     1     1    flags (bit 0: has expiry)
     2     2    reserved, 0
     4     4    tag count
     8     8    surrogate id (unsigned), the item's id inside indexes
    16    16    UUID, the item's public id
    32     8    created_at, microseconds since the Unix epoch (signed)
    40     8    updated_at, microseconds
    48     8    expires_at, microseconds (0 when there is no expiry)
    56     4    key length
    60     4    content type length
    64     4    tags section length
    68          key, content type (UTF-8), then the tags section:
                per tag (sorted by key) u32 key length, key, u32 value length, value;
                then the msgpack payload up to the end of the record.

The fixed part sits at fixed offsets so that a reader (or a Redis Lua script)
can take the ids and times without parsing the rest.
"""

from __future__ import annotations

import os
import re
import struct
from typing import NamedTuple
from uuid import UUID, SafeUUID

from .errors import StorageCorruptionError

#: The record format's version (a record's first byte); the store layouts have their own.
RECORD_FORMAT_VERSION = 1
FLAG_EXPIRES = 0x01
#: The payload's msgpack extension types: a datetime is 8 bytes, big-endian signed
#: microseconds since the epoch in UTC; a UUID is its 16 bytes.
EXT_DATETIME = 1
EXT_UUID = 2
#: ``struct`` format of the fixed header; the twins must agree with it byte for byte.
HEADER_FORMAT = "<BBHIQ16sqqqIII"
HEADER_SIZE = 68


class Header(NamedTuple):
    """A record's fixed header (:data:`HEADER_FORMAT`), field by field."""

    version: int
    flags: int
    reserved: int
    tag_count: int
    sid: int
    uuid: bytes
    created: int
    updated: int
    expires: int
    key_length: int
    type_length: int
    tags_length: int


_HEADER = struct.Struct(HEADER_FORMAT)
_HEADER_CODES = re.findall(r"\d*[a-zA-Z]", HEADER_FORMAT[1:])
#: Where each field of :class:`Header` starts in a record, by name: for a reader that
#: takes one field without unpacking the whole header.
HEADER_OFFSETS = {
    name: struct.calcsize(HEADER_FORMAT[0] + "".join(_HEADER_CODES[:number]))
    for number, name in enumerate(Header._fields)
}


def read_header(record: bytes) -> Header:
    """The fixed header at the start of ``record`` (which holds at least :data:`HEADER_SIZE` bytes)."""
    return Header._make(_HEADER.unpack_from(record))


#: Redis refuses to recurse through more than this many ``*`` (util.c, "abusive patterns").
GLOB_MAX_NESTING = 1000


class RecordFields(NamedTuple):
    """Everything a record holds, as the record format stores it."""

    sid: int
    uuid: bytes
    created: int
    updated: int
    expires: int | None
    key: bytes
    content_type: bytes
    tags: list[tuple[bytes, bytes]]
    payload: bytes


def corrupt(why: str) -> StorageCorruptionError:
    """The error for a record that does not parse."""
    return StorageCorruptionError(f"corrupt record: {why}")


#: What the msgpack decoders (msgpack's and the native core's, alike) raise for a
#: payload that is not what we wrote; with StorageCorruptionError, every way a
#: record can fail to decode.
PAYLOAD_ERRORS = (ValueError, TypeError, OverflowError)


_new_object = object.__new__
_set_attribute = object.__setattr__


def new_uuid_bytes() -> bytes:
    """The 16 bytes of a new random (version 4) UUID, as ``uuid4().bytes`` without the UUID."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return bytes(raw)


def uuid_from_bytes(raw: bytes) -> UUID:
    """``UUID(bytes=raw)`` for 16 trusted bytes, at half the cost.

    ``UUID.__init__`` re-checks its arguments, which costs about as much as a
    whole LMDB read here; the record format guarantees 16 bytes, so set the
    fields the way ``UUID.__init__`` itself does.
    """
    value = _new_object(UUID)
    _set_attribute(value, "int", int.from_bytes(raw, "big"))
    _set_attribute(value, "is_safe", SafeUUID.unknown)
    return value


# -- glob patterns ----------------------------------------------------------------


class GlobPlan(NamedTuple):
    """A Redis glob, compiled for the pure twin: the pattern split at its stars.
    (The native twin parses it the same way in C, into the same sets:
    tests/core/test_core_twins.py holds the two equal.)

    Each element of a segment is the set of bytes it matches, as a 32-byte
    bitmap (bit ``b & 7`` of byte ``b >> 3``). A key matches when the first
    segment matches at its start, the last at its end (with no star, the one
    segment is the whole key) and each middle one after the previous, taken
    leftmost; that is exactly when Redis's backtracking would succeed.
    """

    segments: list[list[bytes]]
    #: More nested stars than Redis follows: no non-empty key matches.
    never: bool


#: Every byte: the bits of a glob element's set, as an int (bit ``b`` for byte ``b``).
ALL_BITS = (1 << 256) - 1
_ANY = ALL_BITS.to_bytes(32, "little")
#: The set of each single byte, made once: a literal costs a lookup, not a bitmap.
_SINGLE = tuple((1 << byte).to_bytes(32, "little") for byte in range(256))
#: The bytes a glob gives a meaning: everything up to the next one is a run of literals.
_SPECIAL = re.compile(rb"[*?\[\\]")


def _span(low: int, high: int) -> int:
    """The bits of the unsigned bytes ``low`` to ``high``, both included."""
    return ((1 << (high + 1)) - 1) ^ ((1 << low) - 1)


def _signed_range(first: int, last: int) -> int:
    """The bits of the bytes of a ``[x-y]`` range. Redis compares its bounds as C
    ``char``, which is signed on the platforms it ships for: b"\xff" sorts below
    b"a" inside a range."""
    low, high = sorted((first - 256 if first >= 0x80 else first, last - 256 if last >= 0x80 else last))
    if high < 0:
        return _span(low + 256, high + 256)
    if low < 0:
        return _span(low + 256, 255) | _span(0, high)
    return _span(low, high)


def _glob_class(pattern: bytes, i: int) -> tuple[int, int]:
    """The bits of the class that starts at ``pattern[i]`` (just after its '['), and
    where it ends (its ']', or the pattern's last byte when it is unterminated)."""
    size = len(pattern)
    negate = i < size and pattern[i] == 0x5E
    if negate:
        i += 1
    bits = 0
    while True:
        if i < size and pattern[i] == 0x5C and size - i >= 2:
            i += 1
            bits |= 1 << pattern[i]
        elif i < size and pattern[i] == 0x5D:
            break
        elif i >= size:  # unterminated: the rest of the pattern was the class
            i -= 1
            break
        elif size - i >= 3 and pattern[i + 1] == 0x2D:
            bits |= _signed_range(pattern[i], pattern[i + 2])
            i += 2
        else:
            bits |= 1 << pattern[i]
        i += 1
    return (bits ^ ALL_BITS if negate else bits), i


def plan_glob(pattern: bytes) -> GlobPlan:
    """Compile a Redis glob.

    Follows Redis 7's ``stringmatchlen`` (util.c) step for step, including its
    treatment of unterminated classes, ``[a-]`` ranges, trailing backslashes and
    its limit on nested stars. The work is linear in the pattern, a few steps a
    byte (issue 12: a 100 KB pattern took half a second): a run of literals is
    one ``extend`` of shared bitmaps, and a class is built as an int.
    """
    segments: list[list[bytes]] = [[]]
    bitmaps: dict[int, bytes] = {}  # one bytes object per distinct class, for this pattern only
    size = len(pattern)
    i = 0
    while i < size:
        char = pattern[i]
        if char == 0x2A:  # '*': runs of stars are one star
            while i + 1 < size and pattern[i + 1] == 0x2A:
                i += 1
            segments.append([])
        elif char == 0x3F:  # '?'
            segments[-1].append(_ANY)
        elif char == 0x5B:  # '['
            bits, i = _glob_class(pattern, i + 1)
            bitmap = bitmaps.get(bits)
            if bitmap is None:
                bitmap = bitmaps[bits] = bits.to_bytes(32, "little")
            segments[-1].append(bitmap)
        elif char == 0x5C and size - i >= 2:  # '\x': x literally
            i += 1
            segments[-1].append(_SINGLE[pattern[i]])
        else:  # literals, up to the next byte with a meaning (a final '\' is a literal)
            found = _SPECIAL.search(pattern, i + 1)
            end = size if found is None else found.start()
            segments[-1].extend(map(_SINGLE.__getitem__, pattern[i:end]))
            i = end
            continue
        i += 1
    inner_stars = len(segments) - 1 - (1 if len(segments) > 1 and not segments[-1] else 0)  # a final star is not
    return GlobPlan(segments, inner_stars > GLOB_MAX_NESTING)
