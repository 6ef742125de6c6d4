"""The in-place upgrade of a store of format version 2 to version 3 (:mod:`.layout`).

Format 3 adds one database, ``updated``: every item by the time it was last saved, which
an ordered search by ``updated_at`` walks. Its entries are made from the records'
headers, which have always held that time, so the upgrade reads nothing else.

It runs in steps of :data:`STEP` records, each one write transaction that also records
how far the upgrade has come (``meta``'s ``upgrade`` entry: the last record done). The
store says format 2 until the last step, which writes format 3 in the same transaction
that finishes the index: a store is either upgraded whole or still of the old format.
A crash between steps (a kill, a full disk) loses nothing: the next open for writing
goes on from the last step committed. Another process opening the store meanwhile
waits for LMDB's write lock and goes on with the upgrade itself if it is not done.

A last check guards against a writer of the previous release saving between two steps
(a record behind the upgrade's position, saved again without its ``updated`` entry): the
last step reads every record's header once more and looks its entry up, and ``updated``
must hold as many entries as ``created``; when either fails, it rebuilds ``updated`` whole.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Iterator
from typing import Any

from ..._coretypes import HEADER_SIZE, read_header
from .layout import PREFIX_SIZE, STORE_FORMAT_VERSION, Databases, time_key

_logger = logging.getLogger(__name__)

#: Records upgraded per write transaction.
STEP = 20_000
#: ``meta``'s entry of an upgrade under way: the last record (its ``records`` key) done.
_META_UPGRADE = b"upgrade"
_META_FORMAT = b"format"
_U32 = struct.Struct(">I")


def _records(txn: Any, dbs: Databases, after: bytes | None) -> Iterator[tuple[bytes, bytes | None]]:
    """Every record past ``after`` (None: from the first), as its key and its ``updated``
    entry (None: a record too short to hold a header, left for ``check --repair``)."""
    cursor = txn.cursor(db=dbs.records)
    found = cursor.set_range(after) if after is not None else cursor.first()
    if found and after is not None and cursor.key() == after:
        found = cursor.next()
    while found:
        key, record = cursor.item()
        entry = None
        if len(record) >= HEADER_SIZE:
            head = read_header(record)
            entry = time_key(bytes(key[:PREFIX_SIZE]), head.updated, head.sid)
        yield bytes(key), entry
        found = cursor.next()


def _index(txn: Any, dbs: Databases, after: bytes | None, most: float) -> tuple[int, bytes | None]:
    """Write the ``updated`` entry of up to ``most`` records past ``after`` (None: from the
    first); returns how many were done and the last one's key (None: no record was left)."""
    done, last = 0, None
    for key, entry in _records(txn, dbs, after):
        if entry is not None:
            txn.put(entry, b"", db=dbs.updated)
        done, last = done + 1, key
        if done >= most:
            break
    return done, last


def _whole(txn: Any, dbs: Databases) -> bool:
    """Whether ``updated`` holds the entry of every record, and nothing else (as many
    entries as ``created``, which holds one per item)."""
    if txn.stat(dbs.updated)["entries"] != txn.stat(dbs.created)["entries"]:
        return False
    return all(entry is None or txn.get(entry, db=dbs.updated) is not None for _, entry in _records(txn, dbs, None))


def upgrade(env: Any, dbs: Databases) -> None:
    """Bring the store of ``env`` (format 2, its databases ``dbs`` opened, ``updated``
    among them) to format 3, going on from where an interrupted upgrade stopped."""
    started = time.monotonic()
    path, steps = env.path(), 0
    while True:
        with env.begin(write=True) as txn:
            if _U32.unpack(txn.get(_META_FORMAT, db=dbs.meta))[0] == STORE_FORMAT_VERSION:
                return  # another process finished it
            after = txn.get(_META_UPGRADE, db=dbs.meta)
            if steps == 0:
                going_on = "going on with" if after is not None else "starting"
                _logger.warning(
                    "%s the in-place upgrade of the store %r from format 2 to format %d",
                    going_on,
                    path,
                    STORE_FORMAT_VERSION,
                )
            done, last = _index(txn, dbs, None if after is None else bytes(after), STEP)
            steps += 1
            if last is not None and done == STEP:
                txn.put(_META_UPGRADE, last, db=dbs.meta)
                continue
            if not _whole(txn, dbs):
                _logger.warning("the store %r was written during its upgrade: indexing every record again", path)
                txn.drop(dbs.updated, delete=False)
                _index(txn, dbs, None, math.inf)
            txn.delete(_META_UPGRADE, db=dbs.meta)
            txn.put(_META_FORMAT, _U32.pack(STORE_FORMAT_VERSION), db=dbs.meta)
            indexed = txn.stat(dbs.updated)["entries"]
        _logger.warning(
            "upgraded the store %r to format %d: %d records indexed by update time (this open: %.1f s)",
            path,
            STORE_FORMAT_VERSION,
            indexed,
            time.monotonic() - started,
        )
        return


__all__ = ["STEP", "upgrade"]
