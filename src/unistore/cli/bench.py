"""The engine of ``unistore bench``: unistore's latency against the raw engine
under it, measured in the same run on the same machine.

:func:`run` times each operation of the suite (``save``, ``load``,
``load_many``, a tag search) through a :class:`~unistore.UnifiedStorageManager`
and the same work done by hand on the raw engine:

- ``lmdb://``: py-lmdb and msgpack (a transaction per operation; the search
  scans and decodes every record, which is what a raw store without an index
  can do);
- ``redis://``, ``rediss://``: redis-py ``SET``/``GET``/``MGET`` of msgpack
  bytes (the search reads a hand-kept tag set and ``MGET``\\s its members);
- ``memory://``: a ``dict``.

Each figure is the median, over ``repetitions``, of a batch's time divided by
its operations, in µs. The two sides alternate within a repetition, so a busy
machine slows both alike.

It never touches the user's data. On LMDB it works in a scratch store (a new
directory beside the named one, on the same file system, with the URL's
durability and sizes), on Redis in a scratch namespace (``unistore-bench-`` and
a random suffix) and scratch raw keys on the named server and database; both are
removed when it ends, also when it fails.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import logging
import math
import shutil
import statistics
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit, urlunsplit

import msgpack

from ..core import NATIVE
from ..errors import StorageError, ValidationError
from ..manager import UnifiedStorageManager
from ..metrics import MetricsManager
from ..model import StorageQuery
from ..redaction import redact
from ..urls import lmdb_path, open_provider
from .options import scratch_store
from .render import Progress, columns, progress_bar

#: A typical record: about 200 bytes once packed (benches/conftest.py's RECORD).
RECORD: dict[str, Any] = {
    "id": 1234567,
    "name": "Ada Lovelace",
    "email": "ada.lovelace@example.org",
    "active": True,
    "score": 97.25,
    "roles": ["admin", "analyst", "dev"],
    "address": {"street": "12 St James's Square", "city": "London", "postcode": "SW1Y 4JH"},
    "notes": "first programmer; wrote the notes on the Analytical Engine",
}
#: The content type the scratch items are saved under.
CONTENT_TYPE = "bench"
#: One item in this many carries the searched tag.
HIT_EVERY = 10
#: Keys per ``load_many``.
MANY = 100
#: Seconds an interrupted bench (Ctrl-C) spends removing its scratch data before it gives up.
INTERRUPTED_CLEANUP = 2.0

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchRow:
    """One operation's latency: through unistore and on the raw engine, in µs."""

    operation: str
    unistore_us: float
    raw_us: float

    @property
    def ratio(self) -> float:
        """How many times the raw engine's time unistore takes (inf if the raw time is 0)."""
        return self.unistore_us / self.raw_us if self.raw_us > 0 else math.inf


def _group(n: int) -> str:
    return "hit" if n % HIT_EVERY == 0 else "miss"


class _Raw(ABC):
    """The raw engine's side of each operation (one class per engine). An engine whose
    client is asynchronous (Redis) sets :attr:`asynchronous`: its methods then return
    awaitables, so that Ctrl-C cancels a command under way instead of waiting out a
    blocking read."""

    asynchronous = False

    @abstractmethod
    def save(self, key: str, record: dict[str, Any]) -> Any:
        """Store ``record`` under ``key``, as the engine's users do by hand."""

    @abstractmethod
    def load(self, key: str) -> Any:
        """The record under ``key``."""

    @abstractmethod
    def load_many(self, keys: list[str]) -> Any:
        """The records under ``keys``, in one go where the engine allows it."""

    @abstractmethod
    def search(self) -> Any:
        """The records of the ``hit`` group, the best way the raw engine can find them."""

    def seed(self, items: dict[str, dict[str, Any]]) -> Any:
        """Store ``items`` (the ``hit`` group also in the tag's own index, if the engine keeps one)."""
        for key, record in items.items():
            self.save(key, record)

    @abstractmethod
    def close(self) -> Any:
        """Remove everything it wrote, and let go of the engine."""


