"""The reference model: what a provider must answer, per DESIGN.md's pinned semantics.

A :class:`ReferenceModel` is a dict of the items a provider was told to keep,
each in the form ``load`` must return it (:func:`stored_form`). It answers
``load``, ``load_many``, ``delete``, ``delete_many``, ``search`` (ordered too:
:func:`ordered`), ``count`` and ``purge_expired`` the way the semantics say, with plain Python and no unistore
code but the dataclasses: the query match is :func:`query_matches` (every
criterion ANDed, time bounds inclusive, a Redis glob by
:func:`~unistore.testing.glob.glob_matches`).

What the model cannot know it is told: a save's time and a new item's id come
from the provider (``at=`` and ``id=``); the model decides all the rest (an
upsert of a live item keeps its id and ``created_at``; a save over an expired
one makes a new item). Which items a limited ``delete_matching`` takes is the
provider's choice too: the caller asks the provider, checks the choice against
:meth:`ReferenceModel.search`, and hands it to :meth:`ReferenceModel.remove`.

Every answer depends on ``now``, the instant expiry is judged at (the current
time by default): give items expiries far from now, or the model and the
provider may judge a boundary differently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from ..model import StorageItem, StorageMetadata, StorageQuery
from .glob import glob_matches

UTC = timezone.utc


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime; a naive one is local time, as ``datetime.timestamp()`` reads it."""
    return moment.astimezone(UTC)


def stored_form(data: Any) -> Any:
    """``data`` as ``load`` returns it: tuples become lists, datetimes aware UTC, the rest as it is."""
    if isinstance(data, (list, tuple)):
        return [stored_form(value) for value in data]
    if isinstance(data, dict):
        return {stored_form(key): stored_form(value) for key, value in data.items()}
    if isinstance(data, datetime):
        return as_utc(data)
    return data


def same_data(found: Any, expected: Any) -> bool:
    """Whether ``found`` is ``expected`` to the type of every value (``1``, ``1.0`` and
    ``True`` differ, as do ``0.0`` and ``-0.0``; a datetime must be in ``timezone.utc``);
    a mapping's order does not count."""
    if type(found) is not type(expected):
        return False
    if isinstance(found, list):
        return len(found) == len(expected) and all(map(same_data, found, expected))
    if isinstance(found, dict):
        found_keys = {key: key for key in found}  # each key as found, to compare its type too
        return len(found) == len(expected) and all(
            key in found_keys and same_data(found_keys[key], key) and same_data(found[key], value)
            for key, value in expected.items()
        )
    if isinstance(found, float):
        return found == expected and math.copysign(1.0, found) == math.copysign(1.0, expected)
    if isinstance(found, datetime):
        return found == expected and found.tzinfo is UTC
    return bool(found == expected)


def same_item(found: StorageItem[Any], expected: StorageItem[Any]) -> bool:
    """Whether ``found`` is ``expected``: the same data (:func:`same_data`) and metadata,
    every datetime of it in ``timezone.utc``."""
    meta = found.metadata
    times = (meta.created_at, meta.updated_at) + (() if meta.expires_at is None else (meta.expires_at,))
    return (
        same_data(found.data, expected.data)
        and meta == expected.metadata
        and type(meta.id) is UUID
        and all(moment.tzinfo is UTC for moment in times)
    )


def is_live(item: StorageItem[Any], now: datetime) -> bool:
    """Whether ``item`` is visible at ``now``: it has no expiry, or expires after ``now``."""
    expires = item.metadata.expires_at
    return expires is None or expires > now


def _within(moment: datetime | None, after: datetime | None, before: datetime | None) -> bool:
    """Whether ``moment`` meets both inclusive bounds; with a bound given, ``None`` meets none."""
    if after is None and before is None:
        return True
    return (
        moment is not None
        and (after is None or moment >= as_utc(after))
        and (before is None or moment <= as_utc(before))
    )


def query_matches(item: StorageItem[Any], query: StorageQuery) -> bool:
    """Whether a live ``item`` meets every criterion of ``query`` (its ``limit`` aside)."""
    meta = item.metadata
    return (
        (query.pattern is None or glob_matches(query.pattern, meta.key))
        and (query.content_type is None or meta.content_type == query.content_type)
        and all(meta.tags.get(name) == value for name, value in (query.tags or {}).items())
        and _within(meta.created_at, query.created_after, query.created_before)
        and _within(meta.expires_at, query.expires_after, query.expires_before)
    )


def order_key(order_by: str) -> Callable[[StorageItem[Any]], tuple[Any, ...]]:
    """What ``order_by`` sorts by, ascending (a leading ``-`` reverses it; see
    :func:`ordered`): the field (none for ``"key"``), then the key, then the content
    type, both compared as UTF-8 bytes."""
    field = order_by[1:] if order_by.startswith("-") else order_by
    moment: Callable[[StorageMetadata], tuple[Any, ...]] = (
        (lambda meta: ()) if field == "key" else (lambda meta: (getattr(meta, field),))
    )
    return lambda item: (*moment(item.metadata), item.metadata.key.encode(), item.metadata.content_type.encode())


def ordered(items: Iterable[StorageItem[Any]], order_by: str) -> list[StorageItem[Any]]:
    """``items`` in the order ``order_by`` names (descending with a leading ``-``)."""
    return sorted(items, key=order_key(order_by), reverse=order_by.startswith("-"))


