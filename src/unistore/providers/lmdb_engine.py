"""The LMDB engine: a synchronous store with persistent secondary indexes.

:class:`LmdbEngine` is usable on its own by callers that are not async;
:class:`~unistore.providers.lmdb.LmdbStorageProvider` is its async face.

Layout. A store is one LMDB environment (a directory). Each namespace in it
owns seven named databases, ``<label>/<name>``, where the label is the
namespace itself, or a digest of it when it is long:

=========  ===========================================  ==========================
name       key                                          value
=========  ===========================================  ==========================
records    the item's key (UTF-8)                        the record (see core)
ids        surrogate id, 8 bytes big-endian              the item's key
tags       u32 length + tag key + tag value (or digest)  ids, dupsort + dupfixed
types      content type (or digest)                      ids, dupsort + dupfixed
created    created µs (8 bytes, order-preserving) + id   empty
expires    expires µs (8 bytes, order-preserving) + id   empty
meta       b"namespace", b"next_sid"                     the namespace, the id counter
=========  ===========================================  ==========================

An index key that would exceed LMDB's 511-byte key limit is replaced by
``b"\\xff" + sha256``; since every candidate is checked against the record's
real header, a digest can only cost a wasted candidate, never a wrong result.

Sharing. LMDB forbids opening one environment twice in a process, so every
engine on a directory shares one :class:`SharedEnvironment`, closed when the
last engine closes. Its write transactions are serialised by LMDB (across
processes too); the async provider funnels its durable writes through the
environment's one :class:`GroupCommitWriter` thread, which commits whole
batches in one transaction, each operation in a nested transaction of its own
so that one failing operation does not undo the others.

Map growth. When a write finds the map full, the transaction is aborted, the
map doubles and the batch is retried; when another process has grown it, this
one adopts the new size. Resizing needs every transaction of this process to
be finished, which :class:`ResizeGate` ensures; searches read in chunks of
short transactions, so none stays open while a caller holds a result.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import itertools
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID

import lmdb

from ..codec import (
    CompiledQuery,
    PreparedSave,
    compile_query,
    decode_fields,
    live_fields,
    load_item,
    prepare_save,
    select,
)
from ..core import RecordFields, glob_literal_prefix, ids_from_entries, intersect_ids
from ..errors import StorageCorruptionError, StorageError, ValidationError
from ..model import QuerySpec, StorageItem, StorageQuery, StorageResult, Tags, now_micros, validate_key, validate_name

R = TypeVar("R")

DURABILITY = {
    # LMDB's MDB_NOMETASYNC keeps atomicity and consistency but may lose the last
    # commit on power loss; MDB_NOSYNC leaves flushing to the OS. A process crash
    # loses nothing acknowledged in any mode: the OS still holds the pages.
    "sync": {"sync": True, "metasync": True},
    "async": {"sync": True, "metasync": False},
    "none": {"sync": False, "metasync": False},
}
#: The map is address space, not disk: a large start costs nothing until pages are used.
DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_NAMESPACES = 128
_DATABASES = ("records", "ids", "tags", "types", "created", "expires", "meta")
#: Candidates read per read transaction by a search.
SEARCH_CHUNK = 256
#: Expired items a write transaction removes in passing.
PURGE_IN_PASSING = 8
#: A query's other posting lists narrow the candidates when at most this many
#: times the smallest; longer ones are left to the header matcher.
INTERSECT_RATIO = 64
#: Most operations one group commit takes.
MAX_BATCH = 1024

_SID = struct.Struct(">Q")
_TIME_ID = struct.Struct(">QQ")
_U32 = struct.Struct(">I")
_TIME_BIAS = 1 << 63  # signed µs to unsigned, so byte order is time order
_DIGEST_MARK = b"\xff"  # no UTF-8 text and no u32 length prefix starts with it
_MAX_INDEX_KEY = 511
_LONG_LABEL = 200
_META_NAMESPACE = b"namespace"
_META_NEXT_SID = b"next_sid"
_get = lmdb.Transaction.get  # a C method: as a read action it costs no Python frame


def _index_key(raw: bytes) -> bytes:
    return raw if len(raw) <= _MAX_INDEX_KEY else _DIGEST_MARK + hashlib.sha256(raw).digest()


def tag_index_key(tag_key: bytes, tag_value: bytes) -> bytes:
    """The ``tags`` database key of one tag."""
    return _index_key(_U32.pack(len(tag_key)) + tag_key + tag_value)


def type_index_key(content_type: bytes) -> bytes:
    """The ``types`` database key of one content type."""
    return _index_key(content_type)


def time_index_key(micros: int, sid: int) -> bytes:
    """The ``created``/``expires`` database key of one item."""
    return _TIME_ID.pack(micros + _TIME_BIAS, sid)


def translate(exc: lmdb.Error) -> StorageError:
    """The unistore error for an LMDB error (the caller chains ``exc``)."""
    name = type(exc).__name__
    if isinstance(
        exc,
        (
            lmdb.CorruptedError,
            lmdb.PageNotFoundError,
            lmdb.InvalidError,
            lmdb.VersionMismatchError,
            lmdb.IncompatibleError,
        ),
    ):
        return StorageCorruptionError(f"LMDB store is damaged or not an LMDB store ({name}): {exc}")
    if isinstance(exc, lmdb.DbsFullError):
        return StorageError(f"too many namespaces open in one store ({name}); raise max_namespaces: {exc}")
    return StorageError(f"LMDB failed ({name}): {exc}")


def _chained(error: StorageError, cause: BaseException) -> StorageError:
    error.__cause__ = cause
    return error


class ResizeGate:
    """Lets transactions run freely, and a map resize run alone.

    ``enter``/``leave`` bracket every transaction of this process; ``exclusive``
    waits until none is running, holds new ones back and runs its action. It
    relies on the GIL making ``deque.append``/``deque.pop`` atomic and ordered:
    a transaction announces itself, then checks for a resize, while the resizer
    marks one, then checks for transactions, so neither can miss the
    other. Two lock-free deque operations cost far less than a lock pair on a
    read that takes microseconds.
    """

    def __init__(self) -> None:
        # A deque, not a list: a list reallocates as it goes from empty to one and back.
        active: collections.deque[None] = collections.deque()
        self._active = active
        self._resizing = False
        self._reopened = threading.Event()
        self._resizer = threading.Lock()
        # Bound C methods, so a transaction pays no Python frame for them.
        self._announce: Callable[[None], None] = active.append
        self.leave: Callable[[], object] = active.pop

    def enter(self) -> None:
        """Announce a transaction, waiting out a resize in progress."""
        self._announce(None)
        while self._resizing:
            self.leave()
            self._reopened.wait()
            self._announce(None)

    def exclusive(self, action: Callable[[], None]) -> None:
        with self._resizer:
            self._reopened.clear()
            self._resizing = True
            try:
                while self._active:
                    time.sleep(0.0002)
                action()
            finally:
                self._resizing = False
                self._reopened.set()


_Op = Callable[[Any], Any]  # runs inside a write transaction and returns the operation's result


class _OneFailed(Exception):
    """An op of a batch raised: rerun the batch with each op in a nested transaction."""


_Outcome = tuple[bool, Any]  # (True, result) or (False, exception)


class SharedEnvironment:
    """One open LMDB environment, shared by every engine on its directory in this process."""

    _registry: ClassVar[dict[str, SharedEnvironment]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str, durability: str, map_size: int, max_namespaces: int) -> None:
        self.path = path
        self.durability = durability
        self.gate = ResizeGate()
        self.users = 0
        self._databases: dict[bytes, Any] = {}
        self._writer: GroupCommitWriter | None = None
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the store directory {path!r}: {exc}") from exc
        try:
            self.env = lmdb.open(
                path,
                map_size=map_size,
                max_dbs=len(_DATABASES) * max_namespaces,
                mode=0o600,  # a store is private to its owner
                readahead=False,  # random reads of small records: readahead only fills the page cache
                max_spare_txns=4,
                **DURABILITY[durability],
            )
            self.env.reader_check()  # free reader slots left by crashed processes
        except lmdb.Error as exc:
            raise translate(exc) from exc

    @classmethod
    def acquire(cls, path: str, durability: str, map_size: int, max_namespaces: int) -> SharedEnvironment:
        """The environment of ``path``, opened if this process has not opened it yet."""
        with cls._registry_lock:
            shared = cls._registry.get(path)
            if shared is None:
                shared = cls._registry[path] = cls(path, durability, map_size, max_namespaces)
            elif shared.durability != durability:
                raise ValidationError(
                    f"durability={durability!r}: the store {path!r} is already open in this process "
                    f"with durability={shared.durability!r}, and one environment has one setting"
                )
            shared.users += 1
            return shared

    def release(self) -> None:
        """Drop one user; the last one stops the writer and closes the environment."""
        with self._registry_lock:
            self.users -= 1
            if self.users:
                return
            del self._registry[self.path]
        if self._writer is not None:
            self._writer.stop()
        self.env.close()

    def database(self, name: bytes, posting: bool) -> Any:
        """A named database handle, opened (and created) once per environment."""
        handle = self._databases.get(name)
        if handle is None:
            handle = self._databases[name] = self.run_locked(
                lambda: self.env.open_db(name, create=True, dupsort=posting, dupfixed=posting)
            )
        return handle

    def run_locked(self, action: Callable[[], R]) -> R:
        """Run one LMDB call inside the gate, translating its errors."""
        self.gate.enter()
        try:
            return action()
        except lmdb.Error as exc:
            raise translate(exc) from exc
        finally:
            self.gate.leave()

    def writer(self) -> GroupCommitWriter:
        """The environment's group-commit thread, started on first use."""
        if self._writer is None:  # only the first save takes the lock
            with self._registry_lock:
                self._writer = self._writer or GroupCommitWriter(self)
        return self._writer

    def _grow(self) -> None:
        def double() -> None:
            self.env.set_mapsize(self.env.info()["map_size"] * 2)

        self.gate.exclusive(double)

    def adopt_size(self) -> None:
        """Take the map size another process has grown the store to."""
        self.gate.exclusive(lambda: self.env.set_mapsize(0))

    def read(self, action: Callable[..., R], db: Any = None, key: bytes | None = None) -> R:
        """Run ``action(txn)`` in a read transaction whose default database is ``db``;
        with ``key``, ``action(txn, key)`` (a load passes ``txn.get`` itself: no closure)."""
        while True:
            self.gate.enter()
            try:
                with self.env.begin(db=db) as txn:  # no other keyword: each costs measurably here
                    return action(txn) if key is None else action(txn, key)
            except lmdb.MapResizedError:
                pass  # fall through to adopt the size once outside the gate
            except lmdb.Error as exc:
                raise translate(exc) from exc
            finally:
                self.gate.leave()
            self.adopt_size()

    def write_batch(self, ops: list[_Op]) -> list[_Outcome]:
        """Apply ``ops`` in one write transaction; one outcome per op.

        The ops first run straight in the transaction. If one raises, that
        attempt is rolled back and the batch runs again with each op in a
        nested transaction, so that the op is rolled back alone and the others
        land. (Nesting every time costs each op a nested transaction, for which
        LMDB allocates and zeroes tens of KB with the 896 databases that 128
        namespaces allow: measured, 40% of a save's time in the writer.) A full
        map grows the map and reruns the whole batch.
        """
        isolated = False
        while True:
            then: Callable[[], None] | None = None
            self.gate.enter()
            try:
                with self.env.begin(write=True) as txn:
                    return [self._apply(txn, op) for op in ops] if isolated else self._apply_all(txn, ops)
            except _OneFailed:
                isolated = True
            except lmdb.MapFullError:
                then = self._grow
            except lmdb.MapResizedError:
                then = self.adopt_size
            except lmdb.Error as exc:
                return [(False, _chained(translate(exc), exc))] * len(ops)
            finally:
                self.gate.leave()
            if then is not None:
                then()

    @staticmethod
    def _apply_all(txn: Any, ops: list[_Op]) -> list[_Outcome]:
        try:
            return [(True, op(txn)) for op in ops]
        except lmdb.MapFullError:
            raise
        except Exception as exc:
            raise _OneFailed from exc  # leaves the transaction: this attempt is rolled back

    def write_one(self, op: Callable[[Any], R]) -> R:
        """Run one write operation in its own transaction, in this thread; raise its error."""
        [(ok, outcome)] = self.write_batch([op])
        if not ok:
            raise outcome
        return outcome  # type: ignore[no-any-return]

    def _apply(self, txn: Any, op: _Op) -> _Outcome:
        child = self.env.begin(write=True, parent=txn)
        try:
            result = op(child)
        except lmdb.MapFullError:
            child.abort()
            raise
        except lmdb.Error as exc:
            child.abort()
            return False, _chained(translate(exc), exc)
        except Exception as exc:
            child.abort()
            return False, exc
        child.commit()
        return True, result


