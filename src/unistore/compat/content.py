"""The framework's legacy ``ContentStorage`` on a unistore provider.

The framework's ``content/storage.py`` declares a synchronous interface::

    save(content) -> UUID        load(content_id: UUID) -> content        delete(content_id: UUID) -> None

:class:`ContentStorage` gives its call sites a unistore provider (LMDB, Redis,
memory, or any other) without changing them. It runs on a
:class:`~unistore.SyncStorageManager` of its own: an LMDB or memory provider is
called inline (no thread hop), any other on the manager's loop thread. Its methods
block their caller until the provider is done, from any thread, even one inside a
running event loop (which then waits, as it would on any blocking call, while the
call runs in a thread of its own: new async code should use the provider itself).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar, cast, overload
from uuid import UUID, uuid4

from ..errors import ItemNotFoundError, StorageError, ValidationError
from ..model import validate_name
from ..providers.base import StorageProvider
from ..syncmanager import SyncStorageManager
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

    The adapter runs on a :class:`~unistore.SyncStorageManager` of its own (its
    operations are measured as the manager's are). :meth:`close`, or leaving a
    ``with`` block, waits for the calls in progress and closes the manager (the
    provider's ``cleanup()``, and its loop thread if it has one); later calls raise
    ``StorageError``, and the provider stays usable elsewhere. Calls are safe from
    any number of threads, and a forked child goes on using it.

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
        #: The manager it runs on.
        self.manager = SyncStorageManager()
        self.manager.register_provider(content_type, provider)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when the last call in progress returns
        self._busy = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"ContentStorage({self.provider!r}, content_type={self.content_type!r})"

    def _run(self, call: Callable[[SyncStorageManager], R]) -> R:
        """``call(manager)``, counted as a call in progress (what :meth:`close` waits for);
        where an event loop runs in this thread (which the manager refuses), in a thread
        of its own while this one waits."""
        with self._lock:
            if self._closed:
                raise StorageError("this ContentStorage is closed")
            self._busy += 1
        try:
            return _blocking(lambda: call(self.manager), self._own_loop)
        finally:
            with self._lock:
                self._busy -= 1
                if not self._busy:
                    self._idle.notify_all()

    def _own_loop(self, what: str) -> None:
        """Refuse ``what`` made from the manager's loop thread (by code the provider runs
        there): it would wait for itself.

        Raises:
            StorageError: it was.
        """
        runner = self.manager._runner
        if runner is not None and threading.current_thread() is runner.thread:
            raise StorageError(
                f"ContentStorage{what} was called from its own event loop (by code its provider runs?), "
                "where it would wait for itself; call it from another thread"
            )

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
        self._run(lambda manager: manager.save(key, data, self.content_type))
        return content_id

    def load(self, content_id: UUID) -> C:
        """The content saved under ``content_id`` (through ``decode``, if given).

        Raises:
            ItemNotFoundError: no content has that id (or it has expired).
            ValidationError: ``content_id`` is not a UUID.
        """
        key = self._key(content_id)
        try:
            item = self._run(lambda manager: manager.load(key, self.content_type))
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
        if not self._run(lambda manager: manager.delete(key, self.content_type)):
            raise _not_found(content_id)

    def close(self) -> None:
        """Wait for the calls in progress and close the manager (the provider's
        ``cleanup()``, and the manager's loop thread); later calls raise
        :class:`~unistore.errors.StorageError`. Closing twice does nothing."""
        self._own_loop(".close")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._idle.wait_for(lambda: not self._busy)
        _blocking(self.manager.close, self._own_loop)

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


def _blocking(call: Callable[[], R], refuse: Callable[[str], None]) -> R:
    """``call()``, made in this thread; or, where an event loop runs in it (the sync manager
    refuses a loop's thread), in a thread of its own while this one waits. ``refuse``
    raises first if this thread is the manager's own loop (it would wait for itself)."""
    refuse("")
    if asyncio._get_running_loop() is None:
        return call()
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # (re-raised in the caller's thread)
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="unistore-content-call")
    worker.start()
    worker.join()
    done, value = outcome[0]
    if not done:
        raise value
    return cast(R, value)
