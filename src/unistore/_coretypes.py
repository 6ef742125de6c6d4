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

from typing import NamedTuple
from uuid import UUID, SafeUUID

from .errors import StorageCorruptionError

FORMAT_VERSION = 1
FLAG_EXPIRES = 0x01
#: The payload's msgpack extension types: a datetime is 8 bytes, big-endian signed
#: microseconds since the epoch in UTC; a UUID is its 16 bytes.
EXT_DATETIME = 1
EXT_UUID = 2
#: ``struct`` format of the fixed header; the twins must agree with it byte for byte.
HEADER_FORMAT = "<BBHIQ16sqqqIII"
HEADER_SIZE = 68

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


_new_object = object.__new__
_set_attribute = object.__setattr__


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
