r"""Hypothesis strategies for what a provider is given: keys, tags, data, items and queries.

They are built to meet each other: keys are drawn from a small alphabet rich in
glob characters (so patterns match some and miss others), tags and content
types from a few names (so queries find something), expiries from a few fixed
instants far in the past or the future (so an expiry never falls during a test,
and a bound on one lands on it exactly, to test that bounds are inclusive).

- :func:`keys`: odd keys: glob characters, braces, non-ASCII, and keys just
  under and over LMDB's 511-byte key limit (stored in a long-key form), which
  differ only in their last bytes.
- :func:`content_types`, :func:`tag_sets`, :func:`expiries`.
- :func:`data`: every storable kind: msgpack values (None, bools, 64-bit ints,
  floats, str, bytes, lists, maps), tuples, ``datetime`` (aware in several
  offsets, and naive: local time) and ``UUID``.
- :func:`items` and :func:`batches`: the arguments of a ``save`` and of a ``save_many``.
- :func:`patterns`: Redis globs from pieces that meet the keys: literals,
  escapes, classes (ranges, negations, unterminated), ``*`` and ``?``.
- :func:`query_shapes`: a :class:`QueryShape`, a query of up to three criteria
  and a limit whose key pattern, tags and ``created_*`` bounds are picked from
  what was saved when it runs (:meth:`QueryShape.query`), so they meet it;
  :func:`queries` are shapes resolved against nothing saved.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from ..model import StorageItem, StorageQuery

UTC = timezone.utc

# -- keys, names, expiries ------------------------------------------------------

LONG_KEY = "x" * 474 + "é" * 20
"""474 + 2 * 20 UTF-8 bytes: past LMDB's 506-byte key limit, with the 475-byte cut inside an 'é'."""
ODD_KEYS = [
    "a",
    "b",
    "ab",
    "a:b",
    "*",
    "?",
    "[",
    "]",
    "\\",
    "a*",
    "a\\*",
    "[a]",
    "{a}",
    "a{b}:c",
    "é",
    "日本",
    "y" * 506,  # the longest key LMDB stores as it is
    "y" * 507,  # the shortest it stores under a prefix and a digest
    LONG_KEY,
    LONG_KEY + "a",
    LONG_KEY + "b",
]
"""Keys that have broken providers: glob characters, braces (Redis Cluster hash tags), non-ASCII,
and keys around LMDB's key limit that differ only in their last bytes.
"""
KEY_ALPHABET = "ab:*?[]\\{}é"
"""The alphabet of drawn keys: glob characters among a few others."""
CONTENT_TYPES = ["ta", "tb", "é"]
"""The content types drawn: few, so that items meet, one of them not ASCII."""
TAG_NAMES = ["t", "u", "é"]
"""The tag names drawn."""
TAG_VALUES = ["x", "y", "", "*"]
"""The tag values drawn: the empty one and a glob character among them."""

FAR = datetime(2200, 1, 1, tzinfo=UTC)
"""A far-future instant. After 2255 a time is no longer exact as a double (Redis's sorted-set
scores), so expiries around it and around the last instant a datetime holds both occur.
"""
LAST = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
"""The last instant a ``datetime`` holds."""
PAST = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2000, 1, 1, tzinfo=UTC),
]
"""Expiries already past: accepted, and the item is invisible at once."""
FUTURE = [
    FAR,
    FAR + timedelta(microseconds=1),
    FAR + timedelta(microseconds=2),
    datetime(2300, 1, 1, tzinfo=UTC),
    LAST - timedelta(microseconds=1),
    LAST,
]
"""Expiries that never come during a test, some a microsecond apart."""


@functools.cache
def keys() -> st.SearchStrategy[str]:
    """Keys: one of :data:`ODD_KEYS`, or 1 to 4 characters of :data:`KEY_ALPHABET`."""
    return st.sampled_from(ODD_KEYS) | st.text(KEY_ALPHABET, min_size=1, max_size=4)


@functools.cache
def content_types() -> st.SearchStrategy[str]:
    """One of :data:`CONTENT_TYPES`."""
    return st.sampled_from(CONTENT_TYPES)


@functools.cache
def tag_sets() -> st.SearchStrategy[dict[str, str]]:
    """Up to two tags, names from :data:`TAG_NAMES` and values from :data:`TAG_VALUES` (the empty str too)."""
    return st.dictionaries(st.sampled_from(TAG_NAMES), st.sampled_from(TAG_VALUES), max_size=2)


@functools.cache
def expiries() -> st.SearchStrategy[datetime | None]:
    """No expiry (half the time), one of :data:`FUTURE` or one of :data:`PAST`."""
    return st.one_of(st.none(), st.none(), st.sampled_from(FUTURE), st.sampled_from(PAST))


