"""The LMDB environment of a store in this process: opened once, shared, and kept usable.

LMDB forbids opening one environment twice in a process, so every engine on a
directory shares one :class:`SharedEnvironment`, opened and closed under one
registry lock (closed when its last user leaves). It owns the environment and
its database handles; engines never hold either, they run actions inside the
environment's :class:`EnvironmentGate`, which is what lets the environment be
replaced under them:

- **Map growth.** A write that finds the map full grows it (doubling) once no
  transaction of this process is running; one that finds the map grown by
  another process adopts the new size. Transactions arriving meanwhile wait;
  running ones finish first (searches read in short chunks, so none stays
  open while a caller holds a result). A growth that fails (no address space
  left) fails its writes with a :class:`~unistore.errors.StorageError` and the
  environment is reopened by the next operation, so the store works again
  once memory is back.
- **Fork.** Servers and pools fork (gunicorn ``--preload``, multiprocessing,
  celery prefork), and LMDB handles must not cross a fork. Just before a fork
  (``os.register_at_fork``) the environment is closed once no transaction
  runs; parent and child each reopen it on their next operation, the child
  with its own writer thread. The child thus never touches the parent's
  handles, and py-lmdb's guard against a second open in one process (which a
  child would otherwise inherit) is released. A writer thread also records
  its process id, so a child never submits to a thread it does not have.
- **Reader slots.** LMDB gives every concurrent read transaction a slot in the
  lock file (512 by default here, ``max_readers``). When they run out, slots
  of dead processes are reclaimed and the read retried, for a while, before a
  :class:`~unistore.errors.StorageError` says to raise ``max_readers``.

Every LMDB error leaves as a :class:`~unistore.errors.StorageError` with the
original chained. No transaction is ever begun while holding the GIL-bound
registry lock against the writer thread: databases are opened inside explicit
transactions (py-lmdb's ``open_db`` without one takes LMDB's write lock while
holding the GIL, which deadlocks against a writer that holds the write lock
and waits for the GIL).

One module, longer than most, because it is one idea read top to bottom: one
store's environment in this process, from its options to opening, growth, reader
slots, the fork hooks and closing (its gate and writer have rooms of their own).
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import lmdb

from ...errors import StorageCorruptionError, StorageError, StoreNotFoundError, ValidationError
from .gate import EnvironmentGate
from .layout import DATABASES, Databases, Opener
from .writer import GroupCommitWriter, Op, Outcome

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
MAX_MAP_SIZE = sys.maxsize  # py-lmdb's own limit (a size_t that Python can hold)
DEFAULT_MAX_READERS = 512
MAX_READERS = 1 << 20  # 64 MiB of lock file: past any real need
#: How long an open or a read waits for LMDB to have room (a free reader slot; at open, a map
#: another process has stopped growing) before it fails.
READER_SLOT_WAIT = 5.0


def real_path(path: str | os.PathLike[str]) -> str:
    """The directory ``path`` names, resolved (symbolic links followed).

    Raises:
        ValidationError: ``path`` is not a str or path, is empty, or holds a NUL byte.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValidationError(f"path must be a str or path, got {type(path).__name__}")
    try:
        given = os.fspath(path)
    except TypeError as exc:  # a path-like object that gives neither str nor bytes
        raise ValidationError(f"path {path!r} is not usable: {exc}") from exc
    if isinstance(given, str) and "\x00" in given:  # (refused in our words: the OS's vary by Python version)
        raise ValidationError(f"path {path!r} is not usable: it holds a NUL byte")
    try:
        real = os.path.realpath(given)
        os.fsencode(real)
    except (TypeError, ValueError) as exc:  # a bytes path, a surrogate the file system cannot encode
        raise ValidationError(f"path {path!r} is not usable: {exc}") from exc
    if not isinstance(real, str):
        raise ValidationError(f"path must be a str or path, got {path!r}")
    if not given:
        raise ValidationError("path must not be empty (write '.' for the current directory)")
    return real


def _int_option(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"{name} must be an int from {low} to {high}, got {value!r}")
    return value


