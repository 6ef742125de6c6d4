"""The stateful test: random operations on a provider, held against the reference model.

:class:`ProviderMachine` is a hypothesis ``RuleBasedStateMachine``. Each run makes
one fresh provider and a :class:`~unistore.testing.model.ReferenceModel`, then
draws steps: saves, upserts of keys saved before, ``save_many`` batches, batches
spoiled by one bad item (refused whole: nothing written), ``load``, ``load_many``,
``delete``, ``delete_many``, searches (ordered or not, with ``count``), walks
through pages (at once, or a page a step while other steps write),
``delete_matching`` (limited or not), and purges. Every answer is checked against the model's, and after each step
that wrote, the whole store is compared with it (a search of everything, and
``load_many`` of every key ever saved). A failure shrinks to the shortest
sequence of steps that shows it.

The machine runs its own event loop, so it needs nothing but hypothesis.
Expiries are fixed instants far from now (:data:`~unistore.testing.strategies.PAST`,
:data:`~unistore.testing.strategies.FUTURE`): whether an item is live never
depends on when a step runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from ..errors import ItemNotFoundError, SerializationError, StorageError, ValidationError
from ..model import StorageItem, StorageQuery
from ..providers.base import StorageProvider
from . import strategies as kit
from .model import ReferenceModel, order_key, same_item

T = TypeVar("T")
Factory = Callable[[], StorageProvider[Any]]


class StoreHooks(Protocol):
    """What the machine asks of the suite that runs it (see :class:`~unistore.testing.ProviderConformance`)."""

    async def check_store(self, provider: StorageProvider[Any]) -> None:
        """Assert the provider's own invariants."""

    async def purge(self, provider: StorageProvider[Any]) -> None:
        """Run the provider's housekeeping (drop expired records)."""


async def outcome(call: Awaitable[T]) -> T | StorageError:
    """What ``call`` returns, or the :class:`StorageError` it raises."""
    try:
        return await call
    except StorageError as exc:
        return exc


async def perform(provider: StorageProvider[Any], write: kit.NewItem | kit.Batch) -> list[StorageItem[Any]]:
    """Make ``provider`` save ``write`` (a ``save``, or a ``save_many`` of a batch); what it returned."""
    if isinstance(write, kit.Batch):
        return await provider.save_many(write.items, write.content_type, write.expires_at, write.tags)
    return [await provider.save(write.key, write.data, write.content_type, write.expires_at, write.tags)]


def check_saved(model: ReferenceModel, found: list[StorageItem[Any]], write: kit.NewItem | kit.Batch) -> None:
    """Check what a provider's save of ``write`` returned against ``model``, and tell the model."""
    batch = write if isinstance(write, kit.Batch) else write.as_batch()
    assert [item.metadata.key for item in found] == list(batch.items), "items not in the mapping's order"
    known = set(model.ids)
    new = [item for item in found if model.load(item.metadata.key, now=item.metadata.updated_at) is None]
    expected = model.save_many(
        batch.items,
        batch.content_type,
        batch.expires_at,
        batch.tags,
        ids=[item.metadata.id for item in found],
        at=[item.metadata.updated_at for item in found],
    )
    for item, wanted in zip(found, expected, strict=True):
        assert same_item(item, wanted), f"saved {item}, expected {wanted}"
    new_ids = [item.metadata.id for item in new]
    assert len(set(new_ids)) == len(new_ids), f"two new items got one id: {new}"
    assert known.isdisjoint(new_ids), f"a new item got an id given before: {new}"


def check_found(model: ReferenceModel, items: list[StorageItem[Any]], what: str) -> set[str]:
    """The keys of the items a read returned, each checked to be once there and the model's item."""
    keys = [item.metadata.key for item in items]
    assert len(keys) == len(set(keys)), f"{what}: an item came back twice: {sorted(keys)}"
    for item in items:
        expected = model.items.get(item.metadata.key)
        assert expected is not None, f"{what}: {item}, which was never saved or was deleted"
        assert same_item(item, expected), f"{what}: {item}, expected {expected}"
    return set(keys)


