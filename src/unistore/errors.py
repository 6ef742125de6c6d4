"""The errors unistore raises.

Every error is a :class:`StorageError`; a few also mix in the builtin a caller
would naturally catch::

    StorageError
     ├── ItemNotFoundError        (also KeyError)   missing or expired key
     ├── ProviderNotFoundError    (also ValueError) no provider for a content type
     ├── ValidationError          (also ValueError) bad key, tags, times, query, option
     ├── SerializationError       (also TypeError)  data that cannot be stored
     ├── StorageConnectionError                     backend unreachable after retries
     ├── StorageCorruptionError                     a stored record that does not decode
     ├── StoreNotFoundError                         a store or namespace that must exist does not
     └── MissingExtraError        (also ImportError) an optional dependency is not installed

Backend exceptions never leak raw: providers re-raise them as the most specific
of these with the original chained as ``__cause__``.
"""

from __future__ import annotations

from typing import Any


class StorageError(Exception):
    """Base of every unistore error.

    Args:
        message: what went wrong, naming the field or key involved.
        details: optional machine-readable context (never credentials).
    """

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details) if details else {}

    def __str__(self) -> str:
        return self.message


class ItemNotFoundError(StorageError, KeyError):
    """The key does not exist, has expired, or is stored under another content type."""

    # KeyError.__str__ would wrap the message in quotes; keep StorageError's.
    __str__ = StorageError.__str__


class ProviderNotFoundError(StorageError, ValueError):
    """No provider is registered for the content type."""


class ValidationError(StorageError, ValueError):
    """An argument is not acceptable; the message names the field. Nothing was written."""


class SerializationError(StorageError, TypeError):
    """The data is not a msgpack value, ``datetime``, ``UUID`` or ``bytes``. Nothing was written."""


class StorageConnectionError(StorageError):
    """The backend could not be reached, after retrying with backoff."""


class StorageCorruptionError(StorageError):
    """A stored record does not decode; ``details["key"]`` names it when known."""


class StoreNotFoundError(StorageError):
    """A store or namespace that was to be opened as it is (maintenance, reads from the
    command line) does not exist; nothing was created. The message names it."""


class MissingExtraError(StorageError, ImportError):
    """An optional dependency (an exporter's, the conformance kit's) is not installed; the
    message says how to install it.

    Both a :class:`~unistore.StorageError` (the CLI reports it as a user error)
    and an :class:`ImportError` (what ``import`` of a missing module raises).
    """


def missing_extra(module: str, package: str, extra: str) -> MissingExtraError:
    """The error for ``module``, which needs ``package``, installed by unistore's extra ``extra``."""
    return MissingExtraError(
        f"{module} needs {package}, which is not installed: pip install 'unistore[{extra}]'",
        {"module": module, "package": package, "extra": extra},
    )


__all__ = [
    "ItemNotFoundError",
    "MissingExtraError",
    "ProviderNotFoundError",
    "SerializationError",
    "StorageConnectionError",
    "StorageCorruptionError",
    "StorageError",
    "StoreNotFoundError",
    "ValidationError",
]
