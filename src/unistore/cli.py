"""The ``unistore`` command (docs/cli.md has every command with an example).

::

    unistore [--store URL] put KEY JSON [--type T] [--tag k=v ...] [--ttl SECONDS]
    unistore [--store URL] get KEY [--type T]
    unistore [--store URL] rm KEY [--type T]
    unistore [--store URL] search [--pattern P] [--type T] [--tag k=v ...] [--limit N] [--json]
    unistore [--store URL] stats [--prometheus]
    unistore [--store URL] namespaces
    unistore [--store URL] check [--repair]
    unistore [--store URL] purge
    unistore [--store URL] backup DEST [--compact]
    unistore migrate SRC_URL DST_URL [--pattern P] [--type T] [--tag k=v ...] [--no-verify]
    unistore bench [--store URL]
    unistore demo [--store URL] [--force]
    unistore --version

``--store`` (before the command or after it) defaults to :data:`DEFAULT_STORE`,
an LMDB store in ``.unistore`` under the current directory. Only ``put`` (and
``demo``, and ``migrate``'s destination) may create a store or a namespace:
every other command needs one that exists, and says so in one line if it does
not. ``check``, ``purge``, ``stats`` and ``namespaces`` cover every namespace of
the store unless the URL names one (``?namespace=``).

A user's mistake (a missing key, a bad URL, bad JSON, an unreachable server, a
missing store) is one line ``unistore: ...`` on stderr and exit status 1; a
usage mistake is argparse's, status 2. Progress bars are drawn only when the
output is a terminal; a closed pipe ends the output quietly (status 141, as a
shell reports a SIGPIPE), and Ctrl-C is one line ``unistore: interrupted``
(status 130).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit
from uuid import UUID

from ._version import __version__
from .core import NATIVE
from .errors import ItemNotFoundError, StorageError, StoreNotFoundError, ValidationError
from .manager import UnifiedStorageManager
from .metrics import MetricsManager, StorageMonitor
from .model import StorageItem, StorageQuery
from .providers.base import StorageProvider
from .providers.maintenance import Usage, merge
from .redaction import redact
from .urls import namespace_urls, open_existing, open_provider

_R = TypeVar("_R")

#: The store every command uses when no ``--store`` is given: ``.unistore`` in the current directory.
DEFAULT_STORE = "lmdb://./.unistore"
#: The exit status of a command whose output pipe was closed (128 + SIGPIPE, as a shell reports it).
EXIT_PIPE_CLOSED = 141
#: The exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130
#: The gauge ``stats`` sets to the live items of a content type (``storage_size`` holds their bytes).
ITEMS_GAUGE = "storage_items"
#: What a search row shows of an item's data on a terminal, at most.
SHOWN_DATA = 60

Progress = Callable[[int, "int | None"], None]


# -- values as JSON --------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """``value`` (an item's data) as plain JSON values: a ``datetime`` as its ISO 8601
    text, a ``UUID`` as its canonical text, ``bytes`` as base64 text, a tuple as a
    list, a non-finite float as ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, and a
    mapping key that is not a string as the text of its own rendering. Walked
    without recursion: data nests as deep as the codec stores it."""
    top: list[Any] = [None]
    todo: list[tuple[Any, Any, Any]] = [(top, 0, value)]  # (where it goes, under what, what it is)
    while todo:
        into, slot, given = todo.pop()
        if isinstance(given, dict):
            made: Any = {}
            for key, item in given.items():
                name = key if isinstance(key, str) else _key_text(key)
                made[name] = None  # keeps the mapping's order
                todo.append((made, name, item))
        elif isinstance(given, (list, tuple)):
            made = [None] * len(given)
            todo.extend((made, at, item) for at, item in enumerate(given))
        else:
            made = _scalar(given)
        into[slot] = made
    return top[0]


def _scalar(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _key_text(key: Any) -> str:
    rendered = _scalar(key)
    return rendered if isinstance(rendered, str) else json.dumps(rendered)


class _Text(str):
    """A piece of JSON text already written (by :func:`_encode`)."""


def _encode(value: Any) -> str:
    """Plain JSON values as JSON text; deeper than ``json.dumps`` recurses, without recursion."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except RecursionError:
        pass
    parts: list[str] = []
    todo: list[Any] = [value]
    while todo:
        given = todo.pop()
        if isinstance(given, _Text):
            parts.append(given)
        elif isinstance(given, dict) and given:
            pending: list[Any] = []
            for at, (key, item) in enumerate(given.items()):
                pending += [_Text(", " * bool(at) + json.dumps(key, ensure_ascii=False) + ": "), item]
            todo += [_Text("}"), *reversed(pending), _Text("{")]
        elif isinstance(given, list) and given:
            pending = []
            for at, item in enumerate(given):
                pending += [_Text(", " * bool(at)), item]
            todo += [_Text("]"), *reversed(pending), _Text("[")]
        else:  # a scalar, {} or []
            parts.append(json.dumps(given, ensure_ascii=False))
    return "".join(parts)


def _dumps(value: Any) -> str:
    return _encode(to_json(value))


#: What a terminal would act on rather than show: C0 and C1 controls, DEL, and bidi overrides.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _shown(text: str) -> str:
    """``text`` safe to print as one cell of one line: every control character
    (escape sequences, line breaks, bidi overrides) as its Python escape, ``\\x1b``."""
    return _CONTROLS.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def item_json(item: StorageItem[Any]) -> dict[str, Any]:
    """An item as one JSON object: its metadata and its data (see :func:`to_json`)."""
    meta = item.metadata
    return {
        "key": meta.key,
        "content_type": meta.content_type,
        "tags": meta.tags,
        "id": str(meta.id),
        "created_at": meta.created_at.isoformat(),
        "updated_at": meta.updated_at.isoformat(),
        "expires_at": None if meta.expires_at is None else meta.expires_at.isoformat(),
        "data": to_json(item.data),
    }


# -- arguments ---------------------------------------------------------------------------


def _tags(given: Sequence[str] | None) -> dict[str, str] | None:
    """``--tag k=v`` options as a mapping (None if there were none).

    Raises:
        ValidationError: a tag without ``=`` or with an empty key.
    """
    if not given:
        return None
    tags: dict[str, str] = {}
    for text in given:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise ValidationError(f"bad tag {text!r}: write it as key=value")
        tags[key] = value
    return tags


def _query(args: argparse.Namespace, limit: int | None = None) -> StorageQuery:
    return StorageQuery(pattern=args.pattern, content_type=args.type, tags=_tags(args.tag), limit=limit)


def _namespace_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query)).get("namespace", "default")