async def check_search(provider: StorageProvider[Any], model: ReferenceModel, query: StorageQuery) -> None:
    """Search ``provider`` and check the results: exactly the model's matches, or
    ``min(limit, matches)`` of them, each once and as the model holds it; with an
    ``order_by``, exactly the first of them in that order. ``count`` agrees."""
    items = [result.item async for result in provider.search(query)]
    matches = model.search(query)
    wanted = len(matches) if query.limit is None else min(query.limit, len(matches))
    keys = check_found(model, items, f"search({query})")
    assert keys <= set(matches), f"{query}: found {sorted(keys - set(matches))}, which it does not match"
    assert len(keys) == wanted, f"{query}: found {len(keys)}, expected {wanted} of {sorted(matches)}"
    if query.order_by is not None:
        expected = [item.metadata.key for item in model.in_order(query)]
        assert [item.metadata.key for item in items] == expected, f"{query}: out of order"
    assert await provider.count(query) == model.count(query), f"count({query})"


async def check_pages(provider: StorageProvider[Any], model: ReferenceModel, query: StorageQuery, size: int) -> None:
    """Walk every page of ``query`` (nothing written meanwhile): the pages, each full but
    the last, concatenate to the model's ordered matches, and the last has no ``next``."""
    walked: list[StorageItem[Any]] = []
    cursor: str | None = None
    expected = [item.metadata.key for item in model.in_order(query)]
    pages, bound = 0, len(expected) // size + 1  # the pages there are
    while pages == 0 or cursor is not None:
        assert pages <= bound, f"pages of {query}, {size} a page: the walk does not end ({len(walked)} results)"
        page = await provider.page(query, size, cursor)
        assert len(page.results) == size or page.next is None, f"page({query}, {size}): a short page with a next"
        assert page.next is None or isinstance(page.next, str), f"page({query}): cursor {page.next!r}"
        assert page.next is None or page.next.isascii(), f"page({query}): cursor {page.next!r}"
        walked += [result.item for result in page.results]
        cursor, pages = page.next, pages + 1
    check_found(model, walked, f"pages of {query}")
    assert [item.metadata.key for item in walked] == expected, (
        f"pages of {query}, {size} a page: not the ordered matches"
    )


@dataclass
class Walk:
    """A walk through a query's pages, a page per step, while other steps write: the
    items it must meet once (those live and matching when it began, while they stay as
    they were), and what it met."""

    query: StorageQuery
    size: int
    first: dict[str, StorageItem[Any]]
    cursor: str | None = None
    met: list[StorageItem[Any]] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class Refusal:
    """A way to spoil a batch, after its good items: the error ``save_many`` must raise."""

    what: str
    spoil: Callable[[dict[str, Any]], Any]
    options: Mapping[str, Any]
    error: type[StorageError]


REFUSALS = [
    Refusal("data that is not storable", lambda items: {**items, "spoiler": object()}, {}, SerializationError),
    Refusal("a set deep in the data", lambda items: {**items, "spoiler": {"n": {1, 2}}}, {}, SerializationError),
    Refusal("an empty key", lambda items: {**items, "": 1}, {}, ValidationError),
    Refusal("a key that is not a str", lambda items: {**items, 5: 1}, {}, ValidationError),
    Refusal("a key that is not Unicode", lambda items: {**items, "\ud800": 1}, {}, ValidationError),
    Refusal("a tag value that is not a str", dict, {"tags": {"t": 5}}, ValidationError),
    Refusal("an expiry that is not a datetime", dict, {"expires_at": "tomorrow"}, ValidationError),
    Refusal("an empty content type", dict, {"content_type": ""}, ValidationError),
    Refusal("pairs, not a mapping", lambda items: list(items.items()), {}, ValidationError),
]
"""Bad input a ``save_many`` must refuse whole, writing nothing."""

#: Indexes into what was saved: a step picks keys that exist (or did).
_PICKS = st.lists(st.integers(0, 63), max_size=3)
_MAYBE_TYPE = st.none() | kit.content_types()