@dataclass(frozen=True)
class StoreOptions:
    """Where a store is and how it is opened, every value checked (:meth:`checked`)."""

    path: str  # resolved
    durability: str
    map_size: int
    max_readers: int

    @classmethod
    def checked(
        cls,
        path: str | os.PathLike[str],
        durability: str = "sync",
        map_size: int = DEFAULT_MAP_SIZE,
        max_readers: int = DEFAULT_MAX_READERS,
    ) -> StoreOptions:
        """The options, checked.

        Raises:
            ValidationError: a bad path, durability, map size or reader count.
        """
        real = real_path(path)
        if not isinstance(durability, str) or durability not in DURABILITY:
            raise ValidationError(f"durability must be one of {', '.join(DURABILITY)}, got {durability!r}")
        return cls(
            real,
            durability,
            _int_option("map_size", map_size, 1, MAX_MAP_SIZE),
            _int_option("max_readers", max_readers, 1, MAX_READERS),
        )


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
    if isinstance(exc, lmdb.ReadersFullError):
        return StorageError(f"every LMDB reader slot is in use ({name}); raise max_readers: {exc}")
    return StorageError(f"LMDB failed ({name}): {exc}")


def _still_waiting(since: float, exc: lmdb.Error) -> float:
    """When a wait for LMDB to have room began (``since``, 0.0 on the first try).

    Raises:
        StorageError: the wait has lasted :data:`READER_SLOT_WAIT` seconds.
    """
    now = time.monotonic()
    if since and now - since > READER_SLOT_WAIT:
        raise translate(exc) from exc
    return since or now


def _chained(error: StorageError, cause: BaseException) -> StorageError:
    error.__cause__ = cause
    return error


