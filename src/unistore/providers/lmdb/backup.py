"""Backups of an LMDB store: a hot, consistent copy of the whole store (every
namespace) into a new directory, plain or compacted, while others read and write.

The copy is written under a private name of its own and linked as ``data.mdb`` only
once whole, so a backup that fails or is killed part-way never leaves a ``data.mdb``
to be taken for a backup.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import lmdb

from ...errors import StorageError, ValidationError
from .environment import SharedEnvironment, make_private_directory, real_path, translate
from .layout import DATABASES, Databases, open_databases


def backup(shared: SharedEnvironment, dest: str | os.PathLike[str], compact: bool) -> None:
    """Copy the whole store (every namespace) into the directory ``dest``: made (0700) if
    missing, refused if it holds a store (the store itself included); its ``data.mdb``
    is private (0600).

    Raises:
        ValidationError: ``dest`` already holds a store, or is not a usable path.
        StorageError: the copy could not be written.
    """
    target = real_path(dest)
    data = os.path.join(target, "data.mdb")
    taken = f"backup: {target!r} already holds a store (a data.mdb); choose a new directory"
    if os.path.lexists(data):  # a dangling link too: the copy would be written where it points
        raise ValidationError(taken)
    try:
        make_private_directory(target)
    except OSError as exc:
        raise StorageError(f"backup: cannot create the directory {target!r}: {exc}") from exc
    # Written under a name of its own, made here: private (LMDB's own copy makes it 0644
    # less the umask) and never through a link. Linked as data.mdb only once whole, so a
    # backup that fails or is killed part-way never leaves a data.mdb to be taken for a
    # backup; of backups into one directory at once, the first to finish is kept and the
    # others are refused.
    partial = os.path.join(target, f".data.mdb.partial-{os.getpid()}-{uuid.uuid4().hex}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(partial, flags, 0o600)
    except OSError as exc:  # the file could not be made
        raise StorageError(f"backup: cannot write into {target!r}: {exc}") from exc
    try:
        _copy(shared, partial, compact, fd)
        try:
            os.link(partial, data)
        except FileExistsError:  # another backup finished first
            raise ValidationError(taken) from None
    finally:
        os.close(fd)
        os.remove(partial)


def _copy(shared: SharedEnvironment, dest: str, compact: bool, fd: int) -> None:
    """Write a consistent copy of the whole store (every namespace) into the file
    ``dest``, which the caller has just made (empty, open as ``fd``), while others
    read and write: it is a ``data.mdb``. ``compact``: leave out free pages and
    renumber the rest, so the copy is as small as its live data (LMDB's own file
    never shrinks).

    Raises:
        StorageError: LMDB could not write the copy.
    """
    target = os.fsencode(dest)
    if compact:  # in a read transaction of ours: the gate then knows a copy is running
        shared.read(lambda txn, dbs: _compact_copy(txn, dbs, target, shared.env.info()["map_size"]))
        return
    shared.gate.enter()
    try:
        shared.env.copyfd(fd)  # LMDB takes its own read transaction
    except lmdb.Error as exc:
        raise translate(exc) from exc
    finally:
        shared.gate.leave()


def _compact_copy(txn: Any, dbs: Databases, target: bytes, map_size: int) -> None:
    """Write what ``txn`` sees of every database into the empty file ``target``, entry by
    entry in key order: the copy has no free pages. (LMDB's own compacting copy is not
    used: in py-lmdb 3.0.0 it dies of SIGSEGV once a posting list holds some 600 ids.)"""
    out = lmdb.open(target, map_size=map_size, max_dbs=len(DATABASES), mode=0o600, lock=False, subdir=False)
    try:  # (an lmdb.Error here is translated by the read transaction this runs in)
        copied = open_databases(out)  # the same databases, flags and format record
        with out.begin(write=True) as into:
            for (_, posting), source, dest in zip(DATABASES, dbs, copied, strict=True):
                with txn.cursor(db=source) as cursor:
                    # A posting list's ids go in as duplicates; other keys are unique, and
                    # the format record already written to meta is replaced by the same.
                    into.cursor(db=dest).putmulti(cursor.iternext(), dupdata=posting)
    finally:
        out.close()


__all__ = ["backup"]
