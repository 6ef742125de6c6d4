"""The legacy Redis memory store's interface on unistore.

The framework's ``memory/stores/redis.py`` stored ``MemoryEntry`` objects and
answered a ``MemoryQuery`` with ``MemorySearchResult(entry, score, highlights,
metadata)``. :class:`UnifiedMemoryStore` keeps that interface (``initialize``,
``store``, ``retrieve``, ``delete``, ``cleanup``) and these shapes, as plain
dataclasses with the same fields and defaults, over any provider, through
:meth:`unistore.UnifiedStorageManager.retrieve`:

- ``MemoryQuery.query`` is the text: results are ranked by the share of its
  words found in the entry's value, with the passages that hold them as
  ``highlights``. ``"*"`` asks for no text criterion: every entry the filters
  select, score 1.0 and no highlights, as the legacy store answered.
- ``filters`` (``type``, ``scope``), ``metadata`` (equality of each value),
  ``key``, ``keys``, ``min_score``, ``offset`` and ``limit`` select as they
  did; ``index_type``, ``order_by`` and ``order`` are accepted and ignored
  (the legacy store ignored them too; order is by score, then key).
- An entry is stored under its key, its value as the item's data (so only
  the value is searched), type, scope and metadata as tags (``memory.type``,
  ``memory.scope``, ``memory.meta.<name>`` holding the JSON of the value), so
  every filter is an indexed tag lookup. ``created_at`` comes back as the
  store's; ``expires_at`` (or the store's ``ttl``) becomes the item's expiry.

Errors are unistore's (:class:`~unistore.ValidationError` for a bad query,
:class:`~unistore.StorageError` for the rest), not the legacy ``MemoryError``.
See docs/compat-memory.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Generic, TypeVar

from ..errors import ValidationError
from ..manager import UnifiedStorageManager
from ..model import StorageItem, StorageQuery
from ..urls import open_provider

T = TypeVar("T")

TYPE_TAG = "memory.type"
"""The tag keys an entry's type, scope and metadata are stored under."""
SCOPE_TAG = "memory.scope"
META_TAG_PREFIX = "memory.meta."
ANY_TEXT = "*"
"""The text of a :class:`MemoryQuery` that asks for no text criterion."""


class MemoryType(str, Enum):
    """How long a memory is meant to last (the legacy enum)."""

    SHORT_TERM = "short_term"
    MEDIUM_TERM = "medium_term"
    LONG_TERM = "long_term"


class MemoryScope(str, Enum):
    """Whose memory it is (the legacy enum)."""

    SESSION = "session"
    AGENT = "agent"
    GLOBAL = "global"


class MemoryIndex(str, Enum):
    """The legacy index kinds; every one is served by the same word match here."""

    SEMANTIC = "semantic"
    TEMPORAL = "temporal"
    SPATIAL = "spatial"
    CAUSAL = "causal"
    CONTEXTUAL = "contextual"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class MemoryEntry(Generic[T]):
    """One memory: the legacy ``MemoryEntry``'s fields and defaults."""

    key: str
    value: T
    type: MemoryType = MemoryType.SHORT_TERM
    scope: MemoryScope = MemoryScope.SESSION
    created_at: datetime = field(default_factory=_now)
    expires_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class MemoryQuery:
    """The legacy ``MemoryQuery``: what to retrieve (see the module docstring)."""

    query: str = ANY_TEXT
    index_type: MemoryIndex = MemoryIndex.SEMANTIC
    filters: dict[str, Any] = field(default_factory=dict)
    limit: int = 10
    offset: int = 0
    min_score: float = 0.0
    key: str | None = None
    keys: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    order_by: str | None = None
    order: str | None = None


@dataclass
class MemorySearchResult(Generic[T]):
    """One retrieved memory, with its relevance ``score`` (0 to 1) and ``highlights``."""

    entry: MemoryEntry[T]
    score: float
    highlights: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def _meta_tag(value: Any, name: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"memory metadata {name!r} must be a JSON value, got {value!r}") from exc


def _enum_value(value: Any) -> str:
    """An enum member's value, or the value itself (callers may pass the plain string)."""
    return value.value if isinstance(value, Enum) else str(value)


def _member_value(enum: type[Enum], value: Any, field_name: str) -> str:
    """The value of the member of ``enum`` that ``value`` is or names.

    Raises:
        ValidationError: ``value`` is none of ``enum``'s (it could not be read back).
    """
    try:
        return str(enum(_enum_value(value)).value)
    except ValueError as exc:
        allowed = ", ".join(repr(member.value) for member in enum)
        raise ValidationError(f"MemoryEntry.{field_name} must be one of {allowed}, got {value!r}") from exc


