"""The data model: what callers pass in and get back, and the checks on it.

The four dataclasses keep the field names the framework's storage interface has always used.
They are plain containers: building one never raises, so the checks live in the
``validate_*`` functions below, which every provider calls before it writes or
searches. Each check raises :class:`~unistore.errors.ValidationError` naming the
field, and returns the value in the form the record format stores (UTF-8 bytes,
microseconds since the Unix epoch).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Generic, NamedTuple, TypeVar
from uuid import UUID

from .errors import ValidationError

T = TypeVar("T")

Tags = dict[str, str]
"""An item's tags: tag key to tag value, both str."""

MAX_LIMIT = (1 << 63) - 1
"""The largest ``limit`` a query takes (a signed 64-bit count, as both cores hold it)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MICROSECOND = timedelta(microseconds=1)
MIN_MICROS = (datetime(1, 1, 1, tzinfo=timezone.utc) - _EPOCH) // _ONE_MICROSECOND
"""The first instant a ``datetime`` can hold once converted to UTC, in µs from the epoch."""
MAX_MICROS = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc) - _EPOCH) // _ONE_MICROSECOND
"""The last such instant."""


@dataclass
class StorageMetadata:
    """What the store knows about an item besides its data.

    ``created_at`` is kept when a key is saved again; ``updated_at`` is the time of
    the latest save. All datetimes are timezone-aware UTC with microsecond precision.

    Attributes:
        id: the item's id, kept when its key is saved again (a new one once it has expired).
        key: the key the item is stored under.
        content_type: the content type it was saved with.
        created_at: when the key was first saved (since it last expired).
        updated_at: when the key was last saved.
        expires_at: when the item stops being visible; None: never.
        tags: its tags, tag key to tag value, in key order.
    """

    id: UUID
    key: str
    content_type: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    tags: dict[str, str]


@dataclass
class StorageItem(Generic[T]):
    """An item's data with its metadata.

    Attributes:
        data: what was saved, as it decodes (tuples come back as lists).
        metadata: the item's :class:`StorageMetadata`.
    """

    data: T
    metadata: StorageMetadata


@dataclass
class StorageQuery:
    """Search criteria, all ANDed; ``None`` means "any".

    ``pattern`` is a Redis glob over the whole key; ``tags`` must all match
    exactly; the time bounds are inclusive, and an item without expiry never
    matches an ``expires_*`` bound; ``limit`` caps how many results are yielded.
    Fields are checked when the query runs, not when it is built.

    Attributes:
        pattern: a Redis glob (``*``, ``?``, ``[a-z]``, ``[^x]``, ``\\`` escapes) that the
            whole key must match, byte for byte as Redis's ``SCAN MATCH``.
        content_type: the content type items must have, exactly.
        tags: tags items must all have, with exactly these values.
        created_after: items created at or after this instant.
        created_before: items created at or before this instant.
        expires_after: items expiring at or after this instant (never one without expiry).
        expires_before: items expiring at or before this instant (never one without expiry).
        limit: the most results to yield, from 0 to 2**63 - 1; None: all.
        order_by: the order of the results: ``"key"``, ``"created_at"`` or
            ``"updated_at"``, with a leading ``-`` for descending (``"-created_at"``:
            newest first); ties are broken by key, then by content type, in the same
            direction. None: no particular order (the cheapest).
    """

    pattern: str | None = None
    content_type: str | None = None
    tags: dict[str, str] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    expires_after: datetime | None = None
    expires_before: datetime | None = None
    limit: int | None = None
    order_by: str | None = None


@dataclass
class StorageResult(Generic[T]):
    """One search hit. A search matches exactly, so its ``score`` is 1.0 and it has
    no ``highlights``; the manager's text retrieval (``retrieve``) sets both.

    Attributes:
        item: the item found.
        score: how well it matched, from 0.0 to 1.0; 1.0 for every search result.
        highlights: passages of the item's text where the retrieval's words occur.
    """

    item: StorageItem[T]
    score: float = 1.0
    highlights: list[str] = field(default_factory=list)


@dataclass
class StoragePage(Generic[T]):
    """One page of a walk through a query's results in order (``page``).

    Attributes:
        results: the page's results, in the query's order: exactly the size asked for,
            but on the last page.
        next: the cursor of the following page (an opaque, URL-safe str: give it to
            ``page`` with the same query); None on the last page.
    """

    results: list[StorageResult[T]]
    next: str | None


# -- time ---------------------------------------------------------------------


def now_micros() -> int:
    """The current time in microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def datetime_to_micros(value: datetime) -> int:
    """Microseconds since the epoch; a naive ``value`` is local time.

    Raises:
        ValueError: the instant is outside what a UTC ``datetime`` can hold.
    """
    try:
        naive = value.utcoffset() is None
    except Exception as exc:  # a tzinfo is user code: whatever it raises, the value is unusable
        raise ValueError(f"{value!r}: its tzinfo fails: {exc!r}") from exc
    if naive:
        try:
            value = value.astimezone()  # local time, as datetime.timestamp() reads it
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"{value!r} cannot be read as local time") from exc
    try:
        micros = (value - _EPOCH) // _ONE_MICROSECOND
    except Exception as exc:  # a datetime subclass or tzinfo that does not do arithmetic
        raise ValueError(f"{value!r} cannot be converted to UTC: {exc!r}") from exc
    if not MIN_MICROS <= micros <= MAX_MICROS:
        raise ValueError(f"{value!r} is outside the years 1 to 9999 in UTC")
    return micros