# What a submitter queues: (op, its loop, its future). A plain tuple: one is made per write.
_Pending = tuple[_Op, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _resolve_all(settled: list[tuple[asyncio.Future[Any], _Outcome]]) -> None:
    for future, (ok, value) in settled:
        if future.cancelled():  # the caller gave up waiting; the write itself stands
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class GroupCommitWriter:
    """One thread that commits queued write operations in batches.

    Each submitter awaits its own future; a batch costs one transaction and one
    fsync however many operations it holds, and one wake-up of each event loop
    that is waiting on it (per-operation wake-ups measured as a third of the
    cost of a batched save).
    """

    def __init__(self, shared: SharedEnvironment) -> None:
        self._shared = shared
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        # Set by the writer, under the lock, before it looks at the queue and sleeps;
        # a submitter appends, then wakes it only if it said so: one deque append per
        # operation while the writer is busy, instead of a lock and a notify.
        self._idle = False
        #: Transactions committed so far (each with one fsync in durable modes).
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name=f"unistore-writer:{shared.path}", daemon=True)
        self._thread.start()

    def submit(self, op: _Op, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        """Queue ``op``; ``future`` (of ``loop``) gets its result or error once it is committed."""
        self._queue.append((op, loop, future))
        if self._idle:
            with self._wake:
                self._wake.notify()

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                self._idle = True
                while not self._queue and not self._stopping:
                    self._wake.wait()
                self._idle = False
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
            try:
                outcomes = self._shared.write_batch([op for op, _, _ in batch])
            except Exception as exc:  # beyond any one op (growing the map failed): the batch fails
                outcomes = [(False, exc)] * len(batch)
            self.batches += 1
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], _Outcome]]] = {}
            for (_, loop, future), outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((future, outcome))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                    loop.call_soon_threadsafe(_resolve_all, settled)


