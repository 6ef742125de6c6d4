"""The Redis layout: the keys one namespace shard owns, and how they are named.

Every key of a namespace shard starts with the same *shard prefix*,
``us{<namespace>:<shard>}:``, whose braces are a Redis Cluster hash tag: all of
a shard's keys live in one slot, so one Lua script may touch any of them (no
CROSSSLOT). The namespace is percent-encoded into the tag, keeping only
``A-Z a-z 0-9 _ . -``: the prefix then holds no glob character, no brace and
no colon of its own, so two namespaces never share a prefix and a SCAN MATCH
pattern can put the prefix in front of a user's pattern as a plain literal.

=====================  ===========================================  ===================================
key                    what it holds                                members / value
=====================  ===========================================  ===================================
prefix + ``r:`` + key  the item's record (the codec's bytes)        expires by PEXPIREAT with the item
prefix + ``t:`` + term  a tag's posting set (term: the index layer's)  item keys
prefix + ``c:`` + type  a content type's posting set                item keys
prefix + ``created``   every item by creation time                  item keys, score µs
prefix + ``updated``   every item by the time it was last saved     item keys, score µs
prefix + ``keys``      every item by key (all of score 0)           item keys, in byte order
prefix + ``expires``   the items that expire, by expiry time         item keys, score µs
prefix + ``heads``     the head (all but payload) of each record    item key -> head
                       that expires, so purging knows its entries
                       once Redis has dropped the record
prefix + ``shards``    the shard's marker: the namespace's count    written by the first write, and
                                                                    again by one after it was lost
prefix + ``done:`` +   a counted delete's answer, kept a minute     (see :mod:`.scripts`)
token
=====================  ===========================================  ===================================

A namespace's own marker, ``us{<namespace>}:shards`` (:func:`shards_key`), holds its
shard count too: a provider opened with another count is refused (at first use, and
by the first write to a shard whose marker is missing).

An item key goes into these names and sets as its raw UTF-8 bytes: Redis keys
and members are binary-safe and have no length limit that matters here (512 MB).
Scores are microseconds since the epoch, exact in a double until the year 2255.
"""

from __future__ import annotations

import binascii
import string
import urllib.parse

from ... import index

_KEEP = frozenset((string.ascii_letters + string.digits + "_.-").encode())
_ESCAPED = _KEEP | frozenset(b"%")

#: The parts after the shard prefix.
RECORD = b"r:"
TAG = b"t:"
CONTENT_TYPE = b"c:"
CREATED = b"created"
EXPIRES = b"expires"
UPDATED = b"updated"
KEY_ORDER = b"keys"
HEADS = b"heads"
MARKER = b"shards"
TOKEN = b"done:"
#: A key no shard ever holds: a probe names it beside the marker (see the connection's ``Pinned``).
PROBE = b"probe"

_POSTING_PART = {index.TAG: TAG, index.CONTENT_TYPE: CONTENT_TYPE}
_TIME_PART = {index.CREATED: CREATED, index.EXPIRES: EXPIRES, index.UPDATED: UPDATED}


def escape_namespace(name: bytes) -> bytes:
    """``name`` with every byte outside ``A-Z a-z 0-9 _ . -`` as ``%XX`` (upper-case hex)."""
    return b"".join(bytes((byte,)) if byte in _KEEP else b"%%%02X" % byte for byte in name)


#: Redis Cluster's hash slots.
SLOTS = 16384
#: A namespace's shards are spread evenly over at most this many equal parts of the slot space.
SPREAD = 64


def slot(tag: bytes) -> int:
    """The Redis Cluster slot of a key whose hash tag is ``tag`` (CRC16/XMODEM, as Redis)."""
    return binascii.crc_hqx(tag, 0) % SLOTS


def shard_prefix(namespace: bytes, shard: int, shards: int) -> bytes:
    """The prefix of every key of shard ``shard`` (of ``shards``) of ``namespace``; its hash
    tag pins them to one slot.

    The tag is ``<namespace>:<shard>``, and, when that hashes outside the shard's
    share of the slot space, ``:<n>`` after it for the least ``n`` that hashes inside:
    a cluster's masters own contiguous slot ranges, so shards spread evenly over the
    slots spread evenly over the masters, however few shards there are.
    """
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not one of {shards}")
    base = escape_namespace(namespace) + b":" + str(shard).encode()
    parts = min(shards, SPREAD)
    part = shard * parts // shards
    low, high = part * SLOTS // parts, (part + 1) * SLOTS // parts
    tag, salt = base, 0
    while not low <= slot(tag) < high:
        salt += 1
        tag = base + b":" + str(salt).encode()
    return b"us{" + tag + b"}:"


def shards_key(namespace: bytes) -> bytes:
    """The key that records how many shards a namespace is split over (in no shard's slot
    but its own: it is read alone)."""
    return b"us{" + escape_namespace(namespace) + b"}:shards"


def markers(namespace: bytes, shards: int) -> list[bytes]:
    """The keys that say a namespace exists and how many shards it has: its own marker and
    each shard's (what is left of a namespace once every item is deleted)."""
    return [shards_key(namespace), *(shard_prefix(namespace, n, shards) + MARKER for n in range(shards))]


def namespace_of(shards_key_name: bytes) -> str | None:
    """The namespace whose :func:`shards_key` is ``shards_key_name``, or None if it is not one."""
    if not (shards_key_name.startswith(b"us{") and shards_key_name.endswith(b"}:shards")):
        return None
    escaped = shards_key_name[3 : -len(b"}:shards")]
    if not escaped or not set(escaped) <= _ESCAPED:
        return None
    try:
        return urllib.parse.unquote_to_bytes(escaped).decode()
    except UnicodeDecodeError:
        return None


def key_slot(key: bytes) -> int:
    """The slot of ``key`` (of its hash tag, as Redis reads one; a shard prefix names its shard's slot)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return slot(key[start + 1 : end])
    return slot(key)


def shard_keys(prefix: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
    """The shard's marker, creation order, expiry order, heads hash, key order and updated
    order (the keys every write script declares first, in this order)."""
    return prefix + MARKER, prefix + CREATED, prefix + EXPIRES, prefix + HEADS, prefix + KEY_ORDER, prefix + UPDATED


def record_key(prefix: bytes, key: bytes) -> bytes:
    """The Redis key of an item's record."""
    return prefix + RECORD + key


def posting_key(prefix: bytes, kind: int, term: bytes) -> bytes:
    """The Redis key of the posting set of an index term (:mod:`unistore.index`)."""
    return prefix + _POSTING_PART[kind] + term


def time_key(prefix: bytes, kind: int) -> bytes:
    """The Redis key of a time order (:data:`unistore.index.CREATED`, ``EXPIRES`` or ``UPDATED``)."""
    return prefix + _TIME_PART[kind]


def scan_pattern(prefix: bytes, pattern: bytes | None) -> bytes:
    """The SCAN MATCH pattern of the records whose keys match the Redis glob ``pattern``
    (None: every record): the prefix is literal, so nothing outside it can match."""
    return prefix + RECORD + (pattern if pattern is not None else b"*")


__all__ = [
    "CONTENT_TYPE",
    "CREATED",
    "EXPIRES",
    "HEADS",
    "KEY_ORDER",
    "MARKER",
    "PROBE",
    "RECORD",
    "SLOTS",
    "TAG",
    "TOKEN",
    "UPDATED",
    "escape_namespace",
    "key_slot",
    "markers",
    "namespace_of",
    "posting_key",
    "record_key",
    "scan_pattern",
    "shard_keys",
    "shard_prefix",
    "shards_key",
    "slot",
    "time_key",
]