class ProviderMachine(RuleBasedStateMachine):
    """Random steps on one fresh provider, each checked against a :class:`ReferenceModel`.

    A subclass sets :attr:`make_provider` and :attr:`hooks`: :func:`machine_class` makes one.
    """

    make_provider: Factory
    """Makes the fresh, empty provider of a run."""
    hooks: StoreHooks
    """The suite's :meth:`~StoreHooks.check_store` and
    :meth:`~StoreHooks.purge`."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.provider = self.make_provider()
        self.model = ReferenceModel()
        self.written = False  # since the store was last compared whole with the model
        self.walking: Walk | None = None  # a walk through pages under way

    def run(self, call: Coroutine[Any, Any, T]) -> T:
        """The result of ``call``, run in the machine's loop."""
        return self.loop.run_until_complete(call)

    def picked(self, picks: list[int]) -> list[str]:
        """The keys of the saves that ``picks`` name."""
        history = self.model.history
        return [history[pick % len(history)].metadata.key for pick in picks]

    # -- writes ------------------------------------------------------------------

    @initialize(batch=kit.batches(min_size=3, max_size=8))
    def seed(self, batch: kit.Batch) -> None:
        """A store that holds something from the start, so the first reads find it."""
        self.save_many(batch)

    # Saves are drawn most often (three rules of nine), so the store holds something.
    @rule(new=kit.items())
    def save(self, new: kit.NewItem) -> None:
        """``save`` of a new item (or over one saved before, by chance)."""
        self.written = True
        check_saved(self.model, self.run(perform(self.provider, new)), new)

    @rule(new=kit.items(), which=st.integers(0, 63))
    def upsert(self, new: kit.NewItem, which: int) -> None:
        """``save`` over a key saved before: live (its id and created_at kept) or expired (a new item)."""
        [key] = self.picked([which])
        self.save(dataclasses.replace(new, key=key))

    @rule(batch=kit.batches())
    def save_many(self, batch: kit.Batch) -> None:
        """``save_many`` of new keys and keys saved before, one content type, expiry and tags."""
        self.written = True
        check_saved(self.model, self.run(perform(self.provider, batch)), batch)

    @rule(batch=kit.batches(max_size=3), refusal=st.sampled_from(REFUSALS))
    def refused_save_many(self, batch: kit.Batch, refusal: Refusal) -> None:
        """A batch with one bad item (or argument) after its good ones: refused whole."""
        self.written = True  # nothing was: the comparison after this step shows it
        arguments: dict[str, Any] = {
            "content_type": batch.content_type,
            "expires_at": batch.expires_at,
            "tags": batch.tags,
            **refusal.options,
        }
        error = self.run(outcome(self.provider.save_many(refusal.spoil(batch.items), **arguments)))
        assert isinstance(error, refusal.error), f"save_many of {refusal.what}: {error!r}, not {refusal.error.__name__}"

    @rule(picks=_PICKS, others=st.lists(kit.keys(), max_size=2), content_type=_MAYBE_TYPE)
    def delete(self, picks: list[int], others: list[str], content_type: str | None) -> None:
        """``delete`` of the first key (saved before, or any), and ``delete_many`` of them all."""
        self.written = True
        names = [*self.picked(picks), *others] or self.picked([0])
        first = self.run(self.provider.delete(names[0], content_type=content_type))
        assert first is self.model.delete(names[0], content_type), f"delete({names[0]!r}, {content_type!r})"
        count = self.run(self.provider.delete_many(names, content_type=content_type))
        assert count == self.model.delete_many(names, content_type), f"delete_many({names!r}, {content_type!r})"

    @rule(shape=kit.query_shapes())
    def delete_matching(self, shape: kit.QueryShape) -> None:
        """``delete_matching``: it removes what the query matches (with a limit, that many of them)."""
        self.written = True
        query = shape.query(self.model.history)
        matches = self.model.search(dataclasses.replace(query, limit=None))
        removed = self.run(self.provider.delete_matching(query))
        left = self.run(self.provider.load_many(list(matches)))
        gone = set(matches) - set(left)
        wanted = len(matches) if query.limit is None else min(query.limit, len(matches))
        assert removed == len(gone) == wanted, f"{query}: {len(matches)} match, {removed} said, {len(gone)} gone"
        self.model.remove(gone)

    @rule()
    def purge(self) -> None:
        """Housekeeping: no reader may see a change."""
        self.written = True
        self.run(self.hooks.purge(self.provider))
        self.model.purge()

    # -- reads -------------------------------------------------------------------

    @rule(picks=_PICKS, others=st.lists(kit.keys(), max_size=3), content_type=_MAYBE_TYPE)
    def load(self, picks: list[int], others: list[str], content_type: str | None) -> None:
        """``load_many`` of keys saved before and others (repeats, misses), and ``load`` of each."""
        names = [*self.picked(picks), *others]
        loaded = self.run(self.provider.load_many(names, content_type=content_type))
        expected = self.model.load_many(names, content_type)
        found = check_found(self.model, list(loaded.values()), f"load_many({names!r}, {content_type!r})")
        assert found == set(expected), f"load_many({names!r}, {content_type!r}): {sorted(found)}, not {list(expected)}"
        assert all(key == item.metadata.key for key, item in loaded.items()), "load_many: an item under another key"
        for key in names:
            one = self.run(outcome(self.provider.load(key, content_type=content_type)))
            assert isinstance(one, (StorageItem, ItemNotFoundError)), f"load({key!r}, {content_type!r}): {one!r}"
            got = [one] if isinstance(one, StorageItem) else []
            wanted = {key} if self.model.load(key, content_type) else set()
            assert check_found(self.model, got, f"load({key!r}, {content_type!r})") == wanted

    @rule(shape=kit.query_shapes())
    def search(self, shape: kit.QueryShape) -> None:
        """A search: exactly the matches, or ``min(limit, matches)`` of them, each once."""
        query = shape.query(self.model.history)
        self.run(check_search(self.provider, self.model, query))

    @rule(shape=kit.query_shapes(), size=st.integers(1, 4))
    def pages(self, shape: kit.QueryShape, size: int) -> None:
        """A walk of every page of a query at once: the ordered matches, page by page."""
        query = shape.query(self.model.history)
        self.run(check_pages(self.provider, self.model, query, size))

    @rule(shape=kit.query_shapes(), size=st.integers(1, 3))
    def walk(self, shape: kit.QueryShape, size: int) -> None:
        """One page of a walk that other steps write during (begun here if none is under
        way): each page holds live matches, in order, after the last page's; at the end,
        every item that stayed as it was when the walk began was met exactly once."""
        if self.walking is None:
            query = dataclasses.replace(shape.query(self.model.history), limit=None)
            self.walking = Walk(query, size, self.model.search(query))
        walk = self.walking
        page = self.run(self.provider.page(walk.query, walk.size, walk.cursor))
        items = [result.item for result in page.results]
        what = f"page of {walk.query} after {len(walk.met)}"
        check_found(self.model, items, what)
        assert {item.metadata.key for item in items} <= set(self.model.search(walk.query)), f"{what}: not a match"
        assert len(items) == walk.size or page.next is None, f"{what}: a short page with a next"
        keys = [order_key(walk.query.order_by or "key")(item) for item in walk.met[-1:] + items]
        descending = (walk.query.order_by or "").startswith("-")
        assert keys == sorted(keys, reverse=descending), f"{what}: out of order"
        assert len(set(keys)) == len(keys), f"{what}: a position met twice"
        walk.met += items
        walk.cursor = page.next
        if page.next is None:
            self.walking = None
            met = [item.metadata.key for item in walk.met]
            unchanged = [key for key, item in walk.first.items() if self.model.items.get(key) is item]
            assert all(met.count(key) == 1 for key in unchanged), (
                f"walk of {walk.query}: {met}, not each of {unchanged}"
            )

    @invariant()
    def store_equals_model(self) -> None:
        """After a step that wrote: a search of everything and ``load_many`` of every
        key ever saved find exactly the model's live items."""
        if not self.written:
            return
        self.written = False
        self.run(check_search(self.provider, self.model, StorageQuery()))
        every_key = sorted({item.metadata.key for item in self.model.history})
        loaded = self.run(self.provider.load_many(every_key))
        assert check_found(self.model, list(loaded.values()), "load_many(every key)") == set(self.model.live())

    def teardown(self) -> None:
        """Check the provider's own invariants, then clean it up and close the loop."""
        try:
            self.run(self.hooks.check_store(self.provider))
        finally:
            try:
                self.run(self.provider.cleanup())
            finally:
                self.loop.close()


STEPS = 10
"""Steps in one run of the machine."""


def machine_settings(base: settings) -> settings:
    """The machine's settings from a property test's: a run is :data:`STEPS` steps, each a
    few operations, so it takes a quarter of ``base.max_examples`` runs (at least 5)."""
    return settings(base, max_examples=max(base.max_examples // 4, 5), stateful_step_count=STEPS)


def machine_class(make_provider: Factory, hooks: StoreHooks) -> type[ProviderMachine]:
    """A :class:`ProviderMachine` whose runs use ``make_provider`` and ``hooks``."""

    class Machine(ProviderMachine):
        pass

    Machine.make_provider = staticmethod(make_provider)
    Machine.hooks = hooks
    return Machine


def run_machine(make_provider: Factory, hooks: StoreHooks, base: settings) -> None:
    """Run :class:`ProviderMachine` on providers that ``make_provider`` makes, with
    :func:`machine_settings` of ``base``.

    Raises:
        AssertionError (or the error a step raised): the shrunk failing steps are reported.
    """
    run_state_machine_as_test(machine_class(make_provider, hooks), settings=machine_settings(base))
