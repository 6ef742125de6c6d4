"""unistore: one async storage interface with pluggable providers.

The library logs to the ``unistore`` logger and adds nothing to it but a
:class:`logging.NullHandler`: where its records go is the application's choice,
and without one nothing reaches stderr (Python's last-resort handler never
sees them). See docs/observability.md for the levels.

Examples:
    >>> import asyncio
    >>> from unistore import UnifiedStorageManager, open_provider
    >>> async def main():
    ...     async with UnifiedStorageManager() as manager:
    ...         manager.register_provider("note", open_provider("memory://"))
    ...         await manager.save("greeting", {"text": "hi"}, "note", tags={"lang": "en"})
    ...         return (await manager.load("greeting", "note")).data
    >>> asyncio.run(main())
    {'text': 'hi'}
"""

import logging

from ._version import __version__ as __version__  # (one source: see _version)
from .core import NATIVE
from .errors import (
    ItemNotFoundError,
    ProviderNotFoundError,
    SerializationError,
    StorageConnectionError,
    StorageCorruptionError,
    StorageError,
    StoreNotFoundError,
    ValidationError,
)
from .manager import UnifiedStorageManager
from .metrics import MetricsManager, StorageMonitor
from .model import StorageItem, StorageMetadata, StoragePage, StorageQuery, StorageResult
from .providers.base import StorageProvider
from .syncmanager import SyncStorageManager
from .urls import open_provider

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "NATIVE",
    "ItemNotFoundError",
    "MetricsManager",
    "ProviderNotFoundError",
    "SerializationError",
    "StorageConnectionError",
    "StorageCorruptionError",
    "StorageError",
    "StorageItem",
    "StorageMetadata",
    "StorageMonitor",
    "StoragePage",
    "StorageProvider",
    "StorageQuery",
    "StorageResult",
    "StoreNotFoundError",
    "SyncStorageManager",
    "UnifiedStorageManager",
    "ValidationError",
    "open_provider",
]
