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
(such a record would be behind the upgrade's position, without an ``updated`` entry):
``updated`` must then hold one entry per ``created`` entry (LMDB counts both for free);
when it does not, the last step rebuilds ``updated`` whole.
"""

from __future__ import annotations

import logging
import struct
import time
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


def _index(txn: Any, dbs: Databases, after: bytes | None, most: float) -> tuple[int, bytes | None]:
    """Write the ``updated`` entry of up to ``most`` records past ``after`` (None: from the
    first); returns how many were done and the last one's key (None: no record was left).
    A record too short to hold a header is left for ``check --repair``."""
    cursor = txn.cursor(db=dbs.records)
    found = cursor.set_range(after) if after is not None else cursor.first()
    if found and after is not None and cursor.key() == after:
        found = cursor.next()
    done, last = 0, None
    while found and done < most:
        key, record = cursor.item()
        if len(record) >= HEADER_SIZE:
            head = read_header(record)
            txn.put(time_key(bytes(key[:PREFIX_SIZE]), head.updated, head.sid), b"", db=dbs.updated)
        done, last = done + 1, bytes(key)
        found = cursor.next()
    return done, last


def upgrade(env: Any, dbs: Databases) -> None:
    """Bring the store of ``env`` (format 2, its databases ``dbs`` opened, ``updated``
    among them) to format 3, going on from where an interrupted upgrade stopped."""
    started = time.monotonic()
    path, total = env.path(), 0
    while True:
        with env.begin(write=True) as txn:
            if _U32.unpack(txn.get(_META_FORMAT, db=dbs.meta))[0] == STORE_FORMAT_VERSION:
                return  # another process finished it
            after = txn.get(_META_UPGRADE, db=dbs.meta)
            if after is None and total == 0:
                _logger.warning(
                    "upgrading the store %r from format 2 to format %d in place", path, STORE_FORMAT_VERSION
                )
            elif total == 0:
                _logger.warning("going on with the upgrade of the store %r to format %d", path, STORE_FORMAT_VERSION)
            done, last = _index(txn, dbs, None if after is None else bytes(after), STEP)
            total += done
            if last is not None and done == STEP:
                txn.put(_META_UPGRADE, last, db=dbs.meta)
                continue
            if txn.stat(dbs.updated)["entries"] != txn.stat(dbs.created)["entries"]:
                _logger.warning("the store %r was written during its upgrade: indexing every record again", path)
                txn.drop(dbs.updated, delete=False)
                _index(txn, dbs, None, float("inf"))
            txn.delete(_META_UPGRADE, db=dbs.meta)
            txn.put(_META_FORMAT, _U32.pack(STORE_FORMAT_VERSION), db=dbs.meta)
        _logger.warning(
            "upgraded the store %r to format %d: %d records indexed by update time in %.1f s",
            path,
            STORE_FORMAT_VERSION,
            total,
            time.monotonic() - started,
        )
        return


__all__ = ["STEP", "upgrade"]