# -- data ------------------------------------------------------------------------

_INTS = st.integers(-(2**63), 2**64 - 1)  # msgpack's integers
#: Offsets a stored datetime may carry: it comes back in UTC.
_OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
_DATETIMES = st.datetimes(  # a day inside the years 1 to 9999, so every offset stays in range in UTC
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.sampled_from(_OFFSETS)
) | st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1))  # naive: local time
_SCALARS = (
    st.none()
    | st.booleans()
    | _INTS
    | st.floats(allow_nan=False)  # NaN is stored, but equals nothing: no test could compare it
    | st.text(max_size=4)
    | st.binary(max_size=4)
    | _DATETIMES
    | st.uuids()
)
_MAP_KEYS = st.text(max_size=2) | _INTS | st.binary(max_size=2)


@functools.cache
def data() -> st.SearchStrategy[Any]:
    """Storable data of every kind, nested up to four leaves: what ``load`` returns is
    :func:`unistore.testing.model.stored_form` of it."""
    return st.recursive(
        _SCALARS,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.lists(inner, max_size=3).map(tuple)
            | st.dictionaries(_MAP_KEYS, inner, max_size=3)
        ),
        max_leaves=4,
    )


@dataclass(frozen=True)
class NewItem:
    """The arguments of one ``save``."""

    key: str
    data: Any
    content_type: str
    expires_at: datetime | None
    tags: dict[str, str]

    def as_batch(self) -> Batch:
        """The same save as a ``save_many`` of one item."""
        return Batch({self.key: self.data}, self.content_type, self.expires_at, self.tags)


@dataclass(frozen=True)
class Batch:
    """The arguments of one ``save_many``: distinct keys in the mapping's order."""

    items: dict[str, Any]
    content_type: str
    expires_at: datetime | None
    tags: dict[str, str]


