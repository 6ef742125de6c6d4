"""Adapters that give the framework's legacy storage interfaces the unistore backend.

- :class:`ContentStorage` (:mod:`unistore.compat.content`): the synchronous
  ``content/storage.py`` interface (``save``, ``load``, ``delete`` by UUID) on
  any provider.

The Redis memory-store retrieval lives in :mod:`unistore.compat.memory`; import
its names from there (this package imports only what every user needs).
"""

# Only the content adapter is imported here. The memory-store names (the Redis
# memory-store retrieval) live in unistore.compat.memory: import them from there.
from .content import ContentStorage

__all__ = ["ContentStorage"]