def micros_to_datetime(micros: int) -> datetime:
    """The aware UTC datetime for microseconds since the epoch."""
    return _EPOCH + timedelta(0, 0, micros)  # positional: measurably faster on the load path


# -- validation ---------------------------------------------------------------


def _utf8(value: str, field_name: str) -> bytes:
    try:
        return str.encode(value)  # str's own encode: a subclass may override it
    except UnicodeEncodeError as exc:
        raise ValidationError(f"{field_name} is not valid Unicode text: {exc.reason}") from exc


def validate_name(value: object, field_name: str) -> bytes:
    """A non-empty ``str`` (content type, namespace, tag key), as UTF-8."""
    if type(value) is str and value:  # the common case first: it runs on every load
        try:
            return value.encode()  # exactly a str: its own encode
        except UnicodeEncodeError:
            pass  # the checks below name the field
    if not isinstance(value, str):
        raise ValidationError(f"{field_name} must be a str, got {type(value).__name__}")
    if not value:
        raise ValidationError(f"{field_name} must not be empty")
    return _utf8(value, field_name)


def validate_wanted_type(content_type: object) -> bytes | None:
    """The content type an operation is narrowed to (``load``'s, ``delete``'s), as
    :func:`validate_name` checks it; None (any content type) stays None."""
    return None if content_type is None else validate_name(content_type, "content_type")


def validate_key(key: object) -> bytes:
    """A non-empty ``str`` of any length, as UTF-8 (providers store long keys in a
    form of their own; see the LMDB layout)."""
    return validate_name(key, "key")


def validate_keys(keys: object) -> dict[str, bytes]:
    """An iterable of keys (not one str), each as :func:`validate_key` checks it: each
    distinct key once, in first-seen order, with its UTF-8."""
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        raise ValidationError(f"keys must be an iterable of str keys, got {type(keys).__name__}")
    checked: dict[str, bytes] = {}
    for key in keys:
        if type(key) is not str or key not in checked:  # anything but a str is refused here
            checked[key] = validate_key(key)
    return checked


