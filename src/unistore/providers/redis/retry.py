"""What the Redis provider does when Redis says "not now": which errors time will fix,
how long it waits for them, and how every Redis error becomes a unistore one.

Transient (retried with backoff, then :class:`~unistore.StorageConnectionError`):

- a lost or refused connection (a server restarting, a master that died);
- ``TRYAGAIN`` (a multi-key command or script whose keys a slot migration has split),
  ``CLUSTERDOWN`` (a cluster electing a new master), ``LOADING`` (a server reading its
  data back), ``MASTERDOWN`` (a replica cut off from its master), ``BUSY`` (another
  client's script running long);
- a redirection that keeps redirecting (``MOVED`` and ``ASK`` are followed at once;
  only a chain of them that does not settle waits).

Not retried: a command that got no answer within ``socket_timeout`` (a stalled server
would cost that much again on every attempt; the caller gets a
:class:`~unistore.StorageConnectionError` it may retry), and every refusal that time
does not fix (a read-only replica, ``OOM``, a missing ACL permission, a bad argument).

The backoff is redis-py's own pure policy object; :func:`policy` gives the loop, and
:meth:`~redis.asyncio.retry.Retry.call_with_retry` is the only place that waits.
"""

from __future__ import annotations

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import StorageConnectionError, StorageError


class ServerBusy(ResponseError):
    """``BUSY``: the server runs another client's script past its busy threshold."""

    def __str__(self) -> str:
        return f"BUSY {super().__str__()}"


class Unsettled(RedisConnectionError):
    """Redirections that did not settle within a few hops, or a shard that kept moving
    under a read: the cluster is changing; try again shortly."""


#: The replies and failures that time fixes.
TRANSIENT: tuple[type[Exception], ...] = (
    RedisConnectionError,  # Unsettled included
    TryAgainError,
    ClusterDownError,
    BusyLoadingError,
    MasterDownError,
    ServerBusy,
)
#: The redirections a router follows at once.
REDIRECTIONS = (MovedError, AskError)

#: How often a transient failure is retried: one server (a restart costs a few tries,
#: about 0.3 s) and a cluster (a failover or a slot migration takes seconds: about 10 s
#: of backoff in all, 20 ms doubling to a 0.5 s cap).
RETRIES_SERVER = 3
RETRIES_CLUSTER = 24


def retries(cluster: bool) -> int:
    """How many times a transient failure is retried (see :data:`RETRIES_CLUSTER`)."""
    return RETRIES_CLUSTER if cluster else RETRIES_SERVER


def backoff() -> ExponentialBackoff:
    """The wait before each retry: 20 ms, doubling, 0.5 s at most."""
    return ExponentialBackoff(cap=0.5, base=0.02)


def policy(cluster: bool) -> Retry:
    """The retry loop for one operation's attempts (a new one each time: redis-py's keeps
    the backoff's state while it runs)."""
    return Retry(backoff(), retries(cluster), supported_errors=TRANSIENT)


#: What :func:`translated` reports as "unreachable or busy".
_UNREACHABLE: tuple[type[BaseException], ...] = (*TRANSIENT, *REDIRECTIONS, OSError)


def transient(error: BaseException) -> bool:
    """Whether time may fix ``error`` (a reply or a failure)."""
    return isinstance(error, TRANSIENT)


def translation(error: BaseException) -> StorageError | None:
    """The unistore error for a Redis error (or an OS error on its socket), or None for any
    other exception (it passes as it is): the one place they are translated (every command
    runs in a step of its connection, which raises this ``from`` the original)."""
    if isinstance(error, AuthenticationError):
        return StorageConnectionError(f"Redis refused the credentials: {error}")
    if isinstance(error, RedisTimeoutError):
        return StorageConnectionError(f"Redis is unreachable or did not answer in time: {error}")
    if isinstance(error, _UNREACHABLE):
        return StorageConnectionError(f"Redis is unreachable or busy (retried with backoff): {error}")
    if isinstance(error, ReadOnlyError):
        return StorageError(f"Redis refused a write: the server is a read-only replica (write to its master): {error}")
    if isinstance(error, OutOfMemoryError):
        return StorageError(
            f"Redis is out of memory (maxmemory reached); nothing was written. Free memory "
            f"(delete or purge items) or raise maxmemory: {error}"
        )
    if isinstance(error, NoPermissionError):
        return StorageError(f"Redis refused the operation: the ACL user lacks a permission: {error}")
    if isinstance(error, RedisError):
        return StorageError(f"Redis refused the operation: {error}")
    return None


__all__ = [
    "REDIRECTIONS",
    "RETRIES_CLUSTER",
    "RETRIES_SERVER",
    "TRANSIENT",
    "ServerBusy",
    "Unsettled",
    "backoff",
    "policy",
    "retries",
    "transient",
    "translation",
]