class ReferenceModel:
    """The items a provider holds, and what each of its operations must answer.

    ``items`` maps each key to its item as ``load`` returns it, expired or not
    (until :meth:`purge` drops it); ``history`` lists every item a save made, in
    order; ``ids`` is every id an item was ever given.
    """

    def __init__(self) -> None:
        self.items: dict[str, StorageItem[Any]] = {}
        self.history: list[StorageItem[Any]] = []
        self.ids: set[UUID] = set()

    @staticmethod
    def _now(now: datetime | None) -> datetime:
        return datetime.now(UTC) if now is None else as_utc(now)

    def _live(self, key: str, content_type: str | None, now: datetime) -> StorageItem[Any] | None:
        item = self.items.get(key)
        if item is None or not is_live(item, now):
            return None
        return item if content_type in (None, item.metadata.content_type) else None

    def live(self, now: datetime | None = None) -> dict[str, StorageItem[Any]]:
        """Every item a reader sees at ``now``, by key."""
        moment = self._now(now)
        return {key: item for key, item in self.items.items() if is_live(item, moment)}

    def save(
        self,
        key: str,
        data: Any,
        content_type: str,
        expires_at: datetime | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        id: UUID,  # the field's name
        at: datetime,
    ) -> StorageItem[Any]:
        """The item a ``save`` made at ``at`` must return (and ``load`` return after it).

        Over a live item it keeps that item's id and ``created_at``; otherwise the
        item is new, with the id ``id`` and ``created_at`` = ``at``.
        """
        moment = as_utc(at)
        old = self._live(key, None, moment)
        metadata = StorageMetadata(
            id=id if old is None else old.metadata.id,
            key=key,
            content_type=content_type,
            created_at=moment if old is None else old.metadata.created_at,
            updated_at=moment,
            expires_at=None if expires_at is None else as_utc(expires_at),
            tags=dict(tags or {}),
        )
        item = StorageItem(stored_form(data), metadata)
        self.items[key] = item
        self.history.append(item)
        self.ids.add(metadata.id)
        return item

    def save_many(
        self,
        items: Mapping[str, Any],
        content_type: str,
        expires_at: datetime | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        ids: Sequence[UUID],
        at: Sequence[datetime],
    ) -> list[StorageItem[Any]]:
        """The items a ``save_many`` must return: each as :meth:`save` makes it, in the
        mapping's order, with the id and time the provider gave it."""
        return [
            self.save(key, data, content_type, expires_at, tags, id=new_id, at=moment)
            for (key, data), new_id, moment in zip(items.items(), ids, at, strict=True)
        ]

    def load(
        self, key: str, content_type: str | None = None, *, now: datetime | None = None
    ) -> StorageItem[Any] | None:
        """The item ``load`` returns, or None where it raises ``ItemNotFoundError``."""
        return self._live(key, content_type, self._now(now))

    def load_many(
        self, keys: Iterable[str], content_type: str | None = None, *, now: datetime | None = None
    ) -> dict[str, StorageItem[Any]]:
        """What ``load_many`` returns: the live items among ``keys``, each once, in first-asked order."""
        moment = self._now(now)
        found = {key: self._live(key, content_type, moment) for key in keys}
        return {key: item for key, item in found.items() if item is not None}

    def delete(self, key: str, content_type: str | None = None, *, now: datetime | None = None) -> bool:
        """What ``delete`` returns: whether a live item (of ``content_type``) went."""
        return self.delete_many([key], content_type, now=now) == 1

    def delete_many(self, keys: Iterable[str], content_type: str | None = None, *, now: datetime | None = None) -> int:
        """What ``delete_many`` returns: how many live items (of ``content_type``) it removes."""
        live = self.load_many(keys, content_type, now=now)
        self.remove(live)
        return len(live)

    def search(self, query: StorageQuery, *, now: datetime | None = None) -> dict[str, StorageItem[Any]]:
        """Every live item ``query`` matches, by key, its ``limit`` aside: a search with a
        limit yields ``min(limit, len(matches))`` of these, any of them."""
        return {key: item for key, item in self.live(now).items() if query_matches(item, query)}

    def in_order(self, query: StorageQuery, *, now: datetime | None = None) -> list[StorageItem[Any]]:
        """What an ordered search yields: the matches in the query's ``order_by``
        (``"key"`` when it names none, as a page does), the first ``limit`` of them."""
        found = ordered(self.search(query, now=now).values(), query.order_by or "key")
        return found if query.limit is None else found[: query.limit]

    def count(self, query: StorageQuery, *, now: datetime | None = None) -> int:
        """What ``count`` returns: how many live items match, up to the query's ``limit``."""
        found = len(self.search(query, now=now))
        return found if query.limit is None else min(found, query.limit)

    def delete_matching(self, query: StorageQuery, *, now: datetime | None = None) -> int:
        """What an unlimited ``delete_matching`` returns, removing the matches (with a
        ``limit`` the provider chooses which go: see :meth:`remove`)."""
        matches = self.search(query, now=now)
        self.remove(matches)
        return len(matches)

    def remove(self, keys: Iterable[str]) -> None:
        """Forget the items under ``keys`` (those a limited ``delete_matching`` took)."""
        for key in list(keys):
            self.items.pop(key, None)

    def purge(self, now: datetime | None = None) -> int:
        """Drop the expired items, as ``purge_expired`` does; no reader sees a change."""
        moment = self._now(now)
        expired = [key for key, item in self.items.items() if not is_live(item, moment)]
        self.remove(expired)
        return len(expired)
