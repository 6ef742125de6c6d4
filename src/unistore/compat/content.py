"""The framework's legacy ``ContentStorage`` on a unistore provider.

The framework's ``content/storage.py`` declares a synchronous interface::

    save(content) -> UUID        load(content_id: UUID) -> content        delete(content_id: UUID) -> None

:class:`ContentStorage` gives its call sites a unistore provider (LMDB, Redis,
memory, or any other) without changing them. Providers are async, so the
adapter runs its provider on an event loop of its own, in a thread it owns:
its methods block their caller until the provider is done, from any thread,
even one inside a running event loop (which then waits, as it would on any
blocking call: new async code should use the provider itself).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Generic, TypeVar, overload
from uuid import UUID, uuid4

from ..errors import ItemNotFoundError, StorageError, ValidationError
from ..model import validate_name
from ..providers.base import StorageProvider
from ..urls import open_provider

C = TypeVar("C")
R = TypeVar("R")

DEFAULT_CONTENT_TYPE = "content"
"""The content type the adapter stores content under, unless told otherwise."""


def content_id_of(content: object) -> UUID:
    """The id a content is saved under by default: its own ``id`` attribute when that is a
    UUID (as the framework's content models carry one), so that saving it again
    replaces it; otherwise a new random UUID."""
    own = getattr(content, "id", None)
    return own if isinstance(own, UUID) else uuid4()


class _LoopThread:
    """An event loop running in a daemon thread of its own, for one process."""

    def __init__(self, name: str) -> None:
        self.pid = os.getpid()
        #: Calls of this process submitted and not yet returned (guarded by the adapter's lock).
        self.busy = 0
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
        """Run the coroutine ``make()`` on the loop and wait for its outcome."""
        if threading.current_thread() is self.thread:  # it would wait for itself forever
            raise StorageError(
                "ContentStorage was called from its own event loop (by code its provider runs?), "
                "where it would wait for itself; call it from another thread"
            )
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result()

    def stop(self) -> None:
        """End the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


class ContentStorage(Generic[C]):
    """The legacy synchronous ``ContentStorage`` on a unistore provider.

    Each content is one item under the key ``str(content_id)`` and the content
    type ``content_type`` (so one provider can hold content beside other items,
    and a load never returns an item of another type).

    Args:
        provider: the provider to store content in, or a URL for
            :func:`unistore.open_provider` (the adapter then owns it).
        content_type: the content type of the items it stores.
        encode: turns a content into storable data (a msgpack value, with
            ``datetime``, ``UUID`` and ``bytes``); None: the content is stored
            as it is, so it must be storable itself. For a pydantic model,
            ``encode=lambda c: c.model_dump(mode="json")``; for a dataclass,
            ``dataclasses.asdict``.
        decode: turns stored data back into a content (e.g. ``Content.model_validate``);
            None: the data is returned as stored (tuples come back as lists).
        content_id: the id a content is saved under; by default
            :func:`content_id_of` (the content's own UUID ``id``, else a new one).

    An unknown id raises :class:`~unistore.errors.ItemNotFoundError` from
    ``load`` and ``delete``: the legacy interface declares no error type of its
    own, and this one is also a ``KeyError`` (what a legacy call site that
    guards a lookup most likely catches) and a ``StorageError`` (what new
    code catches).

    The adapter runs the provider on a private event loop in a thread it owns,
    started on first use (and again in a forked child, which does not inherit
    threads). :meth:`close`, or leaving a ``with`` block, waits for the calls
    in progress, releases what the provider holds on that loop (its
    ``cleanup()``) and ends the thread; later calls raise ``StorageError``, and
    the provider stays usable elsewhere. Calls are safe from any number of threads.

    Raises:
        ValidationError: a bad content type, an unknown URL, or a provider
            that is not a :class:`~unistore.StorageProvider`.
    """

    @overload
    def __init__(
        self: ContentStorage[Any],
        provider: StorageProvider[Any] | str,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        encode: Callable[[Any], Any] | None = None,
        decode: None = None,
        content_id: Callable[[Any], UUID] = content_id_of,
    ) -> None: ...

    @overload
    def __init__(
        self,
        provider: StorageProvider[Any] | str,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        encode: Callable[[C], Any] | None = None,
        decode: Callable[[Any], C],
        content_id: Callable[[C], UUID] = content_id_of,
    ) -> None: ...

    def __init__(
        self,
        provider: StorageProvider[Any] | str,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        encode: Callable[[C], Any] | None = None,
        decode: Callable[[Any], C] | None = None,
        content_id: Callable[[C], UUID] = content_id_of,
    ) -> None:
        validate_name(content_type, "content_type")
        if isinstance(provider, str):
            provider = open_provider(provider)
        if not isinstance(provider, StorageProvider):
            raise ValidationError(f"provider must be a StorageProvider or a URL, got {type(provider).__name__}")
        #: The provider the content is stored in.
        self.provider = provider
        self.content_type = content_type
        self._encode = encode
        self._decode = decode
        self._content_id = content_id
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a runner's last call returns
        self._runner: _LoopThread | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"ContentStorage({self.provider!r}, content_type={self.content_type!r})"

    def _run(self, make: Callable[[], Coroutine[Any, Any, R]]) -> R:
        """Run a provider coroutine on the adapter's loop (started now if need be) and wait for it."""
        with self._lock:
            if self._closed:
                raise StorageError("this ContentStorage is closed")
            runner = self._runner
            if runner is None or runner.pid != os.getpid():  # first use, or a forked child (no parent threads)
                runner = self._runner = _LoopThread(f"unistore-content-{id(self):x}")
            runner.busy += 1  # close() waits for it: its loop must outlive the call
        try:
            return runner.run(make)
        finally:
            with self._lock:
                runner.busy -= 1
                if not runner.busy:
                    self._idle.notify_all()

    def _key(self, content_id: object) -> str:
        if not isinstance(content_id, UUID):
            raise ValidationError(f"content_id must be a UUID, got {type(content_id).__name__}")
        return str(content_id)

    def save(self, content: C) -> UUID:
        """Store ``content``, replacing any content under the same id; returns its id.

        Raises:
            ValidationError: the ``content_id`` callable returned something other than a UUID.
            SerializationError: the content (as ``encode`` made it) cannot be stored.
        """
        content_id = self._content_id(content)
        key = self._key(content_id)
        data = content if self._encode is None else self._encode(content)
        self._run(lambda: self.provider.save(key, data, self.content_type))
        return content_id

    def load(self, content_id: UUID) -> C:
        """The content saved under ``content_id`` (through ``decode``, if given).

        Raises:
            ItemNotFoundError: no content has that id (or it has expired).
            ValidationError: ``content_id`` is not a UUID.
        """
        key = self._key(content_id)
        try:
            item = self._run(lambda: self.provider.load(key, content_type=self.content_type))
        except ItemNotFoundError as exc:
            raise _not_found(content_id) from exc
        return item.data if self._decode is None else self._decode(item.data)

    def delete(self, content_id: UUID) -> None:
        """Remove the content saved under ``content_id``.

        Raises:
            ItemNotFoundError: no content has that id.
            ValidationError: ``content_id`` is not a UUID.
        """
        key = self._key(content_id)
        if not self._run(lambda: self.provider.delete(key, content_type=self.content_type)):
            raise _not_found(content_id)

    def close(self) -> None:
        """Wait for the calls in progress, release what the provider holds on the adapter's
        loop and end its thread; later calls raise :class:`~unistore.errors.StorageError`.
        Closing twice does nothing."""
        with self._lock:
            runner = self._runner
            if runner is not None and threading.current_thread() is runner.thread:
                raise StorageError(
                    "ContentStorage.close was called from its own event loop; call it from another thread"
                )
            if self._closed:
                return
            self._closed = True
            self._runner = None
            if runner is None or runner.pid != os.getpid():  # never started in this process: nothing to release
                return
            # A forked child's runner is its own (the check above), so only its own calls are counted.
            self._idle.wait_for(lambda: not runner.busy)
        try:
            runner.run(self.provider.cleanup)
        finally:
            runner.stop()

    def __enter__(self) -> ContentStorage[C]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _not_found(content_id: UUID) -> ItemNotFoundError:
    return ItemNotFoundError(f"no content with id {content_id}", {"key": str(content_id), "content_id": content_id})


__all__ = ["DEFAULT_CONTENT_TYPE", "ContentStorage", "content_id_of"]