class _RawDict(_Raw):
    def __init__(self) -> None:
        self._items: dict[str, dict[str, Any]] = {}

    def save(self, key: str, record: dict[str, Any]) -> None:
        self._items[key] = record

    def load(self, key: str) -> Any:
        return self._items[key]

    def load_many(self, keys: list[str]) -> list[Any]:
        return [self._items[key] for key in keys]

    def search(self) -> list[Any]:
        return [record for record in self._items.values() if record["group"] == "hit"]

    def close(self) -> None:
        self._items.clear()


class _RawLmdb(_Raw):
    def __init__(self, path: Path, sync: bool) -> None:
        import lmdb  # noqa: PLC0415  (only for an lmdb:// bench)

        self._env = lmdb.open(str(path), map_size=1 << 30, sync=sync, metasync=sync)

    def save(self, key: str, record: dict[str, Any]) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(key.encode(), msgpack.packb(record))

    def load(self, key: str) -> Any:
        with self._env.begin() as txn:
            return msgpack.unpackb(txn.get(key.encode()))

    def load_many(self, keys: list[str]) -> list[Any]:
        with self._env.begin() as txn:
            return [msgpack.unpackb(txn.get(key.encode())) for key in keys]

    def search(self) -> list[Any]:
        with self._env.begin() as txn:
            records = (msgpack.unpackb(value) for _, value in txn.cursor())
            return [record for record in records if record["group"] == "hit"]

    def seed(self, items: dict[str, dict[str, Any]]) -> None:
        with self._env.begin(write=True) as txn:
            for key, record in items.items():
                txn.put(key.encode(), msgpack.packb(record))

    def close(self) -> None:
        self._env.close()