def validate_tags(tags: object, field_name: str = "tags") -> list[tuple[bytes, bytes]]:
    """A ``dict[str, str]`` (or ``None``) as UTF-8 pairs sorted by key."""
    if tags is None:
        return []
    if not isinstance(tags, dict):
        raise ValidationError(f"{field_name} must be a dict of str to str, got {type(tags).__name__}")
    pairs = []
    for tag_key, tag_value in tags.items():
        encoded_key = validate_name(tag_key, f"{field_name} key")
        if not isinstance(tag_value, str):
            raise ValidationError(f"{field_name}[{tag_key!r}] must be a str, got {type(tag_value).__name__}")
        pairs.append((encoded_key, _utf8(tag_value, f"{field_name}[{tag_key!r}]")))
    pairs.sort()
    return pairs


def validate_time(value: object, field_name: str) -> int | None:
    """``None`` or a ``datetime``, as microseconds since the epoch."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValidationError(f"{field_name} must be a datetime, got {type(value).__name__}")
    try:
        return datetime_to_micros(value)
    except ValueError as exc:
        raise ValidationError(f"{field_name}: {exc}") from exc


#: The fields a query can be ordered by.
ORDER_FIELDS = ("key", "created_at", "updated_at")


class Order(NamedTuple):
    """A checked ``order_by``: the field and the direction."""

    field: str
    descending: bool


def validate_order(order_by: object) -> Order | None:
    """``None``, or one of :data:`ORDER_FIELDS` with an optional leading ``-``.

    Raises:
        ValidationError: anything else.
    """
    if order_by is None:
        return None
    if isinstance(order_by, str):
        field_name = str.removeprefix(order_by, "-")  # str's own: a subclass may override it
        if field_name in ORDER_FIELDS:
            return Order(field_name, str.startswith(order_by, "-"))
    raise ValidationError(
        f"query.order_by must be None or one of {', '.join(ORDER_FIELDS)} (with a leading - for "
        f"descending), got {order_by!r}"
    )


@dataclass(frozen=True)
class QuerySpec:
    """A checked :class:`StorageQuery` in the record format's terms."""

    pattern: bytes | None
    content_type: bytes | None
    tags: list[tuple[bytes, bytes]]
    created_after: int | None
    created_before: int | None
    expires_after: int | None
    expires_before: int | None
    limit: int | None
    order: Order | None = None


def validate_query(query: object) -> QuerySpec:
    """Check every field of a :class:`StorageQuery`.

    Raises:
        ValidationError: naming the first bad field.
    """
    if not isinstance(query, StorageQuery):
        raise ValidationError(f"query must be a StorageQuery, got {type(query).__name__}")
    pattern = None
    if query.pattern is not None:
        if not isinstance(query.pattern, str):
            raise ValidationError(f"query.pattern must be a str, got {type(query.pattern).__name__}")
        pattern = _utf8(query.pattern, "query.pattern")
    content_type = None
    if query.content_type is not None:
        content_type = validate_name(query.content_type, "query.content_type")
    limit = query.limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_LIMIT):
        raise ValidationError(f"query.limit must be None or an int from 0 to 2**63 - 1, got {limit!r}")
    return QuerySpec(
        pattern=pattern,
        content_type=content_type,
        tags=validate_tags(query.tags, "query.tags"),
        created_after=validate_time(query.created_after, "query.created_after"),
        created_before=validate_time(query.created_before, "query.created_before"),
        expires_after=validate_time(query.expires_after, "query.expires_after"),
        expires_before=validate_time(query.expires_before, "query.expires_before"),
        limit=limit,
        order=validate_order(query.order_by),
    )


__all__ = [
    "MAX_LIMIT",
    "ORDER_FIELDS",
    "Order",
    "QuerySpec",
    "StorageItem",
    "StorageMetadata",
    "StoragePage",
    "StorageQuery",
    "StorageResult",
    "Tags",
    "datetime_to_micros",
    "micros_to_datetime",
    "now_micros",
    "validate_key",
    "validate_keys",
    "validate_name",
    "validate_order",
    "validate_query",
    "validate_tags",
    "validate_time",
    "validate_wanted_type",
]
