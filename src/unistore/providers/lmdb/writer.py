"""Group commit: one thread that commits queued write operations in batches.

The writer knows nothing of LMDB: it is handed the function that commits a
batch (a list of operations in, one outcome per operation out) and calls it
from its own thread. Each submitter awaits its own future; a batch costs one
transaction and one fsync however many operations it holds, and one wake-up of
each event loop that is waiting on it (per-operation wake-ups measured as a
third of the cost of a batched save).

The thread never dies silently: an error that escapes a batch fails that
batch's callers and the thread goes on; should the thread itself end, every
queued caller gets a :class:`~unistore.errors.StorageError` and later
submissions are refused, so that the environment starts another writer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from ...errors import StorageError

_logger = logging.getLogger(__name__)

#: Most operations one group commit takes.
MAX_BATCH = 1024

Op = Callable[..., Any]  # runs inside a write transaction and returns the operation's result
Outcome = tuple[bool, Any]  # (True, result) or (False, exception)
Commit = Callable[[list[Op]], list[Outcome]]
# What a submitter queues: (op, its loop, its future). A plain tuple: one is made per write.
_Pending = tuple[Op, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _resolve_all(settled: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for future, (ok, value) in settled:
        if future.cancelled():  # the caller gave up waiting; the write itself stands
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _settle(batch: list[_Pending], outcomes: list[Outcome]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
    for (_, loop, future), outcome in zip(batch, outcomes, strict=True):
        by_loop.setdefault(loop, []).append((future, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve_all, settled)


class GroupCommitWriter:
    """A thread committing what :meth:`submit` queues, a batch at a time, through ``commit``.

    Args:
        commit: applies a batch of operations in one transaction; one outcome per operation.
        name: the thread's name.
    """

    def __init__(self, commit: Commit, name: str) -> None:
        self._commit = commit
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        # Set by the writer, under the lock, before it looks at the queue and sleeps;
        # a submitter appends, then wakes it only if it said so: one deque append per
        # operation while the writer is busy, instead of a lock and a notify.
        self._idle = False
        #: Why the thread ended, if it ended other than by :meth:`stop`.
        self.failure: BaseException | None = None
        #: False once the thread is stopping or has ended: then :meth:`submit` refuses.
        self.accepting = True
        #: Transactions committed so far (each with one fsync in durable modes).
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, op: Op, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        """Queue ``op``; ``future`` (of ``loop``) gets its result or error once it is committed.

        Raises:
            StorageError: the thread has ended.
        """
        if not self.accepting:
            why = f"it failed: {self.failure!r}" if self.failure is not None else "the store was closed"
            raise StorageError(f"the group-commit writer has stopped ({why}); nothing was written")
        self._queue.append((op, loop, future))
        if self._idle:
            with self._wake:
                self._wake.notify()

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        self.accepting = False
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        try:
            while self._serve_one():
                pass
        except BaseException as exc:  # beyond any one batch: the thread ends, and says so to everyone
            self.failure = exc
            self.accepting = False
            _logger.critical("unistore group-commit writer %s stopped: %r", self._thread.name, exc)
            pending = list(self._queue)
            self._queue.clear()
            _settle(pending, [(False, _stopped(exc))] * len(pending))

    def _serve_one(self) -> bool:
        """Commit one batch; False once stopped with nothing left."""
        with self._wake:
            self._idle = True
            while not self._queue and not self._stopping:
                self._wake.wait()
            self._idle = False
            if not self._queue:
                return False
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
        try:
            outcomes = self._commit([op for op, _, _ in batch])
        except Exception as exc:  # beyond any one op (growing the map failed): the batch fails
            outcomes = [(False, exc)] * len(batch)
        except BaseException as exc:  # the thread is going down: its batch must not wait forever
            _settle(batch, [(False, _stopped(exc))] * len(batch))
            raise
        self.batches += 1
        _settle(batch, outcomes)
        return True


def _stopped(cause: BaseException) -> StorageError:
    error = StorageError(f"the group-commit writer stopped ({cause!r}); the write may not have landed")
    error.__cause__ = cause
    return error


__all__ = ["MAX_BATCH", "GroupCommitWriter", "Op", "Outcome"]