class SharedEnvironment:
    """One open LMDB environment, shared by every engine on its directory in this process."""

    _registry: ClassVar[dict[str, SharedEnvironment]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, path: str, durability: str, map_size: int, max_readers: int, opener: Opener, create: bool = True
    ) -> None:
        self.path = path
        self.durability = durability
        self._map_size = map_size
        self._max_readers = max_readers
        self._opener = opener
        self.gate = EnvironmentGate(self._reopen)
        self.users = 0
        #: Set when the last user has closed the store: what is still under way fails.
        self.closed = False
        self._writer: GroupCommitWriter | None = None
        self._writer_pid = 0
        self.env: Any = None
        self.dbs: Databases = None  # type: ignore[assignment]  # set by _open_env
        # dbs.records again, as an attribute of its own: the load path reads it on every
        # load, and the extra lookup measured 200 instructions of ~31k per load.
        self._records: Any = None
        #: Whether opening may create the store (False: maintenance, which never creates one).
        self._create = create
        if not create and not _holds_data(os.path.join(path, "data.mdb")):  # (LMDB would write an empty one)
            raise StoreNotFoundError(f"no unistore store at {path!r}", {"path": path})
        try:
            make_private_directory(path)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot create the store directory {path!r}: {exc}") from exc
        self._open_env()

    def _open_env(self) -> None:
        """Open the environment and its databases, retrying while reader slots are all
        held by live readers or another process is growing the map."""
        waited_since = 0.0
        while True:
            try:
                env, dbs = self._try_open()
            except (lmdb.ReadersFullError, lmdb.MapResizedError) as exc:
                # Opening reads too: it needs a reader slot, and it fails if another
                # process grows the map between reading its size and reading.
                waited_since = _still_waiting(waited_since, exc)
                time.sleep(0.001)
                continue
            except lmdb.Error as exc:
                raise translate(exc) from exc
            self.env, self.dbs, self._records = env, dbs, dbs.records
            return

    def _try_open(self) -> tuple[Any, Databases]:
        env = lmdb.open(
            os.fsencode(self.path),  # bytes: a file name need not be UTF-8
            create=self._create,
            map_size=self._map_size,
            max_dbs=len(DATABASES),
            max_readers=self._max_readers,
            mode=0o600,  # a store is private to its owner
            readahead=False,  # random reads of small records: readahead only fills the page cache
            max_spare_txns=4,
            **DURABILITY[self.durability],
        )
        try:
            env.reader_check()  # free reader slots left by crashed processes
            self._check_size(env)
            while True:
                try:
                    return env, self._opener(env)
                except lmdb.MapResizedError:  # another process grew the map meanwhile
                    env.set_mapsize(0)
                except lmdb.MapFullError:  # a map too small for even the empty store
                    env.set_mapsize(env.info()["map_size"] * 2)
        except BaseException:
            env.close()
            raise

    def _check_size(self, env: Any) -> None:
        """Refuse a data file shorter than its own metadata says: reading past its end
        would kill the process with SIGBUS, not raise."""
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        size = os.path.getsize(os.path.join(self.path, "data.mdb"))
        if size < needed:
            raise StorageCorruptionError(
                f"the store's data.mdb is {size} bytes, shorter than the {needed} its own metadata "
                "says it holds: it was truncated; restore it from a backup"
            )

    def _close_env(self) -> None:
        # py-lmdb's close raises nothing: mdb_env_close has no error to report.
        env, self.env = self.env, None
        if env is not None:
            env.close()

    def _reopen(self) -> None:
        """The gate's repair: a new environment in place of a broken one (or of the
        one closed before a fork), unless the store was closed by its last user."""
        if self.closed:
            raise StorageError(
                f"the store {self.path!r} was closed (cleanup) during this operation; "
                "the provider reopens it on its next one"
            )
        self._close_env()
        self._open_env()

    @classmethod
    def acquire(cls, options: StoreOptions, opener: Opener, create: bool = True) -> SharedEnvironment:
        """The environment of the store ``options`` name, opened if this process has not opened it yet.

        ``create`` False: a store must be there already (``opener`` should then
        create no database either: see :func:`.layout.open_databases`).

        Raises:
            StoreNotFoundError: not ``create``, and there is no store at ``path`` (nothing is created).
        """
        path, durability = options.path, options.durability
        with cls._registry_lock:
            shared = cls._registry.get(path)
            if shared is None:
                shared = cls._registry[path] = cls(
                    path, durability, options.map_size, options.max_readers, opener, create
                )
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
            self.closed = True
            writer, self._writer = self._writer, None
            if writer is not None and self._writer_pid == os.getpid():
                writer.stop()
            self.gate.exclusive(self._close_for_good)

    def _close_for_good(self) -> None:
        self._close_env()
        self.gate.mark_broken()  # anything still under way meets the closed store in _reopen

    def writer(self) -> GroupCommitWriter:
        """The environment's group-commit thread in this process, started on first use
        (and again if it ended, or belongs to the process this one was forked from)."""
        writer = self._writer
        if writer is None or not writer.accepting or self._writer_pid != os.getpid():
            with self._registry_lock:
                if self.closed:
                    raise StorageError(f"the store {self.path!r} was closed (cleanup); nothing was written")
                writer = self._writer
                if writer is None or not writer.accepting or self._writer_pid != os.getpid():
                    writer = self._writer = GroupCommitWriter(self.write_batch, f"unistore-writer:{self.path}")
                    self._writer_pid = os.getpid()
        return writer

    # -- growth ---------------------------------------------------------------

    def _grow(self, factor: int = 2) -> None:
        """Grow the map ``factor`` times; the caller stalled the gate (and has left it)."""

        def double() -> None:
            size = self.env.info()["map_size"] * factor
            try:
                self.env.set_mapsize(size)
            except lmdb.Error as exc:
                self.gate.mark_broken()  # reopened, at the size it had, by the next operation
                raise StorageError(
                    f"the store's map could not grow to {size} bytes ({type(exc).__name__}: {exc}); nothing was written"
                ) from exc
            self._map_size = size

        self.gate.exclusive(double, stalled=True)

    def adopt_size(self) -> None:
        """Take the map size another process has grown the store to."""

        def adopt() -> None:
            try:
                self.env.set_mapsize(0)
            except lmdb.Error as exc:
                self.gate.mark_broken()
                raise translate(exc) from exc
            self._map_size = self.env.info()["map_size"]

        self.gate.exclusive(adopt)

    # -- transactions -----------------------------------------------------------

    def read(self, action: Callable[..., R], key: bytes | None = None) -> R:
        """Run ``action(txn, dbs)`` in a read transaction; with ``key``,
        ``action(txn, key)`` on the records database (a load passes ``txn.get``
        itself: no closure, no frame)."""
        waited_since = 0.0
        while True:
            self.gate.enter()
            try:
                with self.env.begin(db=self._records) as txn:  # no other keyword: each costs measurably here
                    return action(txn, self.dbs) if key is None else action(txn, key)
            except lmdb.MapResizedError:
                then = self.adopt_size  # once outside the gate
            except lmdb.ReadersFullError as exc:
                waited_since = _still_waiting(waited_since, exc)
                then = self._reclaim_readers
            except lmdb.Error as exc:
                raise translate(exc) from exc
            finally:
                self.gate.leave()
            then()

    def _reclaim_readers(self) -> None:
        """Free the slots of dead processes, and give live readers a moment to finish."""
        self.gate.enter()
        try:
            self.env.reader_check()
        finally:
            self.gate.leave()
        time.sleep(0.001)

    def write_batch(self, ops: list[Op]) -> list[Outcome]:
        """Apply ``ops`` (each ``op(txn, dbs)``) in one write transaction; one outcome per op.

        The ops first run straight in the transaction. If one raises, that
        attempt is rolled back and the batch runs again with each op in a
        nested transaction, so that the op is rolled back alone and the others
        land (nesting every time would cost each op a nested transaction). A
        full map grows the map and reruns the whole batch.

        Raises:
            StorageError: the map could not grow (every op failed).
        """
        isolated = False
        growths = 0
        while True:
            grow = resized = False
            self.gate.enter()
            try:
                txn = self.env.begin(write=True)
                try:
                    dbs = self.dbs
                    outcomes = [self._apply(txn, dbs, op) for op in ops] if isolated else _apply_all(txn, dbs, ops)
                    txn.commit()  # may fill the map too: LMDB writes its free list then
                    return outcomes
                except lmdb.MapFullError:
                    # Stall new transactions before the abort: py-lmdb's abort takes a lock that
                    # every read call takes too, and busy readers starved it (seen: 1 save of 20
                    # in 30 s under 3 searching threads). The stall lasts through the growth.
                    self.gate.stall()
                    grow = True
                    txn.abort()  # a no-op after a failed commit
                except BaseException:
                    txn.abort()
                    raise
            except _OneFailed:
                isolated = True
            except lmdb.MapResizedError:
                resized = True
            except lmdb.Error as exc:
                return [(False, _chained(translate(exc), exc))] * len(ops)
            finally:
                self.gate.leave()
                if grow:  # on every way out: the stall must end
                    # A batch that fills the map again after growing is a big one: each growth
                    # is bigger than the last (2x, 4x, 8x, 16x), so it is rerun a few times, not
                    # once per doubling (200,000 saves into a 1 MiB map: 30 s, against 5 s).
                    growths += 1
                    self._grow(2 ** min(growths, 4))
            if resized:
                self.adopt_size()

    def write_one(self, op: Callable[..., R]) -> R:
        """Run one write operation in its own transaction, in this thread; raise its error."""
        [(ok, outcome)] = self.write_batch([op])
        if not ok:
            raise outcome
        return outcome  # type: ignore[no-any-return]

    def _apply(self, txn: Any, dbs: Databases, op: Op) -> Outcome:
        child = self.env.begin(write=True, parent=txn)
        try:
            result = op(child, dbs)
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

    # -- fork -------------------------------------------------------------------

    def _before_fork(self) -> None:
        self.gate.hold()
        if self.env is not None:
            # Reclaim dead processes' reader slots while an environment is there to do it:
            # py-lmdb's open reads, so a table full of dead slots would fail the reopens.
            self.env.reader_check()
        self._close_env()

    def _after_fork(self, in_child: bool) -> None:
        if in_child:
            self._writer = None  # its thread is not in this process
            self.gate.after_fork_in_child()
        self.gate.mark_broken()  # reopened by the next operation, in each process
        self.gate.release()


