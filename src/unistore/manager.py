"""The manager: routes each operation by content type to a provider, and
measures every operation on one instrumented path.

For each operation it counts ``storage_operations{operation, content_type,
success}`` and observes ``storage_operation_seconds{operation, content_type}``;
a failure is logged (with ``operation``, ``content_type`` and ``error`` as
structured fields) and re-raised unchanged. Nothing is swallowed. A caller's
mistake (:data:`CALLER_MISTAKES`: a bad argument, a missing key, an unknown
content type, data that cannot be stored) is logged at DEBUG; anything else (a
backend failure) at ERROR. An operation refused before it reaches a provider
(an unknown content type, a bad query) is counted and logged the same way.
``content_type="*"`` labels an operation not bound to one content type (a
search over all of them, or a content type that was not a non-empty str).

:meth:`UnifiedStorageManager.retrieve` is the legacy memory store's query: a
search whose results carry a relevance ``score`` and ``highlights`` for a text.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from . import ordering
from .errors import ItemNotFoundError, ProviderNotFoundError, SerializationError, StorageError, ValidationError
from .index import CompiledQuery, compile_query
from .metrics import MetricsManager
from .model import StorageItem, StoragePage, StorageQuery, StorageResult, Tags, validate_name
from .providers.base import CleanupOnExit, StorageProvider
from .ranking import Ranking

_logger = logging.getLogger(__name__)
_perf_counter = time.perf_counter
R = TypeVar("R")

#: The errors that are the caller's doing, not the store's: logged at DEBUG only,
#: so that an application's own handling of them is not drowned in error lines.
CALLER_MISTAKES: tuple[type[StorageError], ...] = (
    ValidationError,
    ItemNotFoundError,
    ProviderNotFoundError,
    SerializationError,
)


def _label(content_type: object) -> str:
    """The ``content_type`` label of an operation: the type, or ``*`` for none (or no valid one)."""
    return content_type if isinstance(content_type, str) and content_type else "*"


class _Instruments:
    """The metrics of one (operation, content type), bound once, and the one place
    that accounts for an operation's end.

    ``UnifiedStorageManager._measured`` brackets each operation with
    ``started = time.perf_counter()`` and ``finish`` (on its way out with the
    exception, or after it with None): a try block rather than a context
    manager, whose construction, ``__enter__`` and ``__exit__`` would cost
    every operation three Python frames more.
    """

    __slots__ = ("content_type", "failed", "operation", "seconds", "succeeded")

    def __init__(self, metrics: MetricsManager, operation: str, content_type: str) -> None:
        labels = {"operation": operation, "content_type": content_type}
        self.operation = operation
        self.content_type = content_type
        self.seconds = metrics.bind_histogram("storage_operation_seconds", **labels)
        self.succeeded = metrics.bind_counter("storage_operations", success="true", **labels)
        self.failed = metrics.bind_counter("storage_operations", success="false", **labels)

    def finish(self, started: float, exc: BaseException | None) -> None:
        """Report an operation begun at ``started`` that ended with ``exc`` (None: it succeeded).

        ``GeneratorExit`` (a caller that stopped reading search results) is a
        success; another ``BaseException`` (cancellation, interrupt) is not an
        outcome of the store and is not counted.
        """
        elapsed = _perf_counter() - started
        if exc is None or isinstance(exc, GeneratorExit):
            self.seconds.observe(elapsed)
            self.succeeded.inc()
        elif isinstance(exc, Exception):
            self.seconds.observe(elapsed)
            self.failed.inc()
            # A caller's mistake is the caller's to report; a backend failure is worth an error line.
            level = logging.DEBUG if isinstance(exc, CALLER_MISTAKES) else logging.ERROR
            _logger.log(
                level,
                "storage %s failed: %s",
                self.operation,
                exc,
                extra={"operation": self.operation, "content_type": self.content_type, "error": repr(exc)},
            )


async def _close(results: AsyncIterator[Any]) -> None:
    # A provider's search is usually an async generator: close it now, so that a
    # caller who stops early releases its cursor at once, not at garbage collection.
    aclose = getattr(results, "aclose", None)
    if aclose is not None:
        await aclose()


class Routing:
    """What both managers are made of (:class:`UnifiedStorageManager`, and the
    synchronous :class:`~unistore.syncmanager.SyncStorageManager`): the registry of
    providers by content type, the lookup that refuses an unknown one, and the metrics
    every operation is accounted to.

    Args:
        metrics: where operations are measured; the process-wide registry by default.
    """

    def __init__(self, metrics: MetricsManager | None = None) -> None:
        self._providers: dict[str, StorageProvider[Any]] = {}
        self._metrics = metrics if metrics is not None else MetricsManager.get_instance()
        self._instruments: dict[tuple[str, str], _Instruments] = {}

    def register_provider(self, content_type: str, provider: StorageProvider[Any]) -> None:
        """Route ``content_type`` to ``provider`` (replacing an earlier registration).

        Raises:
            ValidationError: ``content_type`` is not a non-empty str, or ``provider``
                is not a :class:`StorageProvider`.
        """
        validate_name(content_type, "content_type")
        if not isinstance(provider, StorageProvider):
            raise ValidationError(f"provider must be a StorageProvider, got {type(provider).__name__}")
        self._providers[content_type] = provider

    def _provider(self, content_type: str, operation: str) -> StorageProvider[Any]:
        """The provider of ``content_type``; a refusal is accounted as a failed ``operation``."""
        # Only valid names are registered: a hit of a plain str needs no further check.
        provider = self._providers.get(content_type) if type(content_type) is str else None
        if provider is None:
            try:
                provider = self._lookup(content_type)
            except StorageError as exc:
                self._instruments_of(operation, _label(content_type)).finish(_perf_counter(), exc)
                raise
        return provider

    def _lookup(self, content_type: str) -> StorageProvider[Any]:
        validate_name(content_type, "content_type")  # str subclasses (enums) are fine
        provider = self._providers.get(content_type)
        if provider is None:
            raise ProviderNotFoundError(f"Provider not found: {content_type!r}", {"content_type": content_type})
        return provider

    def _instruments_of(self, operation: str, label: str) -> _Instruments:
        instruments = self._instruments.get((operation, label))
        if instruments is None:
            instruments = self._instruments[operation, label] = _Instruments(self._metrics, operation, label)
        return instruments

    def _distinct_providers(self) -> list[StorageProvider[Any]]:
        return list({id(provider): provider for provider in self._providers.values()}.values())

    def _providers_of(self, query: StorageQuery) -> list[StorageProvider[Any]]:
        """The provider of ``query.content_type``, or every distinct one when it is None."""
        if query.content_type is not None:
            return [self._lookup(query.content_type)]
        return self._distinct_providers()

    def _retrieval(
        self, query: StorageQuery, text: str | None, min_score: float
    ) -> tuple[CompiledQuery, list[StorageProvider[Any]], Ranking | None, int | None]:
        """What a search (``text`` None) or a retrieval reads: the query compiled once for
        every provider, the providers, the ranking of the results (None: none), and how
        many results are given (with a ranking, every match is read and ranked, and the
        limit applies to the ranked)."""
        compiled = compile_query(query)
        providers = self._providers_of(query)
        ranking = Ranking.of(text, min_score)
        if ranking is None:
            return compiled, providers, None, compiled.spec.limit
        if compiled.spec.order is not None:
            raise ValidationError("query.order_by: a retrieval with text orders its results by score")
        return compiled.limited(None), providers, ranking, compiled.spec.limit

    def _summing(self, operation: str, query: StorageQuery) -> tuple[CompiledQuery, list[StorageProvider[Any]]]:
        """What a summed ``operation`` (``delete_matching``, ``count``) runs: the query,
        prepared once (a count's order plays no part), and the providers it runs on one
        after another (each given what the ones before it left of the limit: :func:`rest`)."""
        prepare = ordering.unordered if operation == "count" else compile_query
        return prepare(query), self._providers_of(query)

    def _cleanup_failed(self, provider: StorageProvider[Any], exc: Exception) -> None:
        _logger.error(
            "storage cleanup of %r failed: %s", provider, exc, extra={"operation": "cleanup", "error": repr(exc)}
        )


def rest(compiled: CompiledQuery, total: int) -> CompiledQuery | None:
    """What the next provider of a summed operation is asked once ``total`` were counted
    by those before it (None: the query's limit is reached)."""
    limit = compiled.spec.limit
    if limit is None:
        return compiled
    return compiled.limited(limit - total) if total < limit else None


class UnifiedStorageManager(Routing, CleanupOnExit):
    """One front for many providers, chosen by content type.

    Through the manager, a content type is part of an item's identity: ``load``
    and ``delete`` under type X never see an item stored under type Y.

    Args:
        metrics: where operations are measured; the process-wide registry by default.
    """

    async def _measured(self, operation: str, content_type: str, call: Awaitable[R]) -> R:
        """Await ``call``, the provider's part of ``operation``, and account for it."""
        instruments = self._instruments.get((operation, content_type)) or self._instruments_of(operation, content_type)
        started = _perf_counter()
        try:
            result = await call
        except BaseException as exc:
            instruments.finish(started, exc)
            raise
        instruments.finish(started, None)
        return result

    async def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        """Save through the provider of ``content_type``; see :meth:`StorageProvider.save`.

        Raises:
            ValidationError: a bad key, content type, tags or ``expires_at``; nothing is written.
            SerializationError: ``data`` cannot be stored; nothing is written.
            ProviderNotFoundError: no provider for ``content_type``.
            StorageConnectionError: the provider's backend cannot be reached (a
                :class:`~unistore.errors.StorageError`, as every failure of the backend is).
        """
        provider = self._provider(content_type, "save")
        return await self._measured("save", content_type, provider.save(key, data, content_type, expires_at, tags))

    async def load(self, key: str, content_type: str) -> StorageItem[Any]:
        """The live item under ``key`` stored with ``content_type``.

        Raises:
            ValidationError: a bad key or content type.
            ProviderNotFoundError: no provider for ``content_type``.
            ItemNotFoundError: no such live item of that content type.
            StorageConnectionError: the provider's backend cannot be reached (a
                :class:`~unistore.errors.StorageError`, as every failure of the backend is).
        """
        provider = self._provider(content_type, "load")
        return await self._measured("load", content_type, provider.load(key, content_type=content_type))

    async def delete(self, key: str, content_type: str) -> bool:
        """Delete the item under ``key`` if it is stored with ``content_type``; True if one was.

        Raises:
            ValidationError: a bad key or content type.
            ProviderNotFoundError: no provider for ``content_type``.
            StorageConnectionError: the provider's backend cannot be reached (a
                :class:`~unistore.errors.StorageError`, as every failure of the backend is).
        """
        provider = self._provider(content_type, "delete")
        return await self._measured("delete", content_type, provider.delete(key, content_type=content_type))

    async def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        """Save every ``key → data`` of ``items`` through the provider of ``content_type``,
        all or nothing; see :meth:`StorageProvider.save_many`.

        Raises:
            ValidationError: a bad key (any of them), content type, tags or ``expires_at``;
                nothing is written.
            SerializationError: a ``data`` cannot be stored; nothing is written.
            ProviderNotFoundError: no provider for ``content_type``.
            StorageConnectionError: the provider's backend cannot be reached (a
                :class:`~unistore.errors.StorageError`, as every failure of the backend is).
        """
        provider = self._provider(content_type, "save_many")
        call = provider.save_many(items, content_type, expires_at, tags)
        return await self._measured("save_many", content_type, call)

    async def load_many(self, keys: Iterable[str], content_type: str) -> dict[str, StorageItem[Any]]:
        """The live items under ``keys`` stored with ``content_type``, by key; the others are absent.

        Raises:
            ValidationError: a bad key or content type.
            ProviderNotFoundError: no provider for ``content_type``.
            StorageConnectionError: the provider's backend cannot be reached (a
                :class:`~unistore.errors.StorageError`, as every failure of the backend is).
        """
        provider = self._provider(content_type, "load_many")
        return await self._measured("load_many", content_type, provider.load_many(keys, content_type=content_type))

    async def delete_many(self, keys: Iterable[str], content_type: str) -> int:
        """Delete the items under ``keys`` stored with ``content_type``; how many there were.

        Raises:
            ValidationError: a bad key or content type; nothing is deleted.
            ProviderNotFoundError: no provider for ``content_type``.
            StorageConnectionError: the provider's backend cannot be reached (a
                :class:`~unistore.errors.StorageError`, as every failure of the backend is).
        """
        provider = self._provider(content_type, "delete_many")
        return await self._measured("delete_many", content_type, provider.delete_many(keys, content_type=content_type))

    async def delete_matching(self, query: StorageQuery) -> int:
        """Delete every live item that ``query`` matches, from the provider of
        ``query.content_type`` or from every distinct provider once when it is None
        (each provider atomically); returns how many.

        Raises:
            ValidationError: a bad query field.
            ProviderNotFoundError: no provider for ``query.content_type``.
            StorageConnectionError: the provider's backend cannot be reached (a
                :class:`~unistore.errors.StorageError`, as every failure of the backend is).
        """
        return await self._summed("delete_matching", query)

    async def _summed(self, operation: str, query: StorageQuery) -> int:
        """The sum of the providers' ``operation`` over the providers of ``query`` (see
        :meth:`Routing._summing`), measured as ``operation``."""

        async def summed() -> int:
            compiled, providers = self._summing(operation, query)
            total = 0
            for provider in providers:
                asked = rest(compiled, total)
                if asked is None:
                    break
                total += await getattr(provider, operation)(asked)
            return total

        return await self._measured(operation, _label(getattr(query, "content_type", None)), summed())

    def search(self, query: StorageQuery) -> AsyncGenerator[StorageResult[Any], None]:
        """Results from the provider of ``query.content_type``, or from every
        distinct provider once when it is None, up to ``query.limit`` in all.

        Raises:
            ValidationError: a bad query field (when iterated, as every error here).
            ProviderNotFoundError: no provider for ``query.content_type``.
            StorageConnectionError: the provider's backend cannot be reached (a
                :class:`~unistore.errors.StorageError`, as every failure of the backend is).
        """
        return self._search(query, "search", None, 0.0)

    def retrieve(
        self, query: StorageQuery, text: str | None = None, *, min_score: float = 0.0
    ) -> AsyncGenerator[StorageResult[Any], None]:
        """The legacy memory store's query: :meth:`search`, with relevance.

        Without ``text``, the results are :meth:`search`'s, each with score 1.0
        and no highlights (as the legacy store yielded them). With ``text``,
        only items whose string data contains at least one of its words are
        yielded, best first: ``score`` is the share of the text's distinct
        words found (case-insensitive, whole words) among the strings of
        ``item.data`` (nested in dicts and lists too), and ``highlights`` are
        the passages where they occur, as they stand in the data. Equal scores
        come in key order. ``query.limit`` counts after ranking, so every item
        the query's other criteria select is read: narrow it by content type,
        tags or pattern on a large store.

        Args:
            query: the criteria every result meets, as for :meth:`search`.
            text: the words to look for, or None for no ranking.
            min_score: results scoring less are left out (0.0 to 1.0).

        Raises:
            ValidationError: a bad query field, ``text`` without a word, or
                ``min_score`` outside 0.0 to 1.0 (when iterated, as every error here).
            ProviderNotFoundError: no provider for ``query.content_type``.
            StorageConnectionError: the provider's backend cannot be reached (a
                :class:`~unistore.errors.StorageError`, as every failure of the backend is).
        """
        return self._search(query, "retrieve", text, min_score)

    async def _search(
        self, query: StorageQuery, operation: str, text: str | None, min_score: float
    ) -> AsyncGenerator[StorageResult[Any], None]:
        """The fan-out of :meth:`search` and :meth:`retrieve`, measured as ``operation``."""
        instruments = self._instruments_of(operation, _label(getattr(query, "content_type", None)))
        started = _perf_counter()
        try:
            compiled, providers, ranking, limit = self._retrieval(query, text, min_score)
            if ranking is None:
                async with contextlib.aclosing(self._fan_out(compiled, providers)) as results:
                    async for result in results:  # (a caller that stops early closes each provider's search)
                        yield result
            else:
                async for result in self._fan_out(compiled, providers):
                    ranking.add(result.item)
                for ranked in ranking.best(limit):
                    yield ranked
        except BaseException as exc:
            instruments.finish(started, exc)
            raise
        instruments.finish(started, None)

    async def _fan_out(
        self, compiled: CompiledQuery, providers: list[StorageProvider[Any]]
    ) -> AsyncGenerator[StorageResult[Any], None]:
        """The results of ``compiled`` from each of ``providers``, up to its limit in all: one
        provider after another, or, for an ordered query, their ordered streams merged."""
        order, remaining = compiled.spec.order, compiled.spec.limit
        if order is not None:
            streams = [provider.search(compiled) for provider in providers]
            try:
                async for result in ordering.merge(streams, order, remaining):
                    yield result
            finally:
                for stream in streams:
                    await _close(stream)
            return
        for provider in providers:
            if remaining == 0:
                break
            results = provider.search(compiled)
            try:
                async for result in results:
                    yield result
                    if remaining is not None:
                        remaining -= 1
                        if remaining == 0:
                            break
            finally:
                await _close(results)

    async def page(self, query: StorageQuery, size: int, cursor: str | None = None) -> StoragePage[Any]:
        """The ``size`` results that follow ``cursor`` (None: the first page) in the
        query's order (``"key"`` when it names none), from the provider of
        ``query.content_type`` or from every distinct provider, their ordered results
        merged; ``next`` is the cursor of the following page, None on the last. Each
        provider reads what an ordered search of ``size + 1`` from the cursor reads.

        Raises:
            ValidationError: a bad query field or ``size``, or a cursor that is damaged,
                altered, or was made for another query.
            ProviderNotFoundError: no provider for ``query.content_type``.
            StorageConnectionError: the provider's backend cannot be reached (a
                :class:`~unistore.errors.StorageError`, as every failure of the backend is).
        """
        label = _label(getattr(query, "content_type", None))
        return await self._measured("page", label, self._page(query, size, cursor))

    async def _page(self, query: StorageQuery, size: int, cursor: str | None) -> StoragePage[Any]:
        request = ordering.page_request(query, size, cursor)
        results = [result async for result in self._fan_out(request.compiled, self._providers_of(query))]
        return ordering.finish_page(request, results)

    async def count(self, query: StorageQuery) -> int:
        """How many live items ``query`` matches (up to its ``limit``; its order plays no
        part), in the provider of ``query.content_type`` or in every distinct provider,
        counted by record headers (no payload is decoded).

        Raises:
            ValidationError: a bad query field.
            ProviderNotFoundError: no provider for ``query.content_type``.
            StorageConnectionError: the provider's backend cannot be reached (a
                :class:`~unistore.errors.StorageError`, as every failure of the backend is).
        """
        return await self._summed("count", query)

    async def cleanup(self) -> None:
        """Clean up each distinct provider once. Every provider is tried; the
        failures are logged and the first is re-raised."""
        failures: list[Exception] = []
        for provider in self._distinct_providers():
            try:
                await provider.cleanup()
            except Exception as exc:
                self._cleanup_failed(provider, exc)
                failures.append(exc)
        if failures:
            raise failures[0]


__all__ = ["CALLER_MISTAKES", "Routing", "UnifiedStorageManager", "rest"]
