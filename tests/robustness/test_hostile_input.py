"""Hostile input (issue 12): hypothesis-made junk in every public argument of the
manager, the providers, ``open_provider`` and the command line.

Wrong types, lone surrogates, NUL bytes, huge ints, cyclic structures, naive and
aware datetimes (and a tzinfo that fails), malformed patterns and URLs, str
subclasses, bytes for str, floats for ints, bools. Only a
:class:`~unistore.StorageError` may come out (the command line: an exit status and
one line on stderr, no traceback), and a refused call writes nothing: the store's
whole content is the same before and after it.

Each example runs one call on a fresh, seeded store, so that what a call that
succeeded wrote (junk can be valid) never blurs the next example's comparison.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from helpers import Factory
from unistore import (
    StorageError,
    StorageItem,
    StorageMetadata,
    StorageProvider,
    StorageQuery,
    UnifiedStorageManager,
    open_provider,
)
from unistore.cli import main
from unistore.metrics import MetricsManager
from unistore.providers import MemoryStorageProvider

# -- junk ----------------------------------------------------------------------------------------


class Text(str):
    """A str subclass that behaves."""


class Shifty(str):
    """A str subclass that lies about itself: its encode, hash and equality are not str's."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        return b"\xff not what it is"

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False


class FailingZone(tzinfo):
    """A tzinfo whose every answer is an exception (user code can do that)."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no offset here")

    def dst(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no dst here")


def _cyclic_list() -> list[Any]:
    inner: list[Any] = ["x"]
    inner.append(inner)
    return inner


def _cyclic_dict() -> dict[str, Any]:
    inner: dict[str, Any] = {"x": 1}
    inner["self"] = inner
    return inner


_ZONES = st.sampled_from([timezone.utc, timezone(timedelta(hours=14)), timezone(-timedelta(hours=23, minutes=59))])
plain_datetimes = (
    st.datetimes()
    | st.datetimes(timezones=_ZONES)
    | st.sampled_from([datetime.min, datetime.max, datetime.min.replace(tzinfo=timezone(timedelta(hours=14)))])
)
# Built, not sampled: hypothesis would hash it, and hashing asks the zone.
datetimes = plain_datetimes | st.builds(lambda: datetime(2020, 1, 1, tzinfo=FailingZone()))
texts = st.text(st.characters(exclude_categories=()), max_size=6) | st.sampled_from(
    ["", "\x00", "a\x00b", "\ud800", "k\udfff", "t", "a", "*", "\\", "[", "[^", "[a-", "\xff", "ns:x", "{a}"]
)
str_likes = texts | texts.map(Text) | texts.map(Shifty)
numbers = (
    st.booleans()
    | st.integers()
    | st.floats()
    | st.sampled_from([2**63, 2**63 - 1, 2**64, -(2**63) - 1, 10**400, -1, 0, 1.0, 0.5, float("nan")])
)
scalars = (
    st.none()
    | numbers
    | str_likes
    | st.binary(max_size=6)
    | st.binary(max_size=6).map(bytearray)
    | datetimes
    | st.uuids()
    | st.builds(object)
    | st.builds(_cyclic_list)
    | st.builds(_cyclic_dict)
)
hashables = st.none() | numbers | str_likes | st.binary(max_size=4) | plain_datetimes | st.tuples(texts, numbers)
junk_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hashables, inner, max_size=3) | st.tuples(inner),
    max_leaves=6,
)


# Each argument is valid about half the time, so that a call gets past its first
# check often enough to meet the junk in its other arguments (and its writes).
def half(valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` half the time, ``junk`` the other half (``|`` would weigh each branch of ``junk`` as ``valid``)."""
    return st.sampled_from([valid, junk]).flatmap(lambda chosen: chosen)


valid_keys = st.sampled_from(["a", "t", "k\x00", "b", "new", "ns:x", "[a]*"])
valid_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=4)
    | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)
valid_times = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(timezone.utc))
valid_tags = st.dictionaries(st.sampled_from(["seed", "x"]), st.sampled_from(["yes", "no"]), max_size=2)

