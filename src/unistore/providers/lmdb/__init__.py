"""The embedded default provider: LMDB, by layer.

- :mod:`.layout`: the on-disk format (database names, key encodings, namespaces);
- :mod:`.environment`: the shared environment, its gate, growth, fork safety;
- :mod:`.writer`: the group-commit thread (handed the function that commits);
- :mod:`.engine`: :class:`LmdbEngine`, one namespace with a synchronous API;
- :mod:`.check`: the integrity check;
- :mod:`.provider`: :class:`LmdbStorageProvider`, the engine's async face.
"""

from .engine import LmdbEngine
from .provider import LmdbStorageProvider

__all__ = ["LmdbEngine", "LmdbStorageProvider"]
