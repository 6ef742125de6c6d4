"""The on-disk layout of an LMDB store, format version 3: database names and key encodings.

A store is one LMDB environment holding one fixed set of named databases,
shared by every namespace. Each namespace is numbered once (four bytes,
big-endian, from 1) in ``meta``, and every key it owns in the other databases
starts with that number, its *prefix*. A transaction's cost therefore does not
depend on how many namespaces exist (LMDB makes every transaction pay for every
open database: 7 per namespace in format 1 made a load 78% slower at 120
namespaces, and stopped at 128).

=========  =================================================  ==================================
database   key                                                value
=========  =================================================  ==================================
records    prefix + stored key                                the record (see ``_coretypes``)
ids        prefix + item id (8 bytes, big-endian)             the stored key
tags       prefix + tag term (u32 length, key, value)         item ids, dupsort + dupfixed
types      prefix + content type                              item ids, dupsort + dupfixed
created    prefix + created µs (8 bytes, order-kept) + id     empty
expires    prefix + expires µs (8 bytes, order-kept) + id     empty
updated    prefix + updated µs (8 bytes, order-kept) + id     empty
meta       ``format``, ``next_namespace``,                     u32, u32,
           ``ns=`` + name (or its digest), ``ns#`` + number   number + name, name
=========  =================================================  ==================================

The *stored key* is the item's key when it fits LMDB's 511-byte key limit
with the prefix (up to :data:`SHORT_KEY` bytes); a longer key is stored as its
first :data:`KEPT_KEY_BYTES` bytes plus the SHA-256 of the whole key, which is
:data:`LONG_KEY` bytes long and so never equals a short key. Keys keep their
leading bytes, so a prefix scan still finds them; the record holds the real
key, and every candidate is checked against it. Index keys too long for LMDB
are replaced by a marker byte and their SHA-256 in the same way: a digest can
only cost a wasted candidate, never a wrong result.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from ... import index
from ...core import RecordFields
from ...errors import StorageCorruptionError, StorageError, StoreNotFoundError

STORE_FORMAT_VERSION = 3
#: The format this release upgrades in place (:mod:`.upgrade`): format 3 adds ``updated``.
PREVIOUS_FORMAT_VERSION = 2

#: The named databases, in the order of :class:`Databases`, and whether each is a posting list.
DATABASES = (
    ("records", False),
    ("ids", False),
    ("tags", True),
    ("types", True),
    ("created", False),
    ("expires", False),
    ("updated", False),
    ("meta", False),
)

MAX_LMDB_KEY = 511  # LMDB's compile-time limit (mdb_env_get_maxkeysize)
PREFIX_SIZE = 4
#: The longest key stored as it is; longer ones get the digest form.
SHORT_KEY = MAX_LMDB_KEY - PREFIX_SIZE - 1
#: The length of a digest-form stored key: one more than any short key.
LONG_KEY = SHORT_KEY + 1
_DIGEST_SIZE = 32
#: The leading bytes of a long key that its stored form keeps.
KEPT_KEY_BYTES = LONG_KEY - _DIGEST_SIZE
#: Index keys beyond this (after the prefix) are replaced by a digest.
_MAX_INDEX_KEY = MAX_LMDB_KEY - PREFIX_SIZE
_DIGEST_MARK = b"\xff"  # no UTF-8 text and no u32 length prefix of a sane size starts with it
#: Namespace names longer than this are looked up by digest.
_LONG_NAME = 400

_U32 = struct.Struct(">I")
_ID = struct.Struct(">Q")
_TIME_ID = struct.Struct(">QQ")
TIME_BIAS = 1 << 63  # signed µs to unsigned, so byte order is time order

_META_FORMAT = b"format"
_META_NEXT_NAMESPACE = b"next_namespace"
_META_NAME = b"ns="
_META_NUMBER = b"ns#"


class Databases(NamedTuple):
    """The handles of one open store's databases (in :data:`DATABASES`' order)."""

    records: Any
    ids: Any
    tags: Any
    types: Any
    created: Any
    expires: Any
    updated: Any
    meta: Any


#: Each database's position in :class:`Databases`: how an index entry names its database.
DB_RECORDS, DB_IDS, DB_TAGS, DB_TYPES, DB_CREATED, DB_EXPIRES, DB_UPDATED, DB_META = range(len(DATABASES))


# -- key encodings ----------------------------------------------------------------


def _digest(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def stored_key(key: bytes) -> bytes:
    """The form ``key`` is stored under (without the namespace prefix)."""
    return key if len(key) <= SHORT_KEY else key[:KEPT_KEY_BYTES] + _digest(key)


def scan_prefix(literal: bytes) -> bytes:
    """What the stored key of every key starting with ``literal`` starts with."""
    return literal[:KEPT_KEY_BYTES]


def _index_key(prefix: bytes, raw: bytes) -> bytes:
    return prefix + (raw if len(raw) <= _MAX_INDEX_KEY else _DIGEST_MARK + _digest(raw))


def posting_key(prefix: bytes, term: bytes) -> bytes:
    """The ``tags``/``types`` database key of a posting list's term (see :mod:`unistore.index`)."""
    return _index_key(prefix, term)


