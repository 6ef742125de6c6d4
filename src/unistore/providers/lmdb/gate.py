"""The gate every LMDB transaction of this process passes: free for transactions, and
closed while an action that needs none running (growing the map, a fork, a reopen)
runs alone. Knows nothing of LMDB itself."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable


class EnvironmentGate:
    """Lets transactions run freely, and an action that needs none running run alone.

    ``enter``/``leave`` bracket every transaction of this process; ``exclusive``
    waits until none is running, holds new ones back and runs its action. It
    relies on the GIL making ``deque.append``/``deque.pop`` atomic and ordered:
    a transaction announces itself, then checks for a holder, while a holder
    marks itself, then checks for transactions, so neither can miss the other.
    Two lock-free deque operations cost far less than a lock pair on a read
    that takes microseconds; only a transaction that meets a holder pays more.

    An exclusive action may leave the gate *broken* (:meth:`mark_broken`): then
    the next transaction to arrive runs ``repair`` exclusively first, and fails
    with its error if it fails, until one succeeds.

    No thread waits for the gate while it is itself announced: a transaction
    that needs the others out of the way (one that filled the map must abort
    while no read starts, then grow) stalls new ones (:meth:`stall`), which waits for
    nothing, ends its transaction, leaves, and only then runs its action with
    ``exclusive(..., stalled=True)``. (Waiting while announced deadlocked: with
    a second writer announced and waiting for LMDB's write lock, with a fork or
    a repair waiting for the announced one.)
    """

    def __init__(self, repair: Callable[[], None]) -> None:
        # A deque, not a list: a list reallocates as it goes from empty to one and back.
        active: collections.deque[None] = collections.deque()
        self._active = active
        self._held = False
        self._broken = False
        self._stalls = 0
        self._open = threading.Event()
        self._open.set()
        self._holder = threading.Lock()
        self._repair = repair
        # Bound C methods, so a transaction pays no Python frame for them.
        self._announce: Callable[[None], None] = active.append
        self.leave: Callable[[], object] = active.pop

    def enter(self) -> None:
        """Announce a transaction, waiting out an exclusive action (and repairing a broken gate)."""
        self._announce(None)
        if self._held:
            self._enter_slowly()

    def _enter_slowly(self) -> None:
        while True:
            self.leave()
            self._open.wait()
            if self._broken:
                self.exclusive(self._mend)
            self._announce(None)
            if not self._held:
                return

    def _mend(self) -> None:
        if self._broken:  # another thread may have mended it while this one waited
            self._repair()
            self._broken = False

    def stall(self) -> None:
        """Hold new transactions back at once, waiting for nothing (the caller may be
        announced); the caller must then leave and call ``exclusive(..., stalled=True)``."""
        self._stalls += 1
        self._held = True
        self._open.clear()

    def hold(self) -> None:
        """Wait until no transaction runs, and hold new ones back until :meth:`release`.
        Never call it while announced."""
        self._holder.acquire()
        self._open.clear()
        self._held = True
        while self._active:
            time.sleep(0.0002)

    def release(self) -> None:
        """End a :meth:`hold`. A broken gate stays closed to the fast path until
        repaired; a stalled one until its staller's exclusive action has run."""
        self._held = self._broken or self._stalls > 0
        if not self._held or self._broken:
            self._open.set()
        self._holder.release()

    def mark_broken(self) -> None:
        """Say, while holding the gate, that ``repair`` must run before the next transaction."""
        self._broken = True

    def exclusive(self, action: Callable[[], None], stalled: bool = False) -> None:
        """Run ``action`` while no transaction of this process runs (``stalled``: the
        caller stalled the gate, and this ends its stall)."""
        self.hold()
        if stalled:
            self._stalls -= 1
        try:
            action()
        finally:
            self.release()

    def after_fork_in_child(self) -> None:
        """Forget the parent's threads: an announcement caught mid-flight, a waiter's lock."""
        self._active.clear()
        self._open = threading.Event()


__all__ = ["EnvironmentGate"]