@dataclass
class CheckReport:
    """What :meth:`LmdbEngine.check` found: entry counts, and one line per problem."""

    records: int = 0
    ids: int = 0
    tag_entries: int = 0
    type_entries: int = 0
    created_entries: int = 0
    expires_entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every index entry points at its record and every record is indexed."""
        return not self.problems


def _positive_int(options: dict[str, object], name: str, default: int) -> int:
    value = options.pop(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_options(options: dict[str, object]) -> tuple[str, int, int]:
    durability = options.pop("durability", "sync")
    if not isinstance(durability, str) or durability not in DURABILITY:
        raise ValidationError(f"durability must be one of {', '.join(DURABILITY)}, got {durability!r}")
    map_size = _positive_int(options, "map_size", DEFAULT_MAP_SIZE)
    max_namespaces = _positive_int(options, "max_namespaces", DEFAULT_MAX_NAMESPACES)
    if options:
        raise ValidationError(f"unknown LMDB option(s): {', '.join(sorted(options))}")
    return durability, map_size, max_namespaces


class LmdbEngine:
    """One namespace of an LMDB store, with a synchronous API.

    Args:
        path: the store directory; created (mode 0700) if missing.
        namespace: the keyspace inside the store.
        durability: ``"sync"`` (default; fsync per commit), ``"async"`` (may lose
            the last commits on power loss, never consistency) or ``"none"``
            (flushing left to the OS).
        map_size: the initial map size in bytes; it grows by itself.
        max_namespaces: how many namespaces the store can hold (fixed when a
            process first opens it).

    Raises:
        ValidationError: a bad option, or a durability that differs from the
            one this process already opened the store with.
        StorageError: the store cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str], *, namespace: str = "default", **options: Any) -> None:
        namespace_bytes = validate_name(namespace, "namespace")
        if not isinstance(path, (str, os.PathLike)):
            raise ValidationError(f"path must be a str or path, got {type(path).__name__}")
        self.path = os.path.realpath(os.fspath(path))
        self.namespace = namespace
        self.durability, self._map_size, self._max_namespaces = _check_options(dict(options))
        label = (
            namespace_bytes
            if len(namespace_bytes) <= _LONG_LABEL
            else b"#" + hashlib.sha256(namespace_bytes).hexdigest().encode()
        )
        self._names = {name: label + b"/" + name.encode() for name in _DATABASES}
        self._namespace_bytes = namespace_bytes
        self._shared: SharedEnvironment | None = None
        #: Records a search has checked, all searches together: what the planner saves shows here.
        self.candidates_examined = 0
        self._open()

    def __repr__(self) -> str:
        return f"LmdbEngine({self.path!r}, namespace={self.namespace!r}, durability={self.durability!r})"

    def _open(self) -> SharedEnvironment:
        shared = SharedEnvironment.acquire(self.path, self.durability, self._map_size, self._max_namespaces)
        try:
            dbs = {name: shared.database(self._names[name], name in ("tags", "types")) for name in _DATABASES}
            self._records, self._ids, self._tags = dbs["records"], dbs["ids"], dbs["tags"]
            self._types, self._created, self._expires, self._meta = (
                dbs["types"],
                dbs["created"],
                dbs["expires"],
                dbs["meta"],
            )
            shared.write_one(self._claim_namespace)
        except BaseException:
            shared.release()
            raise
        self._shared = shared
        return shared

    def _claim_namespace(self, txn: Any) -> None:
        stored = txn.get(_META_NAMESPACE, db=self._meta)
        if stored is None:
            txn.put(_META_NAMESPACE, self._namespace_bytes, db=self._meta)
        elif stored != self._namespace_bytes:  # a SHA-256 collision of two long namespaces, or damage
            raise StorageCorruptionError(f"namespace {self.namespace!r} shares its databases with another")

    @property
    def shared(self) -> SharedEnvironment:
        """The open environment (reopened if :meth:`close` was called)."""
        return self._shared if self._shared is not None else self._open()

    def close(self) -> None:
        """Release the environment; the engine reopens it on next use."""
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.release()

    # -- writes --------------------------------------------------------------

    def _next_sid(self, txn: Any) -> int:
        raw = txn.get(_META_NEXT_SID, db=self._meta)
        sid = 1 if raw is None else _SID.unpack(raw)[0]
        txn.put(_META_NEXT_SID, _SID.pack(sid + 1), db=self._meta)
        return sid

    def _index(self, txn: Any, fields: RecordFields) -> None:
        sid = _SID.pack(fields.sid)
        txn.put(sid, fields.key, db=self._ids)
        for tag_key, tag_value in fields.tags:
            txn.put(tag_index_key(tag_key, tag_value), sid, db=self._tags)
        txn.put(type_index_key(fields.content_type), sid, db=self._types)
        txn.put(time_index_key(fields.created, fields.sid), b"", db=self._created)
        if fields.expires is not None:
            txn.put(time_index_key(fields.expires, fields.sid), b"", db=self._expires)

    def _unindex(self, txn: Any, fields: RecordFields) -> None:
        sid = _SID.pack(fields.sid)
        txn.delete(sid, db=self._ids)
        for tag_key, tag_value in fields.tags:
            txn.delete(tag_index_key(tag_key, tag_value), sid, db=self._tags)
        txn.delete(type_index_key(fields.content_type), sid, db=self._types)
        txn.delete(time_index_key(fields.created, fields.sid), db=self._created)
        if fields.expires is not None:
            txn.delete(time_index_key(fields.expires, fields.sid), db=self._expires)

    def _remove(self, txn: Any, fields: RecordFields) -> None:
        txn.delete(fields.key, db=self._records)
        self._unindex(txn, fields)

    def _purge(self, txn: Any, now: int, most: int) -> int:
        """Remove up to ``most`` expired items (expiry order); returns how many."""
        removed = 0
        cursor = txn.cursor(db=self._expires)
        while removed < most and cursor.first():
            expires, sid = _TIME_ID.unpack(cursor.key())
            if expires - _TIME_BIAS > now:
                break
            key = txn.get(_SID.pack(sid), db=self._ids)
            raw = None if key is None else txn.get(key, db=self._records)
            try:
                fields = None if raw is None else decode_fields(raw, key)
            except StorageCorruptionError:
                fields = None  # a damaged record stays for `check` to report; it must not block writes
            if fields is None:  # an entry whose item is gone or unreadable: drop the entry
                cursor.delete()
                continue
            self._remove(txn, fields)
            removed += 1
        return removed

    def save_in(self, txn: Any, prepared: PreparedSave) -> StorageItem[Any]:
        """Save inside a write transaction: record and every index entry together."""
        now = now_micros()
        self._purge(txn, now, PURGE_IN_PASSING)
        raw = txn.get(prepared.key_bytes, db=self._records)
        old = None if raw is None else decode_fields(raw, prepared.key)
        if old is not None:
            self._unindex(txn, old)
        fields, record, item = prepared.build(old, now, functools.partial(self._next_sid, txn))
        txn.put(prepared.key_bytes, record, db=self._records)
        self._index(txn, fields)
        return item

    def delete_in(self, txn: Any, key: str, key_bytes: bytes, content_type: str | None) -> bool:
        """Delete inside a write transaction; True if a live item (of ``content_type``) was removed."""
        now = now_micros()
        self._purge(txn, now, PURGE_IN_PASSING)
        fields = live_fields(txn.get(key_bytes, db=self._records), key, content_type, now)
        if fields is None:
            return False
        self._remove(txn, fields)
        return True

    def write(self, op: Callable[[Any], R]) -> R:
        """Run one write operation in its own transaction, in this thread."""
        return self.shared.write_one(op)

    def save_op(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> Callable[[Any], StorageItem[Any]]:
        """Check and encode a save now; the returned op writes it inside a write transaction.

        Raises:
            ValidationError, SerializationError: bad arguments (nothing is queued).
        """
        return functools.partial(self.save_in, prepared=prepare_save(key, data, content_type, expires_at, tags))

    def delete_op(self, key: str, content_type: str | None = None) -> Callable[[Any], bool]:
        """Check a delete now; the returned op runs it inside a write transaction."""
        key_bytes = validate_key(key)
        if content_type is not None:
            validate_name(content_type, "content_type")
        return functools.partial(self.delete_in, key=key, key_bytes=key_bytes, content_type=content_type)

    def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        """Store ``data`` under ``key`` (see :meth:`StorageProvider.save`)."""
        return self.write(self.save_op(key, data, content_type, expires_at, tags))

    def delete(self, key: str, *, content_type: str | None = None) -> bool:
        """Delete the live item under ``key``; True if there was one."""
        return self.write(self.delete_op(key, content_type))

    def purge_expired(self) -> int:
        """Remove every expired item and its index entries; returns how many.

        Readers never see expired items anyway: this only reclaims space.
        """
        total = 0
        while True:
            removed = self.write(lambda txn: self._purge(txn, now_micros(), 1000))
            total += removed
            if removed < 1000:
                return total

    # -- reads -----------------------------------------------------------------

    def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        """The live item under ``key`` (of ``content_type``, if given).

        Raises:
            ItemNotFoundError: there is none.
        """
        key_bytes = validate_key(key)
        # The read path, kept free of Python frames it can do without: no property,
        # the transaction's own C method as the action.
        shared = self._shared if self._shared is not None else self._open()  # first: reopening renews handles
        return load_item(shared.read(_get, self._records, key_bytes), key, content_type, now_micros())

    def search_chunks(self, query: StorageQuery) -> Iterator[list[StorageResult[Any]]]:
        """The results of ``query`` in lists, each read in one short transaction.

        Raises:
            ValidationError: a bad query field (on the first ``next``).
        """
        compiled = compile_query(query)
        remaining = compiled.spec.limit
        if remaining == 0:
            return
        shared = self.shared  # first: reopening renews the database handles
        source, moving = self._plan(compiled.spec, shared)
        # An item re-saved with a later expiry moves ahead in the expiry index and
        # would be met twice by a search that walks it: remember what was yielded.
        seen: set[UUID] | None = set() if moving else None
        position: bytes | None = None
        while True:
            hits, position = shared.read(functools.partial(self._chunk, compiled, source, position, remaining))
            if seen is not None:
                hits = [hit for hit in hits if hit.item.metadata.id not in seen]
                seen.update(hit.item.metadata.id for hit in hits)
            if hits:
                yield hits
            if remaining is not None:
                remaining -= len(hits)
            if position is None or remaining == 0:
                return

    def search(self, query: StorageQuery) -> Iterator[StorageResult[Any]]:
        """The live items that meet every criterion of ``query``."""
        for chunk in self.search_chunks(query):
            yield from chunk

    def _chunk(
        self, compiled: CompiledQuery, source: _Source, position: bytes | None, limit: int | None, txn: Any
    ) -> tuple[list[StorageResult[Any]], bytes | None]:
        candidates, position = source(txn, position)
        self.candidates_examined += len(candidates)
        return list(select(compiled, candidates, now_micros(), limit)), position

    def _plan(self, spec: QuerySpec, shared: SharedEnvironment) -> tuple[_Source, bool]:
        """The cheapest access path: the smallest posting list of the query's tags
        and content type, else the literal prefix of its pattern, else a time
        range, else every record. The flag says whether the path is the expiry
        index, where a concurrent save can move an item ahead of the search."""
        postings = [(self._tags, tag_index_key(k, v)) for k, v in spec.tags]
        if spec.content_type is not None:
            postings.append((self._types, type_index_key(spec.content_type)))
        if postings:
            sizes = shared.read(lambda txn: [_posting_size(txn, db, key) for db, key in postings])
            order = sorted(range(len(postings)), key=sizes.__getitem__)
            smallest = max(sizes[order[0]], 1)
            # Lists much longer than the smallest cost more to read than their
            # candidates cost to check: the header matcher checks those instead.
            narrowing = [postings[i] for i in order[1:] if sizes[i] <= INTERSECT_RATIO * smallest]
            return _PostingSource(self, postings[order[0]], narrowing), False
        prefix = glob_literal_prefix(spec.pattern) if spec.pattern is not None else b""
        if not prefix and (spec.created_after is not None or spec.created_before is not None):
            return functools.partial(
                self._from_time_range, self._created, spec.created_after, spec.created_before
            ), False
        if not prefix and (spec.expires_after is not None or spec.expires_before is not None):
            return functools.partial(
                self._from_time_range, self._expires, spec.expires_after, spec.expires_before
            ), True
        return functools.partial(self._from_prefix, prefix), False

    def _by_sid(self, txn: Any, sids: list[bytes], deleted_ok: bool = False) -> list[tuple[bytes, bytes]]:
        """The (key, record) of each id. An id without a key was deleted after the ids
        were read (``deleted_ok``) or is a dangling index entry; a key without its
        record is always damage."""
        candidates = []
        for sid in sids:
            key = txn.get(sid, db=self._ids)
            if key is None and deleted_ok:
                continue
            record = None if key is None else txn.get(key, db=self._records)
            if record is None:
                raise StorageCorruptionError(
                    f"index of namespace {self.namespace!r} names item id {_SID.unpack(sid)[0]} "
                    "that has no record; run `unistore check`"
                )
            candidates.append((key, record))
        return candidates

    def _from_prefix(self, prefix: bytes, txn: Any, after: bytes | None) -> _Batch:
        cursor = txn.cursor(db=self._records)
        if not cursor.set_range(after if after is not None else prefix):
            return [], None
        # One C-level read of the chunk (plus one to resume after), then cut it in
        # bulk: keys are sorted, so those with the prefix are one leading run.
        wanted = SEARCH_CHUNK + (1 if after is None else 2)  # the resume point itself comes back first
        candidates: list[tuple[bytes, bytes]] = list(itertools.islice(cursor.iternext(), wanted))
        if after is not None and candidates[0][0] == after:
            del candidates[0]
        if prefix and candidates and not candidates[-1][0].startswith(prefix):
            ends = [key.startswith(prefix) for key, _ in candidates]
            return candidates[: ends.index(False)], None
        if len(candidates) > SEARCH_CHUNK:
            del candidates[SEARCH_CHUNK:]
            return candidates, candidates[-1][0]
        return candidates, None

    def _from_time_range(self, db: Any, low: int | None, high: int | None, txn: Any, after: bytes | None) -> _Batch:
        cursor = txn.cursor(db=db)
        start = after if after is not None else time_index_key(low if low is not None else -_TIME_BIAS, 0)
        sids: list[bytes] = []
        last = None
        if cursor.set_range(start):
            for entry in cursor.iternext(values=False):
                if entry == after:
                    continue
                if high is not None and _TIME_ID.unpack(entry)[0] - _TIME_BIAS > high:
                    break
                sids.append(entry[8:])
                last = entry
                if len(sids) == SEARCH_CHUNK:
                    return self._by_sid(txn, sids), last
        return self._by_sid(txn, sids), None

    # -- checking --------------------------------------------------------------------

    def check(self) -> CheckReport:
        """Verify that every index entry points at a live record of the right id
        and every record is fully indexed, in one read transaction."""
        return self.shared.read(self._check)

    def _check(self, txn: Any) -> CheckReport:
        report = CheckReport()
        problems = report.problems
        by_sid: dict[int, RecordFields] = {}
        for key, raw in txn.cursor(db=self._records).iternext():
            report.records += 1
            try:
                fields = decode_fields(raw, key)
            except StorageCorruptionError as exc:
                problems.append(str(exc))
                continue
            if fields.key != key:
                problems.append(f"record under {key!r} says its key is {fields.key!r}")
            by_sid[fields.sid] = fields
        expected: dict[str, set[tuple[bytes, bytes]]] = {name: set() for name in _INDEXES}
        for sid, fields in by_sid.items():
            packed = _SID.pack(sid)
            expected["ids"].add((packed, fields.key))
            expected["tags"].update((tag_index_key(k, v), packed) for k, v in fields.tags)
            expected["types"].add((type_index_key(fields.content_type), packed))
            expected["created"].add((time_index_key(fields.created, sid), b""))
            if fields.expires is not None:
                expected["expires"].add((time_index_key(fields.expires, sid), b""))
        for name, counter in _INDEXES.items():
            found = set(txn.cursor(db=getattr(self, f"_{name}")).iternext())
            setattr(report, counter, len(found))
            problems.extend(
                f"{name} index entry {e!r} points at no record that has it" for e in sorted(found - expected[name])
            )
            problems.extend(f"{name} index lacks entry {e!r}" for e in sorted(expected[name] - found))
        return report


#: Each index database and the CheckReport field that counts its entries.
_INDEXES = {
    "ids": "ids",
    "tags": "tag_entries",
    "types": "type_entries",
    "created": "created_entries",
    "expires": "expires_entries",
}
_Batch = tuple[list[tuple[bytes, bytes]], "bytes | None"]
_Source = Callable[[Any, "bytes | None"], _Batch]


def _read_ids(txn: Any, db: Any, key: bytes) -> bytes:
    """A whole posting list in one bulk read (MDB_GET_MULTIPLE), as ids back to back."""
    entries = txn.cursor(db=db).getmulti([key], dupdata=True, dupfixed_bytes=8, keyfixed=True)
    return ids_from_entries(entries, len(key))


class _PostingSource:
    """Candidates from the query's smallest posting list, read in bulk on the first
    chunk and ANDed there with the query's comparable posting lists; later chunks
    walk those ids. A search thus holds 8 bytes per id of its smallest list."""

    def __init__(self, engine: LmdbEngine, smallest: tuple[Any, bytes], narrowing: list[tuple[Any, bytes]]) -> None:
        self._engine = engine
        self._smallest = smallest
        self._narrowing = narrowing
        self._ids: bytes | None = None
        self._offset = 0

    def __call__(self, txn: Any, after: bytes | None) -> _Batch:
        if self._ids is None:
            ids = _read_ids(txn, *self._smallest)
            for db, key in self._narrowing:
                ids = intersect_ids(ids, _read_ids(txn, db, key))
            self._ids = ids
        chunk = self._ids[self._offset : self._offset + 8 * SEARCH_CHUNK]
        self._offset += len(chunk)
        sids = [chunk[i : i + 8] for i in range(0, len(chunk), 8)]
        # Items deleted since the first chunk read their ids are skipped, not damage.
        candidates = self._engine._by_sid(txn, sids, deleted_ok=self._offset > len(chunk))
        return candidates, sids[-1] if self._offset < len(self._ids) else None


def _posting_size(txn: Any, db: Any, key: bytes) -> int:
    cursor = txn.cursor(db=db)
    return int(cursor.count()) if cursor.set_key(key) else 0


__all__ = ["CheckReport", "GroupCommitWriter", "LmdbEngine", "ResizeGate", "SharedEnvironment"]