@functools.cache
def items(values: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[NewItem]:
    """The arguments of a ``save``: a key, data (of :func:`data`, or of ``values``),
    content type, expiry and tags."""
    return st.builds(NewItem, keys(), data() if values is None else values, content_types(), expiries(), tag_sets())


@functools.cache
def batches(
    min_size: int = 0, max_size: int = 5, values: st.SearchStrategy[Any] | None = None
) -> st.SearchStrategy[Batch]:
    """The arguments of a ``save_many`` of ``min_size`` to ``max_size`` items (data of
    :func:`data`, or of ``values``)."""
    return st.builds(
        Batch,
        st.dictionaries(keys(), data() if values is None else values, min_size=min_size, max_size=max_size),
        content_types(),
        expiries(),
        tag_sets(),
    )


# -- patterns ---------------------------------------------------------------------

PATTERN_PARTS = ["a", "b", ":", "é", "{", "}", "*", "?", "[ab]", "[^a]", "[a-c]", "[*?]", "[\\]]", "[é]"]
"""Pattern pieces that meet :func:`keys`: literals, escapes, classes, wildcards, the long keys'
prefixes, an unterminated class and a lone backslash (literal where it ends a pattern).
"""
PATTERN_PARTS += ["\\*", "\\?", "\\[", "\\]", "\\\\", "[", "\\", "x" * 474, "y" * 506]


def escaped(text: str) -> str:
    """``text`` as a glob that matches it alone: its glob characters escaped."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


@dataclass(frozen=True)
class KeyPattern:
    """A pattern made from a saved key: the key escaped (it matches that key alone),
    its first or last ``size`` characters escaped beside a ``*``, or the key as it is
    (its glob characters act)."""

    which: int
    form: str
    size: int

    def pattern(self, keys: Sequence[str]) -> str | None:
        """The pattern for ``keys`` (the saved keys, in order; None if there are none)."""
        if not keys:
            return None
        key = keys[self.which % len(keys)]
        forms = {
            "raw": key,
            "exact": escaped(key),
            "prefix": escaped(key[: self.size]) + "*",
            "suffix": "*" + escaped(key[len(key) - self.size :]),
        }
        return forms[self.form]


@functools.cache
def patterns() -> st.SearchStrategy[str]:
    """Redis globs: up to five :data:`PATTERN_PARTS` joined."""
    return st.lists(st.sampled_from(PATTERN_PARTS), max_size=5).map("".join)


@functools.cache
def key_patterns() -> st.SearchStrategy[KeyPattern]:
    """Patterns made from a saved key when the query runs (:class:`KeyPattern`)."""
    return st.builds(
        KeyPattern, st.integers(0, 63), st.sampled_from(["exact", "prefix", "suffix", "raw"]), st.integers(0, 3)
    )


# -- queries ------------------------------------------------------------------------

Bound = tuple[int, int]
"""A bound on a time: which save's (created) or which instant (expires), nudged by -1, 0 or 1 µs."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FIRST, _LAST = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _MICROSECOND, (LAST - _EPOCH) // _MICROSECOND


def _nudged(moments: Sequence[datetime], bound: Bound | None, upper: bool) -> datetime | None:
    """The ``bound[0]``-th of ``moments`` counted from the earliest (lower bounds) or the
    latest (upper ones), so the simplest bound is the widest; nudged by ``bound[1]`` µs
    within the instants a datetime holds."""
    if bound is None or not moments:
        return None
    moment = sorted(moments, reverse=upper)[bound[0] % len(moments)]
    micros = (moment - _EPOCH) // _MICROSECOND + bound[1]
    return _EPOCH + timedelta(microseconds=min(max(micros, _FIRST), _LAST))


@dataclass(frozen=True)
class QueryShape:
    """A query whose parts are picked from what was saved when it runs.

    ``pattern`` may be a :class:`KeyPattern`; ``tags`` an int (the tags of that save);
    ``created_*`` bounds name a save (its ``created_at``), ``expires_*`` bounds one of
    the fixed instants (:data:`PAST` and :data:`FUTURE`).
    """

    pattern: str | KeyPattern | None = None
    content_type: str | None = None
    tags: dict[str, str] | int | None = None
    created_after: Bound | None = None
    created_before: Bound | None = None
    expires_after: Bound | None = None
    expires_before: Bound | None = None
    limit: int | None = None
    order_by: str | None = None

    def created_bounds(self, saved: Sequence[StorageItem[Any]]) -> tuple[datetime | None, datetime | None]:
        """The ``created_after`` and ``created_before`` bounds among the items ``saved``."""
        times = [item.metadata.created_at for item in saved]
        return _nudged(times, self.created_after, upper=False), _nudged(times, self.created_before, upper=True)

    def query(self, saved: Sequence[StorageItem[Any]]) -> StorageQuery:
        """The query for a store that the saves which returned ``saved`` made (every
        item a save returned, in order); parts that name a save are left out if there is none."""
        pattern = (
            self.pattern.pattern([item.metadata.key for item in saved])
            if isinstance(self.pattern, KeyPattern)
            else self.pattern
        )
        tags = self.tags
        if isinstance(tags, int):
            tags = saved[tags % len(saved)].metadata.tags if saved else None
        created_after, created_before = self.created_bounds(saved)
        instants = PAST + FUTURE
        return StorageQuery(
            pattern=pattern,
            content_type=self.content_type,
            tags=tags,
            created_after=created_after,
            created_before=created_before,
            expires_after=_nudged(instants, self.expires_after, upper=False),
            expires_before=_nudged(instants, self.expires_before, upper=True),
            limit=self.limit,
            order_by=self.order_by,
        )


CRITERIA = ["pattern", "content_type", "tags", "created_after", "created_before", "expires_after", "expires_before"]
"""The criteria a shape draws from."""
EVERYTHING = QueryShape()
"""The query of everything."""


@functools.cache
def _criterion_values() -> dict[str, st.SearchStrategy[Any]]:
    bounds = st.tuples(st.integers(0, 63), st.sampled_from([0, -1, 1]))
    return {
        "pattern": patterns() | key_patterns(),
        "content_type": content_types(),
        "tags": tag_sets() | st.integers(0, 63),
        "created_after": bounds,
        "created_before": bounds,
        "expires_after": bounds,
        "expires_before": bounds,
    }


_LIMITS = st.none() | st.integers(0, 4)
ORDERS = ["key", "-key", "created_at", "-created_at", "updated_at", "-updated_at"]
"""Every ``order_by`` a query takes."""
_ORDERS = st.none() | st.sampled_from(ORDERS)


@st.composite
def _query_shapes(draw: st.DrawFn, chosen: st.SearchStrategy[set[str]]) -> QueryShape:
    values = _criterion_values()
    names = draw(chosen)
    criteria = {name: draw(values[name]) for name in CRITERIA if name in names}
    return QueryShape(**criteria, limit=draw(_LIMITS), order_by=draw(_ORDERS))


@functools.cache
def query_shapes(max_criteria: int = 3) -> st.SearchStrategy[QueryShape]:
    """A :class:`QueryShape` of up to ``max_criteria`` criteria (more rarely match
    anything), a limit (0 to 4) or none, and an order (:data:`ORDERS`) or none."""
    return _query_shapes(st.sets(st.sampled_from(CRITERIA), max_size=max_criteria))


@functools.cache
def queries() -> st.SearchStrategy[StorageQuery]:
    """Queries on their own (a :class:`QueryShape` resolved with nothing saved: no
    ``created_*`` bounds, no pattern or tags taken from a save)."""
    return query_shapes().map(lambda shape: shape.query([]))