@contextlib.contextmanager
def _progress(out: TextIO, label: str) -> Iterator[Progress | None]:
    """A ``progress(done, total)`` callback drawing a rich progress bar on stderr
    when ``out`` is a terminal; None (no bar, no counting) in a pipe."""
    if not out.isatty():
        yield None
        return
    from rich.console import Console  # noqa: PLC0415  (rich only where a bar is drawn)
    from rich.progress import Progress as Bar  # noqa: PLC0415

    with Bar(console=Console(file=sys.stderr, force_terminal=True), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _columns(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Rows as aligned columns, the first left-aligned and the others right-aligned."""
    cells = [list(header)] + [[_shown(str(cell)) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    for row in cells:
        first, *rest = row
        line = "  ".join(
            [first.ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        )
        out.write(line.rstrip() + "\n")


# -- the commands ------------------------------------------------------------------------


#: What ``put`` reads its JSON from instead of the command line when given as ``-``.
STDIN = "-"


def _not_json(text: str) -> None:
    raise ValueError(f"{text} is not a JSON number")  # (json.loads would take NaN, Infinity, -Infinity)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is beyond a double's range")
    return number


def _data(text: str, key: str) -> Any:
    """The data ``put`` stores: ``text`` (or stdin, for ``-``) read as JSON, strictly
    (RFC 8259: no NaN, no Infinity, every number finite).

    Raises:
        ValidationError: not JSON, not UTF-8, or nested deeper than Python parses.
    """
    why = f"bad JSON for the data of {key!r}"
    if text == STDIN:
        try:
            text = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"{why}: stdin is not UTF-8 ({exc})") from None
    try:
        return json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise ValidationError(f"{why}: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError is one
        raise ValidationError(f"{why}: {exc}") from None


async def _cmd_put(args: argparse.Namespace, out: TextIO) -> int:
    data = _data(args.json, args.key)
    expires_at = None
    if args.ttl is not None:
        if not math.isfinite(args.ttl) or args.ttl <= 0:
            raise ValidationError(f"--ttl must be a positive number of seconds, got {args.ttl!r}")
        try:
            expires_at = datetime.now(timezone.utc) + timedelta(seconds=args.ttl)
        except OverflowError:
            raise ValidationError(f"--ttl {args.ttl!r} reaches past the year 9999") from None
    async with open_provider(args.store) as provider:
        await provider.save(args.key, data, args.type, expires_at=expires_at, tags=_tags(args.tag))
    return 0


async def _cmd_get(args: argparse.Namespace, out: TextIO) -> int:
    async with await open_existing(args.store) as provider:
        item = await provider.load(args.key, content_type=args.type)
    out.write(_dumps(item.data) + "\n")
    return 0


async def _cmd_rm(args: argparse.Namespace, out: TextIO) -> int:
    async with await open_existing(args.store) as provider:
        deleted = await provider.delete(args.key, content_type=args.type)
    if not deleted:
        raise ItemNotFoundError(f"no item under key {args.key!r} of type {args.type!r}", {"key": args.key})
    return 0


async def _cmd_search(args: argparse.Namespace, out: TextIO) -> int:
    query = _query(args, args.limit)
    async with await open_existing(args.store) as provider:
        items = [result.item async for result in provider.search(query)]
    items.sort(key=lambda item: item.metadata.key)
    if args.json or not out.isatty():
        for item in items:
            out.write(_encode(item_json(item)) + "\n")
        return 0
    from rich.console import Console  # noqa: PLC0415  (rich only on a terminal)
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    table = Table("key", "type", "tags", "updated", "expires", "data")
    for item in items:
        meta = item.metadata
        data = _shown(_dumps(item.data))
        cells = (
            meta.key,
            meta.content_type,
            ", ".join(f"{key}={value}" for key, value in sorted(meta.tags.items())),
            meta.updated_at.isoformat(timespec="seconds"),
            "" if meta.expires_at is None else meta.expires_at.isoformat(timespec="seconds"),
        )
        # Text, not markup: a key like '[/x]' is shown as it is, not read as rich's markup.
        table.add_row(
            *(Text(_shown(cell)) for cell in cells),
            Text(data if len(data) <= SHOWN_DATA else data[: SHOWN_DATA - 1] + "…"),
        )
    Console(file=out).print(table)
    out.write(f"{len(items)} item(s)\n")
    return 0


async def _each_namespace(store: str) -> list[tuple[str, str]]:
    """The (name, URL) of every namespace a maintenance command covers."""
    return [(_namespace_of(url), url) for url in await namespace_urls(store)]


@contextlib.asynccontextmanager
async def _maintained(url: str) -> AsyncIterator[StorageProvider[Any]]:
    """``async with _maintained(url) as provider``: the existing namespace ``url`` names, cleaned up on leaving."""
    async with await open_existing(url) as provider:
        yield provider


def _covered(out: TextIO, verb: str, names: Sequence[str]) -> None:
    out.write(f"{verb} {len(names)} namespace(s): {', '.join(map(repr, names))}\n")


async def _cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    namespaces = await _each_namespace(args.store)
    left = 0
    with _progress(out, "checking") as progress:
        for done, (name, url) in enumerate(namespaces):
            async with _maintained(url) as provider:
                report = await provider.check(repair=args.repair)
                out.write(
                    f"{name!r}: {report.records} records, {report.ids} ids, {report.tag_entries} tag entries, "
                    f"{report.type_entries} type entries, {report.created_entries} created entries, "
                    f"{report.expires_entries} expiry entries\n"
                )
                for problem in report.problems:
                    out.write(f"{name!r}: problem: {problem}\n")
                if args.repair and report.problems:
                    report = await provider.check()
                    out.write(f"{name!r}: repaired; " + ("consistent now\n" if report.ok else "still damaged\n"))
                    for problem in report.problems:
                        out.write(f"{name!r}: problem left: {problem}\n")
            left += len(report.problems)
            if progress is not None:
                progress(done + 1, len(namespaces))
    _covered(out, "checked", [name for name, _ in namespaces])
    out.write("consistent\n" if not left else f"{left} problem(s); `unistore check --repair` fixes them\n")
    return 0 if not left else 1


async def _cmd_purge(args: argparse.Namespace, out: TextIO) -> int:
    namespaces = await _each_namespace(args.store)
    total = 0
    for name, url in namespaces:
        async with _maintained(url) as provider:
            removed = await provider.purge_expired()
        out.write(f"{name!r}: purged {removed} expired item(s)\n")
        total += removed
    _covered(out, "purged", [name for name, _ in namespaces])
    out.write(f"{total} expired item(s) removed\n")
    return 0


async def _usages(store: str) -> list[tuple[str, dict[str, Usage]]]:
    found = []
    for name, url in await _each_namespace(store):
        async with _maintained(url) as provider:
            found.append((name, await provider.usage()))
    return found


async def _cmd_namespaces(args: argparse.Namespace, out: TextIO) -> int:
    rows = []
    for name, usage in await _usages(args.store):
        total = sum(usage.values(), Usage())
        rows.append((name, total.items, total.bytes))
    _columns(out, ("namespace", "items", "bytes"), rows)
    return 0


async def _cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    found = await _usages(args.store)
    total = merge(usage for _, usage in found)
    metrics = MetricsManager.get_instance()
    monitor = StorageMonitor(metrics)
    for content_type, usage in total.items():
        await monitor.record_size(content_type, usage.bytes)
        metrics.gauge(ITEMS_GAUGE, usage.items, content_type=content_type)
    if args.prometheus:
        from .exporters.prometheus import exposition  # noqa: PLC0415  (needs the prometheus extra)

        out.write(exposition(metrics))
        return 0
    everything = sum(total.values(), Usage())
    rows = [(content_type, usage.items, usage.bytes) for content_type, usage in total.items()]
    _columns(out, ("content type", "items", "bytes"), [*rows, ("(all)", everything.items, everything.bytes)])
    _covered(out, "counted", [name for name, _ in found])
    return 0


async def _cmd_backup(args: argparse.Namespace, out: TextIO) -> int:
    [first, *_] = await namespace_urls(args.store)  # (the whole store is copied, from any namespace)
    async with _maintained(first) as provider:
        await provider.backup(args.dest, compact=args.compact)
    compacted = " (compacted)" if args.compact else ""
    out.write(f"copied {redact(args.store)} to {args.dest}{compacted}\n")
    return 0


async def _cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    from . import migrate  # noqa: PLC0415  (one command's module)

    given = args.pattern is not None or args.type is not None or args.tag
    query = _query(args) if given else None
    # (a target URL refused after the source opened still closes the source)
    async with await open_existing(args.source) as source, open_provider(args.target) as target:
        with _progress(out, "copying") as progress:
            report = await migrate.copy(source, target, query=query, verify=not args.no_verify, progress=progress)
    verified = {True: "verified", False: "verification FAILED", None: "not verified"}[report.verified]
    out.write(
        f"{redact(args.source)} -> {redact(args.target)}: read {report.read}, written {report.written}, "
        f"unchanged {report.unchanged}; {verified}\n"
    )
    for problem in report.problems:
        out.write(f"problem: {problem}\n")
    return 0 if report.ok else 1


def _cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    from . import bench  # noqa: PLC0415  (one command's module)

    with _scratch(args.store, "bench") as store, _progress(out, "measuring") as progress:
        out.write(f"unistore bench on {redact(store)} (native core: {'yes' if NATIVE else 'no'})\n")
        rows = bench.run(store, progress)
    _columns(
        out,
        ("operation", "unistore µs", "raw µs", "ratio"),
        [(row.operation, f"{row.unistore_us:.1f}", f"{row.raw_us:.1f}", f"{row.ratio:.2f}") for row in rows],
    )
    return 0


@contextlib.contextmanager
def _scratch(store: str | None, what: str) -> Iterator[str]:
    """``store``, or a new LMDB store in a temporary directory removed afterwards."""
    if store is not None:
        yield store
        return
    with tempfile.TemporaryDirectory(prefix=f"unistore-{what}-") as scratch:
        yield f"lmdb://{quote(scratch)}?namespace={what}"


async def _timed(out: TextIO, label: str, step: Awaitable[_R]) -> _R:
    started = time.perf_counter()
    result = await step
    elapsed = (time.perf_counter() - started) * 1e6
    out.write(f"{elapsed:10.1f} µs  {label}\n")
    return result


async def _keys(manager: UnifiedStorageManager, query: StorageQuery) -> list[str]:
    return sorted([result.item.metadata.key async for result in manager.search(query)])


async def _holds_data(store: str) -> bool:
    """Whether the namespace ``store`` names exists and holds a live item."""
    try:
        provider = await open_existing(store)
    except StoreNotFoundError:
        return False
    async with provider:
        return any([result async for result in provider.search(StorageQuery(limit=1))])


async def run_demo(store: str, out: TextIO, force: bool = False) -> None:
    """Walk one store through save, load, search and delete, printing each step.

    Raises:
        ValidationError: the store already holds data and ``force`` is not set.
    """
    if not force and await _holds_data(store):
        raise ValidationError(f"demo: {redact(store)} already holds data; add --force to write into it anyway")
    provider = open_provider(store)
    out.write(f"unistore demo on {redact(store)} (native core: {'yes' if NATIVE else 'no'})\n")
    fruits = {"apple": "red", "banana": "yellow", "cherry": "red"}
    async with UnifiedStorageManager(metrics=MetricsManager()) as manager:
        manager.register_provider("fruit", provider)
        try:
            await _demo_steps(manager, fruits, out)
        finally:  # a demo cut short (a closed pipe, ^C) leaves nothing in the store either
            with contextlib.suppress(StorageError):
                await manager.delete_many([f"fruit:{name}" for name in fruits], "fruit")


async def _demo_steps(manager: UnifiedStorageManager, fruits: dict[str, str], out: TextIO) -> None:
    """The demo's steps, each timed and printed."""
    soon = datetime.now(timezone.utc) + timedelta(hours=1)
    for name, colour in fruits.items():
        await _timed(
            out,
            f"save   fruit:{name} tags={{'colour': {colour!r}}}",
            manager.save(
                f"fruit:{name}", {"name": name, "colour": colour}, "fruit", expires_at=soon, tags={"colour": colour}
            ),
        )
    item = await _timed(out, "load   fruit:apple", manager.load("fruit:apple", "fruit"))
    out.write(f"           -> {item.data} created {item.metadata.created_at.isoformat()}\n")
    red = await _timed(out, "search tags={'colour': 'red'}", _keys(manager, StorageQuery(tags={"colour": "red"})))
    out.write(f"           -> {red}\n")
    globbed = await _timed(out, "search pattern='fruit:[ab]*'", _keys(manager, StorageQuery(pattern="fruit:[ab]*")))
    out.write(f"           -> {globbed}\n")
    for name in fruits:
        deleted = await _timed(out, f"delete fruit:{name}", manager.delete(f"fruit:{name}", "fruit"))
        out.write(f"           -> {deleted}\n")
    left = await _keys(manager, StorageQuery(pattern="fruit:*"))
    out.write(f"left after delete: {left}\n")


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    with _scratch(args.store, "demo") as store:
        asyncio.run(run_demo(store, out, args.force))
    return 0


# -- the parser ------------------------------------------------------------------------------


def version() -> str:
    """The installed package's version (its distribution metadata: one source, pyproject.toml)."""
    return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unistore", description="unistore: one storage interface, many providers.")
    parser.add_argument("--version", action="version", version=f"unistore {version()}")
    parser.add_argument("--store", help=f"provider URL (default: {DEFAULT_STORE})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, store: str = "provider URL") -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--store", default=argparse.SUPPRESS, help=store)  # also after the command
        return sub

    def filters(sub: argparse.ArgumentParser, type_text: str) -> None:
        sub.add_argument("--pattern", help="Redis glob over the whole key (*, ?, [a-z], [^x], \\ escape)")
        sub.add_argument("--type", help=type_text)
        sub.add_argument("--tag", action="append", metavar="K=V", help="a tag the items must have (repeatable)")

    put = command("put", "store JSON data under a key (creates the store and namespace if need be)")
    put.add_argument("key")
    put.add_argument(
        "json", metavar="JSON", help=f"the data; {STDIN} reads it from stdin (for data past argv's limits)"
    )
    put.add_argument("--type", default="default", help="content type (default: default)")
    put.add_argument("--tag", action="append", metavar="K=V", help="a tag (repeatable)")
    put.add_argument("--ttl", type=float, metavar="SECONDS", help="expire the item after this many seconds")
    for name, text in (("get", "print the data under a key as JSON"), ("rm", "delete the item under a key")):
        sub = command(name, text)
        sub.add_argument("key")
        sub.add_argument("--type", default="default", help="content type (default: default)")
    search = command("search", "list the items a query matches: a table on a terminal, JSON lines otherwise")
    filters(search, "content type (default: every type)")
    search.add_argument("--limit", type=int, metavar="N", help="at most N items")
    search.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    stats = command("stats", "live items and bytes per content type, counted from the store")
    stats.add_argument("--prometheus", action="store_true", help="print them in the Prometheus text format")
    command("namespaces", "every namespace of the store with its items and bytes")
    check = command("check", "verify records and indexes of every namespace (or the one the URL names)")
    check.add_argument("--repair", action="store_true", help="drop undecodable records, put every index right")
    command("purge", "remove expired items from every namespace (or the one the URL names)")
    backup = command("backup", "a hot, consistent copy of an LMDB store into a new directory")
    backup.add_argument("dest", metavar="DEST", help="directory for the copy (must not hold a store)")
    backup.add_argument("--compact", action="store_true", help="leave out free pages: a copy as small as its data")
    migrate = commands.add_parser("migrate", help="copy items between two stores, verbatim, and verify")
    migrate.add_argument("source", metavar="SRC_URL")
    migrate.add_argument("target", metavar="DST_URL")
    filters(migrate, "content type (default: every type)")
    migrate.add_argument("--no-verify", action="store_true", help="skip the comparison of both sides afterwards")
    command("bench", "latency of unistore against the raw engine", "provider URL (default: a temporary LMDB store)")
    demo = command(
        "demo", "save, load, search and delete a few items, with timings", "provider URL (default: a temporary one)"
    )
    demo.add_argument("--force", action="store_true", help="write into a store that already holds data")
    return parser


_ASYNC_COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], Coroutine[Any, Any, int]]] = {
    "put": _cmd_put,
    "get": _cmd_get,
    "rm": _cmd_rm,
    "search": _cmd_search,
    "stats": _cmd_stats,
    "namespaces": _cmd_namespaces,
    "check": _cmd_check,
    "purge": _cmd_purge,
    "backup": _cmd_backup,
    "migrate": _cmd_migrate,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line with ``argv`` (default: the process's), writing to ``out``
    (default: stdout); returns the exit status."""
    stream = out if out is not None else sys.stdout
    args = _parser().parse_args(argv)
    if args.store is None and args.command not in ("demo", "bench"):
        args.store = DEFAULT_STORE
    try:
        if args.command == "demo":
            status = _cmd_demo(args, stream)
        elif args.command == "bench":
            status = _cmd_bench(args, stream)
        else:
            status = asyncio.run(_ASYNC_COMMANDS[args.command](args, stream))
        stream.flush()  # here, where a closed pipe is caught, rather than at exit
        return status
    except StorageError as exc:
        sys.stderr.write(f"unistore: {exc}\n")
        return 1
    except BrokenPipeError:
        _quiet(stream)
        return EXIT_PIPE_CLOSED
    except KeyboardInterrupt:  # Ctrl-C: what was under way is cleaned up on the way out
        sys.stderr.write("unistore: interrupted\n")
        return EXIT_INTERRUPTED


def _quiet(stream: TextIO) -> None:
    """Point a closed pipe's descriptor at /dev/null, so that the interpreter's last
    flush at exit does not fail again (the recipe of Python's ``signal`` docs)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # not a real file (a test's stream)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


__all__ = [
    "DEFAULT_STORE",
    "EXIT_INTERRUPTED",
    "EXIT_PIPE_CLOSED",
    "ITEMS_GAUGE",
    "STDIN",
    "item_json",
    "main",
    "run_demo",
    "to_json",
    "version",
]