class _RawRedis(_Raw):
    asynchronous = True

    def __init__(self, url: str, prefix: str, also_remove: list[bytes]) -> None:
        import redis.asyncio  # noqa: PLC0415  (only for a redis:// bench)

        # No socket_timeout: redis-py's send path then waits on asyncio.wait_for, which on
        # Python 3.10 and 3.11 may swallow the cancellation Ctrl-C sends (see the provider).
        self._client = redis.asyncio.Redis.from_url(url, protocol=2, socket_timeout=None)
        self._prefix = prefix
        self._tag = f"{prefix}tag:hit"
        # Every key it writes, to remove exactly those: a SCAN would visit the whole database.
        self._written: set[str | bytes] = {self._tag, *also_remove}

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def save(self, key: str, record: dict[str, Any]) -> None:
        name = self._prefix + key
        self._written.add(name)
        await self._client.set(name, msgpack.packb(record))

    async def load(self, key: str) -> Any:
        return msgpack.unpackb(await self._client.get(self._key(key)))

    async def load_many(self, keys: list[str]) -> list[Any]:
        return [msgpack.unpackb(value) for value in await self._client.mget([self._key(key) for key in keys])]

    async def search(self) -> list[Any]:
        members = list(await self._client.smembers(self._tag))
        return [msgpack.unpackb(value) for value in await self._client.mget(members)]

    async def seed(self, items: dict[str, dict[str, Any]]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for key, record in items.items():
                name = self._key(key)
                self._written.add(name)
                pipe.set(name, msgpack.packb(record))
                if record["group"] == "hit":
                    pipe.sadd(self._tag, name)
            await pipe.execute()

    async def close(self) -> None:
        try:
            for names in _chunks(sorted(self._written, key=str)):
                await self._client.delete(*names)
        finally:
            await self._client.aclose()


def _chunks(keys: list[Any], size: int = 500) -> Iterator[list[Any]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


@contextmanager
def _raised_as_storage_error(url: str) -> Iterator[None]:
    """Backend errors of the raw side, as unistore's (the CLI reports them as user errors)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # redis-py or py-lmdb: whatever the raw engine raises
        raise StorageError(f"bench on {redact(url)}: {type(exc).__name__}: {exc}") from exc


def _with_query(parts: SplitResult, params: dict[str, str], **changes: str) -> str:
    return urlunsplit(parts._replace(query=urlencode({**params, **changes})))


async def measure(
    url: str,
    progress: Progress | None = None,
    *,
    repetitions: int = 5,
    operations: int = 200,
    items: int = 1000,
) -> list[BenchRow]:
    """:func:`run`, for a caller that is already in an event loop."""
    for name, value, low in (("repetitions", repetitions, 1), ("operations", operations, 1), ("items", items, MANY)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValidationError(f"bench: {name} must be an int >= {low}, got {value!r}")
    if not isinstance(url, str):
        raise ValidationError(f"url must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    scratch = f"unistore-bench-{uuid.uuid4().hex[:12]}"
    with ExitStack() as stack:
        make_raw: Callable[[], _Raw]
        if parts.scheme == "lmdb":
            place = stack.enter_context(_scratch_directory(parts))
            params.pop("namespace", None)
            unistore_url = urlunsplit(("lmdb", "", quote(str(place / "unistore")), urlencode(params), ""))
            sync = params.get("durability", "sync") == "sync"
            make_raw = functools.partial(_RawLmdb, place / "raw", sync)
        elif parts.scheme in ("redis", "rediss"):
            from ..providers.redis.layout import markers  # noqa: PLC0415  (redis-py only for a Redis URL)

            unistore_url = _with_query(parts, params, namespace=scratch)
            server = _with_query(parts, {name: value for name, value in params.items() if name not in _OURS})
            shards = params.get("shards", "1")  # (a bad count: open_provider refuses it before make_raw runs)
            left = markers(scratch.encode(), int(shards) if shards.isdigit() else 1)
            make_raw = functools.partial(_RawRedis, server, f"{scratch}:raw:", left)
        elif parts.scheme == "memory":
            unistore_url = url
            make_raw = _RawDict
        else:
            raise ValidationError(
                f"bench: {redact(url)!r}: the bench runs on lmdb://, redis://, rediss:// and memory:// stores"
            )
        # Every option is checked here, before anything is written.
        async with UnifiedStorageManager(metrics=MetricsManager()) as manager:
            manager.register_provider(CONTENT_TYPE, open_provider(unistore_url))
            with _raised_as_storage_error(url):
                return await _measured(manager, make_raw(), scratch, progress, repetitions, operations, items)


async def _measured(
    manager: UnifiedStorageManager,
    raw: _Raw,
    scratch: str,
    progress: Progress | None,
    repetitions: int,
    operations: int,
    items: int,
) -> list[BenchRow]:
    """The suite's rows; the scratch data of both sides removed whatever happened (if the
    store can be reached), and, when the bench is interrupted, given up after
    :data:`INTERRUPTED_CLEANUP` seconds (a server that does not answer must not hold Ctrl-C)."""

    async def remove_scratch() -> None:
        # Both sides at once: one failing (or cancelled) does not keep the other from trying.
        done = await asyncio.gather(_done(raw.close()), manager.delete_matching(StorageQuery()), return_exceptions=True)
        for result in done:
            if isinstance(result, BaseException):
                raise result

    interrupted = False
    try:
        return await _suite(manager, raw, progress, repetitions, operations, items)
    except asyncio.CancelledError:
        interrupted = True
        raise
    finally:
        if interrupted:
            try:
                await asyncio.wait_for(remove_scratch(), INTERRUPTED_CLEANUP)
            except (asyncio.TimeoutError, StorageError) as exc:
                _logger.warning("bench interrupted: its scratch data (%s) may be left: %r", scratch, exc)
        else:
            await remove_scratch()


#: The options of a Redis URL that are unistore's, not the server's.
_OURS = frozenset({"namespace", "shards"})


@contextmanager
def _scratch_directory(parts: SplitResult) -> Iterator[Path]:
    """A new directory beside the store an lmdb URL names (on its file system), removed on exit."""
    beside = Path(lmdb_path(parts)).resolve().parent
    try:
        place = Path(tempfile.mkdtemp(prefix=".unistore-bench-", dir=beside))
    except OSError as exc:
        raise StorageError(f"bench: cannot make a scratch directory in {str(beside)!r}: {exc}") from exc
    try:
        yield place
    finally:
        shutil.rmtree(place, ignore_errors=True)


async def _suite(
    manager: UnifiedStorageManager,
    raw: _Raw,
    progress: Progress | None,
    repetitions: int,
    operations: int,
    items: int,
) -> list[BenchRow]:
    records = {f"item:{n:07d}": {**RECORD, "group": _group(n)} for n in range(items)}
    total = 1 + 4 * repetitions
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    for group in ("hit", "miss"):  # the bulk path (items >= 100: both groups have some)
        chosen = {key: record for key, record in records.items() if record["group"] == group}
        await manager.save_many(chosen, CONTENT_TYPE, tags={"group": group})
    await _done(raw.seed(records))
    advance()

    keys = list(records)
    calls = max(1, operations // 20)  # load_many and search do far more work per call
    hits = items // HIT_EVERY + (1 if items % HIT_EVERY else 0)
    query = StorageQuery(content_type=CONTENT_TYPE, tags={"group": "hit"})
    saved = {**RECORD, "group": "saved"}

    async def unistore_save(n: int) -> None:
        await manager.save(f"save:{n}", saved, CONTENT_TYPE, tags={"group": "saved"})

    async def unistore_load(n: int) -> None:
        await manager.load(keys[n % items], CONTENT_TYPE)

    async def unistore_load_many(n: int) -> None:
        found = await manager.load_many(_window(keys, n), CONTENT_TYPE)
        assert len(found) == MANY

    async def unistore_search(n: int) -> None:
        found = [result async for result in manager.search(query)]
        assert len(found) == hits

    suite: list[tuple[str, int, Callable[[int], Any], Callable[[int], Any]]] = [
        ("save", operations, unistore_save, lambda n: raw.save(f"save:{n}", saved)),
        ("load", operations, unistore_load, lambda n: raw.load(keys[n % items])),
        (f"load_many({MANY})", calls, unistore_load_many, lambda n: raw.load_many(_window(keys, n))),
        (f"search(tag, {hits} of {items})", calls, unistore_search, lambda n: raw.search()),
    ]
    rows = []
    for operation, count, through_unistore, on_raw in suite:
        ours, theirs = [], []
        for _ in range(repetitions):
            started = time.perf_counter()
            for n in range(count):
                await through_unistore(n)
            ours.append((time.perf_counter() - started) / count * 1e6)
            started = time.perf_counter()
            if raw.asynchronous:
                for n in range(count):
                    await on_raw(n)
            else:
                for n in range(count):
                    on_raw(n)
            theirs.append((time.perf_counter() - started) / count * 1e6)
            advance()
        rows.append(BenchRow(operation, statistics.median(ours), statistics.median(theirs)))
    assert len(await _done(raw.search())) == hits  # the raw side did the same work
    return rows


async def _done(result: Any) -> Any:
    """What a raw engine's method gave: awaited if it is an awaitable (an asynchronous engine's)."""
    return await result if inspect.isawaitable(result) else result


def _window(keys: list[str], n: int) -> list[str]:
    start = (n * MANY) % (len(keys) - MANY + 1)
    return keys[start : start + MANY]


def run(
    url: str, progress: Progress | None = None, *, repetitions: int = 5, operations: int = 200, items: int = 1000
) -> list[BenchRow]:
    """Time the latency suite on the store ``url`` names, against its raw engine.

    Args:
        url: the store, as for :func:`unistore.open_provider` (lmdb, redis, rediss, memory).
        progress: called as ``progress(done, total)`` after each step.
        repetitions: timed batches per operation and side; the median is reported.
        operations: operations per timed batch (a twentieth of it for ``load_many``
            and the search, which do more per call).
        items: items in the scratch store (at least 100); one in ten carries the searched tag.

    Returns:
        One :class:`BenchRow` per operation, in suite order.

    Raises:
        ValidationError: a bad URL, a scheme the bench does not run on, or bad sizes.
        StorageError: the store cannot be reached or written (the scratch data is
            removed all the same).
    """
    return asyncio.run(measure(url, progress, repetitions=repetitions, operations=operations, items=items))


def cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    """``bench``: the latency suite against the raw engine, as a table."""
    with scratch_store(args.store, "bench") as store, progress_bar(out, "measuring") as progress:
        out.write(f"unistore bench on {redact(store)} (native core: {'yes' if NATIVE else 'no'})\n")
        rows = run(store, progress)
    columns(
        out,
        ("operation", "unistore µs", "raw µs", "ratio"),
        [(row.operation, f"{row.unistore_us:.1f}", f"{row.raw_us:.1f}", f"{row.ratio:.2f}") for row in rows],
    )
    return 0


__all__ = ["RECORD", "BenchRow", "cmd_bench", "measure", "run"]