def time_key(prefix: bytes, micros: int, sid: int) -> bytes:
    """The ``created``/``expires``/``updated`` database key of one item."""
    return prefix + _TIME_ID.pack(micros + TIME_BIAS, sid)


def time_of(entry: bytes) -> tuple[int, int]:
    """The (µs, item id) of a ``created``/``expires``/``updated`` key."""
    micros, sid = _TIME_ID.unpack_from(entry, PREFIX_SIZE)
    return micros - TIME_BIAS, sid


def id_key(prefix: bytes, sid: int) -> bytes:
    """The ``ids`` database key of one item."""
    return prefix + _ID.pack(sid)


#: Where each kind of index entry (:mod:`unistore.index`) lives: its database's number in :class:`Databases`.
_DATABASE_OF = {
    index.TAG: DB_TAGS,
    index.CONTENT_TYPE: DB_TYPES,
    index.CREATED: DB_CREATED,
    index.EXPIRES: DB_EXPIRES,
    index.UPDATED: DB_UPDATED,
}


def database_of(kind: int) -> int:
    """The number in :class:`Databases` of the database that holds index entries of ``kind``."""
    return _DATABASE_OF[kind]


def index_entries(prefix: bytes, fields: RecordFields) -> list[tuple[int, bytes, bytes]]:
    """Every index entry of a record, as (database number in :class:`Databases`, key, value):
    what a save writes, a delete removes and a check expects. The terms are the
    index layer's; this adds the ``ids`` entry and the encoding of each."""
    number = fields.sid
    sid = _ID.pack(number)
    entries = [(DB_IDS, prefix + sid, stored_key(fields.key))]
    entries += [(_DATABASE_OF[kind], _index_key(prefix, term), sid) for kind, term in index.postings(fields)]
    pack = _TIME_ID.pack
    entries += [
        (_DATABASE_OF[kind], prefix + pack(micros + TIME_BIAS, number), b"") for kind, micros in index.times(fields)
    ]
    return entries


def batch_entries(prefix: bytes, like: RecordFields, sids: range, keys: list[bytes]) -> Iterator[tuple[int, Any]]:
    """The index entries of new items saved together, which differ from the record
    ``like`` only in their ids (``sids``, ascending) and keys: per database, an
    iterable of its (key, value) pairs, in key order; the entries
    :func:`index_entries` gives each item."""
    ids = [_ID.pack(sid) for sid in sids]
    yield 1, zip([prefix + sid for sid in ids], map(stored_key, keys), strict=True)
    for kind, term in index.postings(like):
        yield _DATABASE_OF[kind], zip(itertools.repeat(posting_key(prefix, term)), ids)
    for kind, micros in index.times(like):
        yield _DATABASE_OF[kind], zip([time_key(prefix, micros, sid) for sid in sids], itertools.repeat(b""))


def next_id(txn: Any, ids: Any, prefix: bytes) -> int:
    """A new item id in the namespace of ``prefix``: one past its highest (inside a write transaction).

    Read from the ``ids`` database that the save writes anyway, rather than kept
    in ``meta``: a counter there would cost every save a put in a sixth database
    (measured: about 5 µs of a 40 µs save). The id of a namespace's newest item
    may come back after that item is deleted, which is harmless: every index
    entry of a deleted item goes with it, and searches check every candidate.
    """
    cursor = txn.cursor(db=ids)
    # The last id of this namespace is the entry just before the next namespace's first.
    found = cursor.set_range(_U32.pack(_U32.unpack(prefix)[0] + 1)) and cursor.prev()
    if not found:  # no later namespace has ids
        found = cursor.last()
    last = cursor.key() if found else b""
    return _ID.unpack_from(last, PREFIX_SIZE)[0] + 1 if last.startswith(prefix) else 1


# -- namespaces -------------------------------------------------------------------


def _name_key(name: bytes) -> bytes:
    return _META_NAME + (name if len(name) <= _LONG_NAME else _DIGEST_MARK + _digest(name))


def find_namespace(txn: Any, meta: Any, name: bytes) -> bytes | None:
    """The prefix of namespace ``name``, or None if the store has none by that name.

    Raises:
        StorageCorruptionError: the entry names another namespace (damage).
    """
    entry = txn.get(_name_key(name), db=meta)
    if entry is None:
        return None
    if entry[PREFIX_SIZE:] != name:
        raise StorageCorruptionError(f"the namespace entry of {name.decode(errors='replace')!r} names another")
    return bytes(entry[:PREFIX_SIZE])