keys = half(valid_keys, str_likes | scalars)
values = half(valid_values, junk_values)
expiries = half(st.none() | valid_times, datetimes | scalars)
tag_maps = (
    valid_tags | st.dictionaries(hashables, scalars, max_size=3) | st.dictionaries(str_likes, str_likes, max_size=3)
)
tag_args = half(st.none() | valid_tags, tag_maps | scalars)
patterns = half(st.sampled_from(["*", "a", "[a-z]*", "k?", "\\", "[", "[^", "*\\"]), str_likes | scalars)
limits = half(st.sampled_from([0, 1, 2]), numbers | scalars)
queries = (
    st.builds(
        StorageQuery,
        pattern=half(st.none(), patterns),
        content_type=half(st.sampled_from([None, "t", "u"]), str_likes | scalars),
        tags=tag_args,
        created_after=expiries,
        created_before=expiries,
        expires_after=expiries,
        expires_before=expiries,
        limit=half(st.none(), limits),
    )
    | st.builds(StorageQuery, pattern=patterns)
    | scalars
)
key_lists = (
    st.lists(valid_keys, max_size=4)
    | st.lists(keys, max_size=4)
    | st.lists(keys, max_size=3).map(tuple)
    | st.lists(keys, max_size=3).map(iter)
    | st.just(["a", "b", "a"])
    | str_likes
    | scalars
)
item_maps = (
    st.dictionaries(valid_keys, valid_values, max_size=3)
    | st.dictionaries(keys | hashables, values, max_size=3)
    | st.lists(st.tuples(keys, values), max_size=2)
    | scalars
)
metadata = st.builds(
    StorageMetadata,
    id=st.uuids() | scalars,
    key=keys,
    content_type=st.sampled_from(["t", "u"]) | keys,
    created_at=valid_times | datetimes | scalars,
    updated_at=valid_times | datetimes | scalars,
    expires_at=expiries,
    tags=tag_args,
)
restores = st.lists(st.builds(StorageItem, data=values, metadata=metadata) | scalars, max_size=3) | scalars

# -- the store, seeded ---------------------------------------------------------------------------

SEED = {"a": {"n": 1}, "t": [1, "two"], "k\x00": "nul in the key"}
SEED_TYPE = "t"


async def seed(target: StorageProvider[Any] | UnifiedStorageManager) -> None:
    await target.save_many(SEED, SEED_TYPE, tags={"seed": "yes"})
    await target.save("b", "other type", "u", datetime.now(timezone.utc) + timedelta(days=1))


async def snapshot(target: StorageProvider[Any] | UnifiedStorageManager) -> list[tuple[Any, ...]]:
    """Everything the store holds, as a search over all of it sees it."""
    found = []
    async for result in target.search(StorageQuery()):
        meta = result.item.metadata
        found.append(
            (meta.key, meta.content_type, meta.id, meta.updated_at, meta.expires_at, meta.tags, result.item.data)
        )
    return sorted(found, key=lambda entry: entry[0])


async def drain(results: Any) -> None:
    async for _ in results:
        pass


async def refused_or_done(call: Callable[[], Any], store: Any) -> None:
    """Make ``call``; a refusal must be a StorageError that changed nothing in ``store``."""
    before = await snapshot(store)
    try:
        outcome = call()
        if asyncio.iscoroutine(outcome):
            await outcome
        elif hasattr(outcome, "__aiter__"):
            await drain(outcome)
    except StorageError as exc:
        event(type(exc).__name__)
        assert await snapshot(store) == before
        return
    event("done")
    # anything else goes up and fails the test


# -- the manager ---------------------------------------------------------------------------------

content_types = half(st.sampled_from([SEED_TYPE, "u"]), str_likes | scalars)
providers = half(st.builds(MemoryStorageProvider), scalars)

MANAGER_CALLS: dict[str, Callable[[st.DataObject], tuple[Any, ...]]] = {
    "save": lambda d: (d.draw(keys), d.draw(values), d.draw(content_types), d.draw(expiries), d.draw(tag_args)),
    "load": lambda d: (d.draw(keys), d.draw(content_types)),
    "delete": lambda d: (d.draw(keys), d.draw(content_types)),
    "search": lambda d: (d.draw(queries),),
    "retrieve": lambda d: (d.draw(queries), d.draw(st.none() | str_likes | scalars)),
    "save_many": lambda d: (d.draw(item_maps), d.draw(content_types), d.draw(expiries), d.draw(tag_args)),
    "load_many": lambda d: (d.draw(key_lists), d.draw(content_types)),
    "delete_many": lambda d: (d.draw(key_lists), d.draw(content_types)),
    "delete_matching": lambda d: (d.draw(queries),),
    "register_provider": lambda d: (d.draw(content_types), d.draw(providers)),
}


