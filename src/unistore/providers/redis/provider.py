"""The Redis provider: items shared by every process and machine that reaches one Redis.

An item is the codec's record under one key (:mod:`.layout`), so a load is one
GET decoded by the same core as LMDB; a save or delete is one Lua script
(:mod:`.scripts`) that writes the record and every index entry atomically. A
namespace may be split over ``shards`` hash-tagged shards, an item going to the
shard its key hashes to; bulk operations cost one script or MGET per shard, and
a search plans each shard through the index layer and reads them in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ... import index
from ...codec import PreparedSave, live_item, load_item, prepare_many, prepare_save
from ...core import pack_record, unpack_item
from ...errors import StorageConnectionError, StorageError, ValidationError
from ...model import (
    StorageItem,
    StorageQuery,
    StorageResult,
    Tags,
    now_micros,
    validate_key,
    validate_keys,
    validate_name,
)
from ..base import StorageProvider
from . import layout, scripts

#: What a candidate costs on each path, in µs, on loopback (docs/benchmarks.md):
#: SCAN visits a key for about half a microsecond of server time; a candidate
#: reached through a set costs its share of an SSCAN page and of an MGET.
COSTS = index.Costs(scan=0.5, fetch=9.0, posting=1.0, time_entry=1.0)
#: Candidates read per round trip by a search.
SEARCH_CHUNK = 256
#: Keys a SCAN visits per call.
SCAN_COUNT = 1000
#: Expired items one purge script removes at most.
PURGE_BATCH = 1000
MAX_SHARDS = 1024

#: The connection settings the seed's mapping (and a URL) may carry.
CONNECTION_SETTINGS = frozenset(
    {
        "host",
        "port",
        "db",
        "password",
        "username",
        "ssl",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_cert_reqs",
        "socket_timeout",
        "socket_connect_timeout",
    }
)


def _retry() -> Retry:
    """redis-py's own retry: connection loss and timeouts, three times, backing off to half a second."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Redis errors as unistore's, the cause chained."""
    try:
        yield
    except AuthenticationError as exc:
        raise StorageConnectionError(f"Redis refused the credentials: {exc}") from exc
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StorageConnectionError(f"Redis is unreachable: {exc}") from exc
    except RedisError as exc:
        raise StorageError(f"Redis refused the operation: {exc}") from exc


class RedisStorageProvider(StorageProvider[Any]):
    """Items in Redis, shared by every process that reaches it.

    Args:
        config: the seed's mapping: ``host``, ``port``, ``db``, ``password``,
            ``username``, ``ssl`` (and ``ssl_ca_certs``, ``ssl_certfile``,
            ``ssl_keyfile``, ``ssl_cert_reqs``, ``socket_timeout``,
            ``socket_connect_timeout``), ``namespace`` and ``shards``.
        **settings: the same, as keywords (they win over ``config``).

    Raises:
        ValidationError: an unknown setting, a bad namespace or shard count.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, **settings: Any) -> None:
        merged = {**(config or {}), **settings}
        namespace = merged.pop("namespace", "default")
        shards = merged.pop("shards", 1)
        url = merged.pop("url", None)
        unknown = sorted(set(merged) - CONNECTION_SETTINGS)
        if unknown:
            raise ValidationError(f"unknown Redis settings: {', '.join(map(repr, unknown))}")
        namespace_bytes = validate_name(namespace, "namespace")
        if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
            raise ValidationError(f"shards must be an int from 1 to {MAX_SHARDS}, got {shards!r}")
        self.namespace = namespace
        self.shards = shards
        self._url = url
        self._settings = merged
        self._prefixes = [layout.shard_prefix(namespace_bytes, shard) for shard in range(shards)]
        self._shards_key = layout.shards_key(namespace_bytes)
        self._client: aioredis.Redis | None = None
        self._owner: tuple[Any, int] | None = None  # the event loop and process the client belongs to
        self._ready: asyncio.Task[None] | None = None  # the client's first check, awaited by every caller
        self._scripts: dict[str, Any] = {}

    @classmethod
    def from_url(cls, url: str, **settings: Any) -> RedisStorageProvider:
        """A provider for ``redis://[user:password@]host:port/db?namespace=x&shards=N``
        (``rediss://`` for TLS); other query parameters go to redis-py.

        Raises:
            ValidationError: a malformed URL or setting.
        """
        if not isinstance(url, str):
            raise ValidationError(f"url must be a str, got {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValidationError(f"a Redis URL starts with redis:// or rediss://, got {url!r}")
        query = dict(parse_qsl(parts.query))
        namespace = query.pop("namespace", "default")
        shards_text = query.pop("shards", "1")
        try:
            shards = int(shards_text)
        except ValueError:
            raise ValidationError(f"shards must be an int, got {shards_text!r}") from None
        rest = urlunsplit(parts._replace(query=urlencode(query)))
        return cls(url=rest, namespace=namespace, shards=shards, **settings)

    def __repr__(self) -> str:
        where = self._settings.get("host", "localhost") if self._url is None else urlsplit(self._url).hostname
        return f"RedisStorageProvider(host={where!r}, namespace={self.namespace!r}, shards={self.shards})"

    # -- the client ----------------------------------------------------------------------

    async def _redis(self) -> aioredis.Redis:
        """The client of this event loop and process (a fork or another loop gets its own),
        made once however many tasks ask for it at once.

        Raises:
            ValidationError: the namespace is split over another number of shards.
            StorageConnectionError: Redis is unreachable.
        """
        owner = (asyncio.get_running_loop(), os.getpid())
        if self._client is None or self._owner != owner or _failed(self._ready):
            options: dict[str, Any] = {"protocol": 3, "retry": _retry()}
            if self._url is not None:
                client = aioredis.Redis.from_url(self._url, **options, **self._settings)
            else:
                client = aioredis.Redis(**options, **self._settings)
            self._client, self._owner = client, owner
            self._scripts = {
                name: client.register_script(source)
                for name, source in (("save", scripts.SAVE), ("delete", scripts.DELETE), ("purge", scripts.PURGE))
            }
            self._ready = owner[0].create_task(self._check_shards(client))
        client, ready = self._client, self._ready
        await ready  # type: ignore[misc]  # set with the client, never None here
        return client

    async def _check_shards(self, client: aioredis.Redis) -> None:
        """Record the namespace's shard count, or refuse another: items go to the shard
        their key hashes to, so another count would not find them. A client that
        fails here is closed (the next operation makes a new one)."""
        try:
            with _translated():
                before: Any = await client.set(self._shards_key, self.shards, nx=True, get=True)  # one atomic step
            recorded = self.shards if before is None else int(before)
            if recorded != self.shards:
                raise ValidationError(
                    f"namespace {self.namespace!r} is split over {recorded} shards; open it with shards={recorded}"
                )
        except BaseException:
            await client.aclose()
            raise

    def _shard(self, key_bytes: bytes) -> int:
        return zlib.crc32(key_bytes) % self.shards

    def _by_shard(self, key_bytes: Iterable[bytes]) -> dict[int, list[int]]:
        """The positions of the keys, grouped by the shard each key goes to."""
        groups: dict[int, list[int]] = {}
        for position, encoded in enumerate(key_bytes):
            groups.setdefault(self._shard(encoded), []).append(position)
        return groups

    async def cleanup(self) -> None:
        """Close the connection pool; the provider reconnects on next use. (A pool made
        in another event loop or process cannot be closed from here: it is dropped.)"""
        client, owner = self._client, self._owner
        self._client = self._owner = None
        if client is not None and owner == (asyncio.get_running_loop(), os.getpid()):
            with _translated():
                await client.aclose()

    # -- writes --------------------------------------------------------------------------

    async def _save_in_shard(self, shard: int, saves: list[PreparedSave]) -> list[StorageItem[Any]]:
        prefix = self._prefixes[shard]
        now = now_micros()
        keys: list[bytes] = []
        args: list[Any] = [prefix, now]
        for save in saves:
            record = pack_record(*save.fields(None, now, _no_sid))  # the script keeps a replaced item's id
            keys.append(layout.record_key(prefix, save.key_bytes))
            args += [save.key_bytes, record]
        client = await self._redis()
        with _translated():
            stored = await self._scripts["save"](keys=keys, args=args, client=client)
        return [_item(record, save) for record, save in zip(stored, saves, strict=True)]

    async def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        prepared = prepare_save(key, data, content_type, expires_at, tags)
        [item] = await self._save_in_shard(self._shard(prepared.key_bytes), [prepared])
        return item

    async def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        batch = prepare_many(items, content_type, expires_at, tags)
        groups = self._by_shard(batch.key_bytes)
        saved = await asyncio.gather(
            *(self._save_in_shard(shard, [batch.save(p) for p in positions]) for shard, positions in groups.items())
        )
        items_in_order: list[Any] = [None] * len(batch.keys)
        for positions, shard_items in zip(groups.values(), saved, strict=True):
            for position, item in zip(positions, shard_items, strict=True):
                items_in_order[position] = item
        return items_in_order

    async def _delete_in_shard(
        self, shard: int, keys: list[bytes], content_type: str | None, expected: list[bytes] | None = None
    ) -> int:
        prefix = self._prefixes[shard]
        args: list[Any] = [prefix, now_micros(), content_type or ""]
        for position, key in enumerate(keys):
            args += [key, b"" if expected is None else expected[position]]
        client = await self._redis()
        with _translated():
            return int(
                await self._scripts["delete"](
                    keys=[layout.record_key(prefix, key) for key in keys], args=args, client=client
                )
            )

    async def delete(self, key: str, *, content_type: str | None = None) -> bool:
        key_bytes = validate_key(key)
        if content_type is not None:
            validate_name(content_type, "content_type")
        return await self._delete_in_shard(self._shard(key_bytes), [key_bytes], content_type) == 1

    async def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        checked = list(validate_keys(keys).values())
        if content_type is not None:
            validate_name(content_type, "content_type")
        groups = self._by_shard(checked)
        counts = await asyncio.gather(
            *(
                self._delete_in_shard(shard, [checked[p] for p in positions], content_type)
                for shard, positions in groups.items()
            )
        )
        return sum(counts)

    async def delete_matching(self, query: StorageQuery | index.CompiledQuery) -> int:
        compiled = index.compile_query(query)
        limit = compiled.spec.limit
        unlimited = dataclasses.replace(compiled, spec=dataclasses.replace(compiled.spec, limit=None))
        deleted = 0
        for shard in range(self.shards):
            found: dict[bytes, bytes] = {}  # a SCAN may meet a key twice
            async for chunk in self._matching(unlimited, shard):
                for key, record in chunk:
                    found.setdefault(key, record)
            keys = list(found)[: None if limit is None else limit - deleted]
            if keys:  # each only if it still holds the record that matched
                deleted += await self._delete_in_shard(shard, keys, None, [found[key] for key in keys])
            if deleted == limit:
                break
        return deleted

    async def purge_expired(self) -> int:
        """Remove the index entries of items Redis has expired (and any expired record
        it has not dropped yet); returns how many items were purged."""
        client = await self._redis()
        total = 0
        for prefix in self._prefixes:
            while True:
                args = [prefix, now_micros(), PURGE_BATCH]
                with _translated():
                    met = int(await self._scripts["purge"](keys=[prefix + layout.EXPIRES], args=args, client=client))
                total += met
                if met < PURGE_BATCH:
                    break
        return total

    # -- reads ---------------------------------------------------------------------------

    async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        key_bytes = validate_key(key)
        client = await self._redis()
        record_key = layout.record_key(self._prefixes[self._shard(key_bytes)], key_bytes)
        with _translated():
            record: Any = await client.get(record_key)  # bytes: the client never decodes
        return load_item(record, key, content_type, now_micros())

    async def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        checked = validate_keys(keys)
        wanted = None if content_type is None else validate_name(content_type, "content_type")
        names = list(checked)
        encoded = list(checked.values())
        client = await self._redis()
        records: list[Any] = [None] * len(names)
        for shard, positions in self._by_shard(encoded).items():
            prefix = self._prefixes[shard]
            with _translated():
                found = await client.mget([layout.record_key(prefix, encoded[p]) for p in positions])
            for position, record in zip(positions, found, strict=True):
                records[position] = record
        now = now_micros()
        items: dict[str, StorageItem[Any]] = {}
        for name, record in zip(names, records, strict=True):
            item = None if record is None else live_item(record, name, wanted, now)
            if item is not None:
                items[name] = item
        return items

    async def explain(self, query: StorageQuery | index.CompiledQuery, shard: int = 0) -> index.Plan:
        """The plan a search of ``query`` would follow now in ``shard`` (see :func:`unistore.index.plan`).

        Raises:
            ValidationError: a bad query field.
        """
        return await self._plan(index.compile_query(query).spec, shard)

    async def _plan(self, spec: Any, shard: int) -> index.Plan:
        return index.plan(spec, await _Sizes.read(await self._redis(), self._prefixes[shard], spec), COSTS)

    async def search(self, query: StorageQuery | index.CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        compiled = index.compile_query(query)
        remaining = compiled.spec.limit
        for shard in range(self.shards):
            if remaining == 0:
                return
            part = dataclasses.replace(compiled, spec=dataclasses.replace(compiled.spec, limit=remaining))
            read = await self._reader(part.spec, shard)
            async for chunk in index.search_chunks_async(part, read, repeats=True, name=_key_name):
                for result in chunk:
                    yield result
                if remaining is not None:
                    remaining -= len(chunk)

    async def _matching(self, compiled: index.CompiledQuery, shard: int) -> AsyncIterator[list[tuple[bytes, bytes]]]:
        read = await self._reader(compiled.spec, shard)
        async for chunk in index.matching_chunks_async(compiled, read, name=_key_name):
            yield chunk

    async def _reader(self, spec: Any, shard: int) -> Callable[[Any], Awaitable[index.Chunk]]:
        """The chunk reader of the cheapest plan for ``spec`` in ``shard``."""
        client = await self._redis()
        prefix = self._prefixes[shard]
        plan = await self._plan(spec, shard)
        if plan.path == index.POSTINGS:
            first, *others = (layout.posting_key(prefix, kind, term) for kind, term in plan.terms)
            return _PostingReader(client, prefix, first, others)
        if plan.path == index.KEYS:
            return _ScanReader(client, prefix, spec.pattern)
        kind = index.CREATED if plan.path == index.CREATED_RANGE else index.EXPIRES
        return _TimeReader(client, prefix, layout.time_key(prefix, kind), plan.low, plan.high)


def _failed(task: asyncio.Task[None] | None) -> bool:
    """Whether a client's first check has ended without success."""
    return task is not None and task.done() and (task.cancelled() or task.exception() is not None)


def _no_sid() -> int:
    return 0  # Redis indexes items by key: the record's surrogate id is not used


def _item(record: bytes, save: PreparedSave) -> StorageItem[Any]:
    """The item a save stored: its record as the script returned it (ours, with a
    replaced item's id and creation time), the data as already decoded."""
    item: StorageItem[Any] = unpack_item(record, None, None, save.loaded)  # type: ignore[assignment]
    return item


def _key_name(key: bytes) -> str:
    return key.decode(errors="replace")


class _Sizes:
    """The sizes of a shard's candidate sources, read in one round trip."""

    def __init__(self, postings: dict[tuple[int, bytes], int], keys: int, times: dict[int, int]) -> None:
        self._postings = postings
        self._keys = keys
        self._times = times

    @classmethod
    async def read(cls, client: aioredis.Redis, prefix: bytes, spec: Any) -> _Sizes:
        terms = index.query_postings(spec)
        bounds = [
            (kind, low, high)
            for kind, low, high in (
                (index.CREATED, spec.created_after, spec.created_before),
                (index.EXPIRES, spec.expires_after, spec.expires_before),
            )
            if low is not None or high is not None
        ]
        with _translated():
            async with client.pipeline(transaction=False) as pipe:
                for kind, term in terms:
                    pipe.scard(layout.posting_key(prefix, kind, term))
                pipe.dbsize()
                for kind, low, high in bounds:
                    pipe.zcount(layout.time_key(prefix, kind), _score(low, "-inf"), _score(high, "+inf"))
                replies = await pipe.execute()
        postings = dict(zip(terms, replies, strict=False))
        return cls(
            postings,
            replies[len(terms)],
            {kind: count for (kind, _, _), count in zip(bounds, replies[len(terms) + 1 :], strict=True)},
        )

    def posting(self, kind: int, term: bytes) -> int:
        return int(self._postings[kind, term])

    def keys(self, literal: bytes, most: int | None) -> int:
        return int(self._keys)  # a SCAN visits every key of the database, whatever the prefix

    def times(self, kind: int, low: int | None, high: int | None, most: int) -> int:
        return int(self._times[kind])


def _score(micros: int | None, unbounded: str) -> str:
    return unbounded if micros is None else str(micros)


async def _records(client: aioredis.Redis, prefix: bytes, members: list[Any]) -> list[tuple[bytes, bytes]]:
    """The (key, record) of each member that still has a record (Redis may have expired it)."""
    if not members:
        return []
    with _translated():
        records: list[Any] = await client.mget([layout.record_key(prefix, member) for member in members])
    return [(member, record) for member, record in zip(members, records, strict=True) if record is not None]


class _PostingReader:
    """Walks a posting set with SSCAN; narrows each page by the plan's other sets (SMISMEMBER)."""

    def __init__(self, client: aioredis.Redis, prefix: bytes, first: bytes, others: list[bytes]) -> None:
        self._client, self._prefix, self._first, self._others = client, prefix, first, others

    async def __call__(self, cursor: int | None) -> index.Chunk:
        client = self._client
        with _translated():
            cursor, members = await client.sscan(self._first, cursor or 0, count=SEARCH_CHUNK)
            for other in self._others:
                flags = await client.smismember(other, members) if members else []
                members = [member for member, flag in zip(members, flags, strict=True) if flag]
        return await _records(client, self._prefix, members), cursor or None


class _ScanReader:
    """Walks the database with SCAN MATCH, the shard's prefix before the query's pattern."""

    def __init__(self, client: aioredis.Redis, prefix: bytes, pattern: bytes | None) -> None:
        self._client, self._prefix = client, prefix
        self._match = layout.scan_pattern(prefix, pattern)
        self._cut = len(prefix) + len(layout.RECORD)

    async def __call__(self, cursor: int | None) -> index.Chunk:
        with _translated():
            cursor, keys = await self._client.scan(cursor or 0, match=self._match, count=SCAN_COUNT)
        members = [key[self._cut :] for key in keys]
        return await _records(self._client, self._prefix, members), cursor or None


class _TimeReader:
    """Walks a time order by score, a page at a time; resumes after the last (score, rank)."""

    def __init__(self, client: aioredis.Redis, prefix: bytes, key: bytes, low: int | None, high: int | None) -> None:
        self._client, self._prefix, self._key = client, prefix, key
        self._high = _score(high, "+inf")
        self._start = (_score(low, "-inf"), 0)

    async def __call__(self, position: tuple[str, int] | None) -> index.Chunk:
        low, skip = position or self._start
        with _translated():
            page: list[Any] = await self._client.zrange(
                self._key, low, self._high, byscore=True, offset=skip, num=SEARCH_CHUNK, withscores=True
            )
        members = [member for member, _ in page]
        if len(page) < SEARCH_CHUNK:
            return await _records(self._client, self._prefix, members), None
        last = page[-1][1]
        at_last = sum(1 for _, score in page if score == last)
        resume = (str(int(last)), at_last + (skip if str(int(last)) == low else 0))
        return await _records(self._client, self._prefix, members), resume


__all__ = ["COSTS", "RedisStorageProvider"]