def claim_namespace(txn: Any, meta: Any, name: bytes) -> bytes:
    """The prefix of namespace ``name``, numbered now if it is new (inside a write transaction)."""
    found = find_namespace(txn, meta, name)
    if found is not None:
        return found
    raw = txn.get(_META_NEXT_NAMESPACE, db=meta)
    number = 1 if raw is None else _U32.unpack(raw)[0]
    if number > 0xFFFFFFFF - 1:
        raise StorageError("the store has numbered 2**32 - 1 namespaces, its most")
    prefix = _U32.pack(number)
    txn.put(_META_NEXT_NAMESPACE, _U32.pack(number + 1), db=meta)
    txn.put(_name_key(name), prefix + name, db=meta)
    txn.put(_META_NUMBER + prefix, name, db=meta)
    return prefix


def forget_namespace(txn: Any, meta: Any, name: bytes, prefix: bytes) -> None:
    """Remove the entries that name namespace ``name`` (numbered ``prefix``; inside a write
    transaction). Its number is never given again: a namespace made anew gets the next one."""
    txn.delete(_name_key(name), db=meta)
    txn.delete(_META_NUMBER + prefix, db=meta)


def namespaces(txn: Any, meta: Any) -> list[tuple[str, bytes]]:
    """Every namespace of the store, as (name, prefix), in the order they were numbered."""
    cursor = txn.cursor(db=meta)
    if not cursor.set_range(_META_NUMBER):  # a store no namespace was ever opened in
        return []
    numbered = itertools.takewhile(lambda entry: bytes(entry[0]).startswith(_META_NUMBER), cursor.iternext())
    return [(bytes(name).decode(errors="replace"), bytes(entry[len(_META_NUMBER) :])) for entry, name in numbered]


# -- opening ----------------------------------------------------------------------


def _unknown_store(names: set[bytes]) -> StorageError:
    if any(name.endswith(b"/records") for name in names):
        return StorageError(
            "the store is in unistore's LMDB format version 1, and this version reads format "
            f"{STORE_FORMAT_VERSION} only; copy its items into a new store with the unistore release that wrote it"
        )
    return StorageError("the LMDB environment holds data that is not a unistore store")


def open_databases(env: Any, create: bool = True, upgrade: Callable[[Any, Databases], None] | None = None) -> Databases:
    """Open (creating them in a new store, if ``create``) the store's databases.

    In a write transaction, even for a store that exists: py-lmdb ends a read
    transaction by resetting it, which closes the handles opened in it. (The
    caller's thread waits for LMDB's write lock without the GIL.) A store of
    :data:`PREVIOUS_FORMAT_VERSION` is brought to this format by ``upgrade``
    (:func:`.upgrade.upgrade`), given the open databases.

    Raises:
        StoreNotFoundError: not ``create``, and the environment holds no store yet.
        StorageError: the store is of another format version (of the previous one,
            without ``upgrade``), or not a unistore store.
    """
    with env.begin(write=True) as txn:
        found = {bytes(name) for name in txn.cursor().iternext(values=False)}
        if not found and not create:
            raise StoreNotFoundError("the LMDB environment holds no unistore store yet")
        if found and b"meta" not in found:
            raise _unknown_store(found)
        meta = env.open_db(b"meta", txn=txn)
        version = txn.get(_META_FORMAT, db=meta)
        if version is None and not found:
            version = _U32.pack(STORE_FORMAT_VERSION)
            txn.put(_META_FORMAT, version, db=meta)
        number = _U32.unpack(version)[0] if version is not None and len(version) == 4 else None
        if number == PREVIOUS_FORMAT_VERSION and upgrade is None:
            raise StorageError(
                f"the store is in format version {number}, which this version of unistore upgrades in place "
                f"to format {STORE_FORMAT_VERSION} when it opens the store for writing: open it once with "
                "LmdbStorageProvider, or run `unistore --store lmdb:///PATH upgrade`"
            )
        if number not in (STORE_FORMAT_VERSION, PREVIOUS_FORMAT_VERSION):
            raise StorageError(
                f"the store is in format version {number}; this version of unistore reads {STORE_FORMAT_VERSION}"
            )
        databases = Databases(
            *(env.open_db(name.encode(), txn=txn, dupsort=posting, dupfixed=posting) for name, posting in DATABASES)
        )
    if number == PREVIOUS_FORMAT_VERSION:
        assert upgrade is not None
        upgrade(env, databases)
    return databases


Opener = Callable[[Any], Databases]

__all__ = [
    "DATABASES",
    "DB_CREATED",
    "DB_EXPIRES",
    "DB_IDS",
    "DB_META",
    "DB_RECORDS",
    "DB_TAGS",
    "DB_TYPES",
    "DB_UPDATED",
    "KEPT_KEY_BYTES",
    "LONG_KEY",
    "PREFIX_SIZE",
    "PREVIOUS_FORMAT_VERSION",
    "SHORT_KEY",
    "STORE_FORMAT_VERSION",
    "TIME_BIAS",
    "Databases",
    "batch_entries",
    "claim_namespace",
    "database_of",
    "find_namespace",
    "forget_namespace",
    "id_key",
    "index_entries",
    "namespaces",
    "next_id",
    "open_databases",
    "posting_key",
    "scan_prefix",
    "stored_key",
    "time_key",
    "time_of",
]