@given(operation=st.sampled_from(sorted(MANAGER_CALLS)), data=st.data())
def test_the_manager_refuses_junk_cleanly(operation: str, data: st.DataObject) -> None:
    args = MANAGER_CALLS[operation](data)
    min_score = data.draw(st.just(0.0) | numbers | scalars) if operation == "retrieve" else None

    async def run() -> None:
        manager = UnifiedStorageManager(metrics=MetricsManager())
        shared = MemoryStorageProvider()
        manager.register_provider(SEED_TYPE, shared)
        manager.register_provider("u", shared)
        await seed(manager)
        routes = dict(manager._providers)
        method = getattr(manager, operation)
        extra = {"min_score": min_score} if operation == "retrieve" else {}
        await refused_or_done(lambda: method(*args, **extra), manager)
        if operation == "register_provider" and manager._providers != routes:
            assert isinstance(args[1], StorageProvider)  # only a provider is ever registered

    asyncio.run(run())


# -- the providers -------------------------------------------------------------------------------

PROVIDER_CALLS: dict[str, Callable[[st.DataObject], tuple[tuple[Any, ...], dict[str, Any]]]] = {
    "save": lambda d: (
        (d.draw(keys), d.draw(values), d.draw(content_types), d.draw(expiries), d.draw(tag_args)),
        {},
    ),
    "load": lambda d: ((d.draw(keys),), {"content_type": d.draw(st.none() | content_types)}),
    "delete": lambda d: ((d.draw(keys),), {"content_type": d.draw(st.none() | content_types)}),
    "search": lambda d: ((d.draw(queries),), {}),
    "save_many": lambda d: ((d.draw(item_maps), d.draw(content_types), d.draw(expiries), d.draw(tag_args)), {}),
    "load_many": lambda d: ((d.draw(key_lists),), {"content_type": d.draw(st.none() | content_types)}),
    "delete_many": lambda d: ((d.draw(key_lists),), {"content_type": d.draw(st.none() | content_types)}),
    "delete_matching": lambda d: ((d.draw(queries),), {}),
    "restore_many": lambda d: ((d.draw(restores),), {}),
}


#: The share of the profile's examples each provider runs: a fresh store per example costs
#: an LMDB environment or a Redis namespace (CI's budget: issue 12).
PROVIDER_SHARE = {"memory": 1, "lmdb": 8, "redis": 4, "redis-cluster": 8}


