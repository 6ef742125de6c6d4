"""The synchronous manager, for code that is not async: scripts, WSGI apps, notebooks,
the framework's synchronous call sites.

:class:`SyncStorageManager` is :class:`~unistore.manager.UnifiedStorageManager`'s
registry and operations without ``await``: the routing, the validation, the metrics and
the logs are the same code (:class:`~unistore.manager.Routing`). A provider that has a
synchronous engine (LMDB, memory: :meth:`StorageProvider.synchronous`) is called inline,
with no event loop and no thread (a hop to another thread costs about 200 µs here, fifty
LMDB reads). Any other provider (Redis, or one of your own) runs on an event loop the
manager keeps in a thread of its own (:class:`LoopThread`), started by the first call that
needs it and stopped by :meth:`SyncStorageManager.close`.

Called from a coroutine (a thread whose event loop is running), every method refuses with
:class:`~unistore.errors.StorageError`: blocking there would stall the loop, and the async
manager is the one to use.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import threading
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from . import ordering
from .errors import StorageError
from .index import CompiledQuery
from .manager import Routing, _close, _Instruments, _label, _perf_counter, rest
from .metrics import MetricsManager
from .model import StorageItem, StoragePage, StorageQuery, StorageResult, Tags
from .providers.base import StorageProvider, SyncEngine

R = TypeVar("R")


class LoopThread:
    """An event loop running in a daemon thread of its own, for one process.

    Args:
        name: the thread's name.
    """

    def __init__(self, name: str) -> None:
        self.pid = os.getpid()
        #: Calls submitted and not yet returned (what :meth:`stop` waits for), and whether it has begun.
        self.busy = 0
        self.stopping = False
        self._idle = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:  # whatever a provider left open on this loop (async generators) is closed with it
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def run(self, make: Callable[[], Coroutine[Any, Any, R]]) -> R:
        """Run the coroutine ``make()`` on the loop and wait for its outcome (never call it
        from the loop's own thread: it would wait for itself).

        Raises:
            StorageError: the loop began to stop before the call.
        """
        with self._idle:
            if self.stopping:
                raise StorageError("the SyncStorageManager was closed as this call began; it reopens on the next")
            self.busy += 1
        try:
            return asyncio.run_coroutine_threadsafe(make(), self.loop).result()
        finally:
            with self._idle:
                self.busy -= 1
                self._idle.notify_all()

    def stop(self) -> None:
        """Wait for the calls in flight, then end the loop and its thread."""
        with self._idle:
            self.stopping = True
            self._idle.wait_for(lambda: not self.busy)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


class _OnLoop:
    """A provider without a synchronous engine, made one: each call runs its coroutine on
    the manager's loop thread, and waits."""

    def __init__(self, provider: StorageProvider[Any], loop: Callable[[], LoopThread]) -> None:
        self._provider, self._loop = provider, loop

    def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        return self._loop().run(lambda: self._provider.save(key, data, content_type, expires_at, tags))

    def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        return self._loop().run(lambda: self._provider.load(key, content_type=content_type))

    def delete(self, key: str, *, content_type: str | None = None) -> bool:
        return self._loop().run(lambda: self._provider.delete(key, content_type=content_type))

    def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        return self._loop().run(lambda: self._provider.save_many(items, content_type, expires_at, tags))

    def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        return self._loop().run(lambda: self._provider.load_many(keys, content_type=content_type))

    def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        return self._loop().run(lambda: self._provider.delete_many(keys, content_type=content_type))

    def delete_matching(self, query: StorageQuery | CompiledQuery) -> int:
        return self._loop().run(lambda: self._provider.delete_matching(query))

    def count(self, query: StorageQuery | CompiledQuery) -> int:
        return self._loop().run(lambda: self._provider.count(query))

    def search(self, query: StorageQuery | CompiledQuery) -> Generator[StorageResult[Any], None, None]:
        results = self._provider.search(query)
        loop = self._loop()

        async def following() -> StorageResult[Any]:
            return await anext(results)

        try:
            while True:
                try:
                    result = loop.run(following)
                except StopAsyncIteration:
                    return
                yield result
        finally:  # (closed early: the provider's search ends now, on its loop)
            loop.run(lambda: _close(results))

    def close(self) -> None:
        self._loop().run(self._provider.cleanup)


_running_loop = asyncio._get_running_loop


def _in_a_coroutine(operation: str) -> StorageError:
    """The refusal of a call made where an event loop runs (it would block the loop)."""
    return StorageError(
        f"SyncStorageManager.{operation} was called from a coroutine, where it would block the event "
        f"loop: in async code use UnifiedStorageManager (await manager.{operation}(...))"
    )


def _outside_a_loop(operation: str) -> None:
    """Refuse a call made where an event loop runs.

    Raises:
        StorageError: it was.
    """
    if _running_loop() is not None:
        raise _in_a_coroutine(operation)


class SyncStorageManager(Routing):
    """One front for many providers, chosen by content type, for code that is not async:
    :class:`~unistore.manager.UnifiedStorageManager`'s methods, each returning its result
    (``search`` and ``retrieve`` an iterator). Use ``with`` to close it on exit.

    Safe to use from many threads at once. A forked child may go on using it (a provider
    run on the loop thread gets a loop of the child's own).

    Args:
        metrics: where operations are measured; the process-wide registry by default.
    """

    def __init__(self, metrics: MetricsManager | None = None) -> None:
        super().__init__(metrics)
        #: Each provider's synchronous face, by its id (with the provider, so a reused id is told apart).
        self._engines: dict[int, tuple[StorageProvider[Any], SyncEngine]] = {}
        self._lock = threading.Lock()
        self._runner: LoopThread | None = None
        #: By (operation, content type): the engine's method and the metrics (see :meth:`_route`).
        self._routes: dict[tuple[str, str], tuple[Callable[..., Any], _Instruments]] = {}

    def _loop(self) -> LoopThread:
        """The loop thread (started now if need be; a forked child starts its own)."""
        runner = self._runner
        if runner is None or runner.pid != os.getpid():
            with self._lock:
                runner = self._runner
                if runner is None or runner.pid != os.getpid():
                    runner = self._runner = LoopThread(f"unistore-sync-{id(self):x}")
        return runner

    def _engine(self, provider: StorageProvider[Any]) -> SyncEngine:
        found = self._engines.get(id(provider))
        if found is not None and found[0] is provider:
            return found[1]
        engine = provider.synchronous() or _OnLoop(provider, self._loop)
        self._engines[id(provider)] = (provider, engine)
        return engine

    def _measured(self, operation: str, content_type: str, call: Callable[[], R]) -> R:
        """Run ``call``, the provider's part of ``operation``, and account for it."""
        instruments = self._instruments.get((operation, content_type)) or self._instruments_of(operation, content_type)
        started = _perf_counter()
        try:
            result = call()
        except BaseException as exc:
            instruments.finish(started, exc)
            raise
        instruments.finish(started, None)
        return result

    def register_provider(self, content_type: str, provider: StorageProvider[Any]) -> None:
        """As :meth:`UnifiedStorageManager.register_provider <unistore.manager.Routing.register_provider>`."""
        super().register_provider(content_type, provider)
        self._routes.clear()

    def _call(self, operation: str, routed: str, /, *args: Any, **kwargs: Any) -> Any:
        """The engine's ``operation`` for the content type ``routed`` called with ``args``
        and ``kwargs``, and accounted for: the one path of every operation on one content type."""
        if _running_loop() is not None:
            raise _in_a_coroutine(operation)
        route = (self._routes.get((operation, routed)) if type(routed) is str else None) or self._route(
            operation, routed
        )
        call, instruments = route
        started = _perf_counter()
        try:
            result = call(*args, **kwargs)
        except BaseException as exc:
            instruments.finish(started, exc)
            raise
        instruments.finish(started, None)
        return result

    def _route(self, operation: str, content_type: str) -> tuple[Callable[..., Any], _Instruments]:
        """The engine's method of ``operation`` for ``content_type``, and its metrics (kept
        for the next call; a registration forgets them).

        Raises:
            ValidationError: a bad content type.
            ProviderNotFoundError: none registered (accounted as a failed ``operation``).
        """
        engine = self._engine(self._provider(content_type, operation))
        route = self._routes[operation, content_type] = (
            getattr(engine, operation),
            self._instruments_of(operation, content_type),
        )
        return route

    def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        """As :meth:`UnifiedStorageManager.save <unistore.manager.UnifiedStorageManager.save>`."""
        item: StorageItem[Any] = self._call("save", content_type, key, data, content_type, expires_at, tags)
        return item

    def load(self, key: str, content_type: str) -> StorageItem[Any]:
        """As :meth:`UnifiedStorageManager.load <unistore.manager.UnifiedStorageManager.load>`."""
        item: StorageItem[Any] = self._call("load", content_type, key, content_type=content_type)
        return item

    def delete(self, key: str, content_type: str) -> bool:
        """As :meth:`UnifiedStorageManager.delete <unistore.manager.UnifiedStorageManager.delete>`."""
        return bool(self._call("delete", content_type, key, content_type=content_type))

    def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        """As :meth:`UnifiedStorageManager.save_many <unistore.manager.UnifiedStorageManager.save_many>`."""
        saved: list[StorageItem[Any]] = self._call("save_many", content_type, items, content_type, expires_at, tags)
        return saved

    def load_many(self, keys: Iterable[str], content_type: str) -> dict[str, StorageItem[Any]]:
        """As :meth:`UnifiedStorageManager.load_many <unistore.manager.UnifiedStorageManager.load_many>`."""
        found: dict[str, StorageItem[Any]] = self._call("load_many", content_type, keys, content_type=content_type)
        return found

    def delete_many(self, keys: Iterable[str], content_type: str) -> int:
        """As :meth:`UnifiedStorageManager.delete_many <unistore.manager.UnifiedStorageManager.delete_many>`."""
        return int(self._call("delete_many", content_type, keys, content_type=content_type))

    def delete_matching(self, query: StorageQuery) -> int:
        """As :meth:`~unistore.manager.UnifiedStorageManager.delete_matching`."""
        _outside_a_loop("delete_matching")
        return self._measured(
            "delete_matching",
            _label(getattr(query, "content_type", None)),
            lambda: self._summed("delete_matching", query),
        )

    def count(self, query: StorageQuery) -> int:
        """As :meth:`UnifiedStorageManager.count <unistore.manager.UnifiedStorageManager.count>`."""
        _outside_a_loop("count")
        return self._measured(
            "count", _label(getattr(query, "content_type", None)), lambda: self._summed("count", query)
        )

    def _summed(self, operation: str, query: StorageQuery) -> int:
        compiled, providers = self._summing(operation, query)
        total = 0
        for provider in providers:
            asked = rest(compiled, total)
            if asked is None:
                break
            total += int(getattr(self._engine(provider), operation)(asked))
        return total

    def search(self, query: StorageQuery) -> Iterator[StorageResult[Any]]:
        """As :meth:`UnifiedStorageManager.search <unistore.manager.UnifiedStorageManager.search>`;
        an iterator (closing it, or leaving a ``for`` early, ends the providers' searches)."""
        return self._search(query, "search", None, 0.0)

    def retrieve(
        self, query: StorageQuery, text: str | None = None, *, min_score: float = 0.0
    ) -> Iterator[StorageResult[Any]]:
        """As :meth:`UnifiedStorageManager.retrieve <unistore.manager.UnifiedStorageManager.retrieve>`."""
        return self._search(query, "retrieve", text, min_score)

    def _search(
        self, query: StorageQuery, operation: str, text: str | None, min_score: float
    ) -> Iterator[StorageResult[Any]]:
        _outside_a_loop(operation)
        instruments = self._instruments_of(operation, _label(getattr(query, "content_type", None)))
        started = _perf_counter()
        try:
            compiled, providers, ranking, limit = self._retrieval(query, text, min_score)
            results = self._fan_out(compiled, providers)
            if ranking is None:
                yield from results
            else:
                for result in results:
                    ranking.add(result.item)
                yield from ranking.best(limit)
        except BaseException as exc:
            instruments.finish(started, exc)
            raise
        instruments.finish(started, None)

    def _fan_out(self, compiled: CompiledQuery, providers: list[StorageProvider[Any]]) -> Iterator[StorageResult[Any]]:
        """The results of ``compiled`` from each of ``providers``, up to its limit in all: one
        provider after another, or, for an ordered query, their ordered streams merged."""
        order = compiled.spec.order
        streams = [self._engine(provider).search(compiled) for provider in providers]
        try:
            if order is None:
                merged: Iterator[StorageResult[Any]] = itertools.chain.from_iterable(streams)
            else:
                merged = heapq.merge(*streams, key=ordering.result_key(order), reverse=order.descending)
            yield from itertools.islice(merged, compiled.spec.limit)
        finally:  # (a caller that stops early ends each provider's search now)
            for stream in streams:
                stream.close()

    def page(self, query: StorageQuery, size: int, cursor: str | None = None) -> StoragePage[Any]:
        """As :meth:`UnifiedStorageManager.page <unistore.manager.UnifiedStorageManager.page>`."""
        _outside_a_loop("page")

        def page() -> StoragePage[Any]:
            request = ordering.page_request(query, size, cursor)
            return ordering.finish_page(request, list(self._fan_out(request.compiled, self._providers_of(query))))

        return self._measured("page", _label(getattr(query, "content_type", None)), page)

    def close(self) -> None:
        """Close each distinct provider once (its engine, or its ``cleanup`` on the loop
        thread), then stop the loop thread. Every provider is tried; the failures are
        logged and the first is re-raised. The manager may be used again afterwards."""
        _outside_a_loop("close")
        failures: list[Exception] = []
        try:
            for provider in self._distinct_providers():
                try:
                    self._engine(provider).close()
                except Exception as exc:
                    self._cleanup_failed(provider, exc)
                    failures.append(exc)
        finally:
            with self._lock:
                runner, self._runner = self._runner, None
            if runner is not None and runner.pid == os.getpid():
                runner.stop()
        if failures:
            raise failures[0]

    def cleanup(self) -> None:
        """The same as :meth:`close` (the async manager's name for it)."""
        self.close()

    def __enter__(self) -> SyncStorageManager:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["LoopThread", "SyncStorageManager"]