def _glob_escape(key: str) -> str:
    """``key`` as a glob that matches only itself."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", key)


def _entry(item: StorageItem[Any]) -> MemoryEntry[Any]:
    tags = item.metadata.tags
    metadata = {
        name[len(META_TAG_PREFIX) :]: json.loads(value)
        for name, value in tags.items()
        if name.startswith(META_TAG_PREFIX)
    }
    return MemoryEntry(
        key=item.metadata.key,
        value=item.data,
        type=MemoryType(tags.get(TYPE_TAG, MemoryType.SHORT_TERM.value)),
        scope=MemoryScope(tags.get(SCOPE_TAG, MemoryScope.SESSION.value)),
        created_at=item.metadata.created_at,
        expires_at=item.metadata.expires_at,
        metadata=metadata,
    )


def _checked(query: MemoryQuery) -> MemoryQuery:
    if not isinstance(query, MemoryQuery):
        raise ValidationError(f"query must be a MemoryQuery, got {type(query).__name__}")
    if not isinstance(query.query, str) or not query.query.strip():
        raise ValidationError(f"MemoryQuery.query must be a non-empty str ({ANY_TEXT!r} for any), got {query.query!r}")
    for name, low in (("limit", 1), ("offset", 0)):
        value = getattr(query, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValidationError(f"MemoryQuery.{name} must be an int >= {low}, got {value!r}")
    if query.keys is not None and not isinstance(query.keys, (list, tuple, set, frozenset)):
        raise ValidationError(f"MemoryQuery.keys must be a list of keys, got {query.keys!r}")
    return query


class UnifiedMemoryStore(Generic[T]):
    """The legacy memory store's interface over a :class:`~unistore.UnifiedStorageManager`.

    Args:
        manager: the manager; it must have a provider for ``content_type``.
        content_type: the content type memories are stored under.
        name: the store's name (the legacy ``BaseMemoryStore.name``).
        ttl: seconds an entry lives when it has no ``expires_at`` (None: forever),
            as the legacy ``RedisConfig.ttl``.
    """

    def __init__(
        self,
        manager: UnifiedStorageManager,
        content_type: str = "memory",
        *,
        name: str = "unistore",
        ttl: float | None = None,
    ) -> None:
        self.manager = manager
        self.content_type = content_type
        self.name = name
        self.ttl = ttl
        self.is_initialized = False
        self._owns_manager = False

    @classmethod
    def from_url(cls, url: str, content_type: str = "memory", *, ttl: float | None = None) -> UnifiedMemoryStore[T]:
        """A store on a manager of its own over the provider at ``url`` (see
        :func:`unistore.open_provider`); :meth:`cleanup` closes it."""
        manager = UnifiedStorageManager()
        manager.register_provider(content_type, open_provider(url))
        store: UnifiedMemoryStore[T] = cls(manager, content_type, ttl=ttl)
        store._owns_manager = True
        return store

    async def initialize(self) -> None:
        """Mark the store ready (the legacy life cycle; nothing to connect ahead)."""
        self.is_initialized = True

    async def cleanup(self) -> None:
        """Release the store: its manager's providers if :meth:`from_url` made it."""
        self.is_initialized = False
        if self._owns_manager:
            await self.manager.cleanup()

    async def store(self, entry: MemoryEntry[T]) -> None:
        """Store ``entry`` under its key, replacing an entry stored there.

        Raises:
            ValidationError: not a :class:`MemoryEntry`, or a bad key, type, scope or metadata.
            SerializationError: the value cannot be stored.
        """
        if not isinstance(entry, MemoryEntry):
            raise ValidationError(f"entry must be a MemoryEntry, got {type(entry).__name__}")
        tags = {
            TYPE_TAG: _member_value(MemoryType, entry.type, "type"),
            SCOPE_TAG: _member_value(MemoryScope, entry.scope, "scope"),
        }
        for name, value in dict(entry.metadata).items():
            tags[f"{META_TAG_PREFIX}{name}"] = _meta_tag(value, name)
        expires_at = entry.expires_at
        if expires_at is None and self.ttl is not None:
            expires_at = _now() + timedelta(seconds=self.ttl)
        await self.manager.save(entry.key, entry.value, self.content_type, expires_at, tags)

    async def retrieve(self, query: MemoryQuery) -> AsyncIterator[MemorySearchResult[T]]:
        """The entries ``query`` selects, best first, from ``offset``, at most ``limit``.

        Raises:
            ValidationError: a bad query field (when iterated).
        """
        _checked(query)
        tags = {f"{META_TAG_PREFIX}{name}": _meta_tag(value, name) for name, value in dict(query.metadata).items()}
        for name, tag in (("type", TYPE_TAG), ("scope", SCOPE_TAG)):
            if name in query.filters:
                tags[tag] = _enum_value(query.filters[name])
        keys = None if query.keys is None else set(query.keys)
        wanted = query.offset + query.limit
        search = StorageQuery(
            pattern=None if query.key is None else _glob_escape(query.key),
            content_type=self.content_type,
            tags=tags or None,
            limit=wanted if keys is None else None,  # a key list filters after: count after it
        )
        text = None if query.query.strip() == ANY_TEXT else query.query
        position = 0
        async for result in self.manager.retrieve(search, text, min_score=query.min_score):
            if keys is not None and result.item.metadata.key not in keys:
                continue
            position += 1
            if position > query.offset:
                yield MemorySearchResult(_entry(result.item), result.score, result.highlights)
            if position == wanted:
                break

    async def delete(self, key: str) -> None:
        """Delete the entry under ``key``; a missing one is fine (as the legacy store's DEL).

        Raises:
            ValidationError: a bad key.
        """
        await self.manager.delete(key, self.content_type)

    async def load(self, key: str) -> MemoryEntry[T]:
        """The entry under ``key``.

        Raises:
            ItemNotFoundError: no live entry under ``key`` (also a ``KeyError``).
        """
        item = await self.manager.load(key, self.content_type)
        return _entry(item)


__all__ = [
    "ANY_TEXT",
    "META_TAG_PREFIX",
    "SCOPE_TAG",
    "TYPE_TAG",
    "MemoryEntry",
    "MemoryIndex",
    "MemoryQuery",
    "MemoryScope",
    "MemorySearchResult",
    "MemoryType",
    "UnifiedMemoryStore",
]