def test_every_provider_refuses_junk_cleanly(
    provider_factory: Factory, property_settings: settings, request: pytest.FixtureRequest
) -> None:
    share = PROVIDER_SHARE[request.node.callspec.params["provider_factory"]]

    @settings(property_settings, max_examples=max(property_settings.max_examples // share, 10))
    @given(operation=st.sampled_from(sorted(PROVIDER_CALLS)), data=st.data())
    def check(operation: str, data: st.DataObject) -> None:
        args, kwargs = PROVIDER_CALLS[operation](data)

        async def run() -> None:
            provider = provider_factory()
            try:
                await seed(provider)
                method = getattr(provider, operation)
                await refused_or_done(lambda: method(*args, **kwargs), provider)
            finally:
                await provider.cleanup()

        asyncio.run(run())

    check()


# -- open_provider -------------------------------------------------------------------------------

_URL_BITS = st.sampled_from(
    ["a", "b", "%00", "%ff", "%", "%2F", "\x00", "\ud800", " ", "?", "#", "&", "=", ":", "@", "[", "]", "0", "-1"]
)
url_parts = st.lists(_URL_BITS, max_size=6).map("".join)
_OPTIONS = st.sampled_from(["namespace", "durability", "map_size", "max_readers", "shards", "socket_timeout", "x"])
_OPTION_VALUES = st.sampled_from(["", "0", "-1", "none", "sync", "99999999999999999999999", "1e3", "\x00", "%00"])
url_queries = st.lists(st.tuples(_OPTIONS, _OPTION_VALUES | url_parts), max_size=3).map(
    lambda pairs: "?" + "&".join(f"{name}={value}" for name, value in pairs) if pairs else ""
)
# Never an absolute LMDB path: a URL that is accepted creates its store directory (here, in a scratch
# directory; a run of an earlier version of this test made a store in / from lmdb:///).
urls = (
    st.builds(lambda path, query: f"lmdb://./{path}{query}", url_parts, url_queries)
    | st.builds(
        lambda scheme, netloc, path, query: f"{scheme}://{netloc}/{path}{query}",
        st.sampled_from(["redis", "rediss", "redis+cluster", "rediss+cluster", "memory", "http", ""]),
        url_parts,
        url_parts,
        url_queries,
    )
    | st.builds(lambda netloc, path: f"lmdb://{netloc}/{path}", url_parts.filter(bool), url_parts)
    | st.builds(lambda query: f"memory://{query}", url_queries)
    | str_likes
    | scalars
)


def _absolute_lmdb(url: object) -> bool:
    """Whether ``url`` would be read as an LMDB store outside the current directory."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return bool(parts.scheme == "lmdb" and parts.netloc in ("", "localhost"))


@given(url=urls)
def test_open_provider_refuses_junk_cleanly(url: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assume(not _absolute_lmdb(url))  # the strategy makes none; this is the guard that it never will
    scratch = tmp_path / uuid.uuid4().hex
    scratch.mkdir()
    monkeypatch.chdir(scratch)

    async def run() -> None:
        try:
            provider = open_provider(url)
        except StorageError:
            assert os.listdir(scratch) == []  # a refused URL creates no store
            return
        await provider.cleanup()  # nothing is connected before the first use

    asyncio.run(run())


# -- the command line ----------------------------------------------------------------------------

cli_texts = st.text(st.characters(exclude_categories=(), exclude_characters="\x00"), max_size=6) | st.sampled_from(
    ["", "\ud800", "*", "[", "\\", "k", "a", "[^", "{", "[1,", "NaN", "1e999", "-0", "\x1b[31m"]
)
cli_words = cli_texts.filter(lambda text: not text.startswith("-"))  # an argument, not an option
cli_keys = half(st.sampled_from(["k", "a", "user:1"]), cli_words)
cli_types = half(st.sampled_from(["default", "t"]), cli_texts)
json_texts = half(
    st.sampled_from(['{"a": 1}', "[1, 2]", '"text"', "null", "12"]),
    cli_words.filter(lambda text: text != "-")  # '-' reads stdin
    | st.sampled_from(['"\\ud800"', "1e400", "NaN", '{"a": {"a": [[[]]]}}', "[" * 2000, '{"a": 1, "a": 2}']),
)
number_texts = st.integers().map(str) | st.floats().map(str) | cli_texts
cli_urls = half(
    st.just("lmdb://./store?durability=none"),
    st.builds(lambda query: f"lmdb://./store{query}", url_queries) | st.sampled_from(["memory://", "nope://x"]),
)
tags = st.lists(
    half(st.sampled_from(["a=1", "b=2"]), cli_texts | st.builds("{}={}".format, cli_texts, cli_texts)), max_size=2
)


commands = st.one_of(
    st.builds(
        lambda key, json, kind, tag, ttl: ["put", key, json, f"--type={kind}", *(f"--tag={t}" for t in tag), *ttl],
        cli_keys,
        json_texts,
        cli_types,
        tags,
        st.just([]) | half(st.sampled_from(["60", "0.5"]), number_texts).map(lambda ttl: [f"--ttl={ttl}"]),
    ),
    st.builds(
        lambda verb, key, kind: [verb, key, f"--type={kind}"], st.sampled_from(["get", "rm"]), cli_keys, cli_types
    ),
    st.builds(
        lambda pattern, kind, tag, limit: [
            "search",
            f"--pattern={pattern}",
            *kind,
            *(f"--tag={t}" for t in tag),
            *limit,
        ],
        half(st.sampled_from(["*", "k*", "[a-z]*"]), cli_texts),
        st.just([]) | cli_types.map(lambda kind: [f"--type={kind}"]),
        tags,
        st.just([]) | half(st.sampled_from(["1", "5"]), number_texts).map(lambda limit: [f"--limit={limit}"]),
    ),
    st.sampled_from(
        [["purge"], ["check"], ["check", "--repair"], ["stats"], ["stats", "--prometheus"], ["namespaces"]]
    ),
    st.builds(
        lambda dest: ["backup", f"copies/{dest}"], cli_words.filter(lambda text: ".." not in text)
    ),  # never outside the scratch directory
)


def _stream(errors: str) -> io.TextIOWrapper:
    """A text stream as the process's own: UTF-8, stdout strict, stderr backslash-replacing."""
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=errors)


def _written(stream: io.TextIOWrapper) -> str:
    stream.flush()
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue().decode()


@settings(max_examples=max(settings().max_examples // 2, 10))  # each example opens a store, in a new event loop
@given(store=cli_urls, command=commands)
def test_the_command_line_refuses_junk_in_one_line(
    store: str, command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out, err = _stream("strict"), _stream("backslashreplace")
    monkeypatch.setattr(sys, "stderr", err)
    try:
        status = main(["--store", store, *command], out)
    except SystemExit as exc:  # argparse's own refusal (a --ttl or --limit that is no number): usage and one line
        status = exc.code
        event(f"{command[0]}: argparse")
        last = _written(err).splitlines()[-1]
        assert last.startswith("unistore") and ": error: " in last
        assert status == 2
        return
    said = _written(err)
    event(f"{command[0]}: {status}")
    assert "Traceback" not in said
    if status != 0:
        assert said.startswith("unistore: ") and said.count("\n") == 1, (command, said)
    else:
        assert said == ""