def make_private_directory(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``, but every directory it makes is 0700:
    os.makedirs makes the missing parents 0777 less the umask, so under umask 0 anyone
    could move the store away below them and put one of their own in its place.

    Raises:
        OSError: a directory could not be made, or something not a directory is in the way.
    """
    parent = os.path.dirname(path)
    if parent != path and not os.path.isdir(parent):
        make_private_directory(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def _holds_data(data: str) -> bool:
    """Whether ``data`` is a file with something in it."""
    try:
        found = os.stat(data)
    except (OSError, ValueError):  # none there (or a path no file can have)
        return False
    return stat.S_ISREG(found.st_mode) and found.st_size > 0


class _OneFailed(Exception):
    """An op of a batch raised: rerun the batch with each op in a nested transaction."""


def _apply_all(txn: Any, dbs: Databases, ops: list[Op]) -> list[Outcome]:
    try:
        return [(True, op(txn, dbs)) for op in ops]
    except lmdb.MapFullError:
        raise
    except Exception as exc:
        raise _OneFailed from exc  # leaves the transaction: this attempt is rolled back


def _before_fork() -> None:
    SharedEnvironment._registry_lock.acquire()
    for shared in SharedEnvironment._registry.values():
        shared._before_fork()


def _after_fork(in_child: bool) -> None:
    for shared in SharedEnvironment._registry.values():
        shared._after_fork(in_child)
    SharedEnvironment._registry_lock.release()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=lambda: _after_fork(False),
    after_in_child=lambda: _after_fork(True),
)

__all__ = [
    "DEFAULT_MAP_SIZE",
    "DEFAULT_MAX_READERS",
    "DURABILITY",
    "MAX_MAP_SIZE",
    "MAX_READERS",
    "EnvironmentGate",
    "SharedEnvironment",
    "make_private_directory",
    "translate",
]
