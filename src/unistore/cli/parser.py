"""The ``unistore`` command's parser and :func:`main`, which hands each verb to its module."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

from .._version import __version__
from ..errors import StorageError
from . import bench, demo, items, maintenance, migrate
from .items import STDIN
from .options import DEFAULT_STORE, EXIT_INTERRUPTED, EXIT_PIPE_CLOSED

#: How a store is written, for --store's help (docs/guide.md#provider-urls has every option).
STORE_FORMS = (
    "lmdb:///abs/path, lmdb://./rel/path, redis://[user:password@]host:port/db, rediss://..., "
    "redis+cluster://host:port,host:port, memory:// (each with ?namespace=NAME and options)"
)


def version() -> str:
    """The installed package's version (its distribution metadata: one source, pyproject.toml)."""
    return __version__


def parser() -> argparse.ArgumentParser:
    """The ``unistore`` command's argument parser, every verb included."""
    parser = argparse.ArgumentParser(prog="unistore", description="unistore: one storage interface, many providers.")
    parser.add_argument("--version", action="version", version=f"unistore {version()}")
    parser.add_argument("--store", metavar="URL", help=f"the store: {STORE_FORMS} (default: {DEFAULT_STORE})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, store: str = f"the store: {STORE_FORMS}") -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=store)  # also after the command
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
    _queries(command, filters)
    stats = command("stats", "live items and bytes per content type, counted from the store")
    stats.add_argument("--prometheus", action="store_true", help="print them in the Prometheus text format")
    command("namespaces", "every namespace of the store with its items and bytes")
    drop = command("rm-namespace", "remove a namespace of the store with its items and index entries")
    drop.add_argument("name", metavar="NAME", help="the namespace")
    drop.add_argument("--yes", action="store_true", help="remove it (without: say what would go, and change nothing)")
    check = command("check", "verify records and indexes of every namespace (or the one the URL names)")
    check.add_argument("--repair", action="store_true", help="drop undecodable records, put every index right")
    command("purge", "remove expired items from every namespace (or the one the URL names)")
    command("upgrade", "bring an LMDB store of the previous format to this release's, in place")
    backup = command("backup", "a hot, consistent copy of an LMDB store into a new directory")
    backup.add_argument("dest", metavar="DEST", help="directory for the copy (must not hold a store)")
    backup.add_argument("--compact", action="store_true", help="leave out free pages: a copy as small as its data")
    text = "copy items between two stores, verbatim, and verify (every namespace unless a URL names one)"
    migrate = commands.add_parser("migrate", help=text, description=text)
    migrate.add_argument("source", metavar="SRC_URL", help=f"the store to copy from: {STORE_FORMS}")
    migrate.add_argument("target", metavar="DST_URL", help="the store to copy into (made if need be; not memory://)")
    filters(migrate, "content type (default: every type)")
    migrate.add_argument("--no-verify", action="store_true", help="skip the comparison of both sides afterwards")
    command("bench", "latency of unistore against the raw engine", "the store (default: a temporary LMDB store)")
    demo = command(
        "demo", "save, load, search and delete a few items, with timings", "the store (default: a temporary one)"
    )
    demo.add_argument("--force", action="store_true", help="write into a store that already holds data")
    return parser


def _queries(
    command: Callable[[str, str], argparse.ArgumentParser], filters: Callable[[argparse.ArgumentParser, str], None]
) -> None:
    """The verbs that read a query's matches: ``search`` and ``count``."""
    search = command("search", "list the items a query matches: a table on a terminal, JSON lines otherwise")
    filters(search, "content type (default: every type)")
    search.add_argument("--limit", type=int, metavar="N", help="at most N items (0 or more)")
    search.add_argument(
        "--order-by",
        metavar="FIELD",
        default="key",
        help="key, created_at or updated_at; a leading - for descending, written --order-by=-created_at (default: key)",
    )
    search.add_argument(
        "--page-size", type=int, metavar="N", help="one page of N items; the next page's cursor goes to stderr"
    )
    search.add_argument("--after", metavar="CURSOR", help="the page that follows CURSOR (with --page-size)")
    search.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    count = command("count", "the number of live items a query matches (by their headers: nothing is decoded)")
    filters(count, "content type (default: every type)")


#: The verbs that run in an event loop of their own making here, by name.
_ASYNC_VERBS: dict[str, Callable[[argparse.Namespace, TextIO], Coroutine[Any, Any, int]]] = {
    "put": items.cmd_put,
    "get": items.cmd_get,
    "rm": items.cmd_rm,
    "search": items.cmd_search,
    "count": items.cmd_count,
    "stats": maintenance.cmd_stats,
    "namespaces": maintenance.cmd_namespaces,
    "rm-namespace": maintenance.cmd_rm_namespace,
    "check": maintenance.cmd_check,
    "purge": maintenance.cmd_purge,
    "backup": maintenance.cmd_backup,
    "upgrade": maintenance.cmd_upgrade,
    "migrate": migrate.cmd_migrate,
}
#: The verbs that run their own event loops (the bench, the demo), by name.
_VERBS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {"bench": bench.cmd_bench, "demo": demo.cmd_demo}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line with ``argv`` (default: the process's), writing to ``out``
    (default: stdout); returns the exit status."""
    stream = out if out is not None else sys.stdout
    args = parser().parse_args(argv)
    if args.store is None and args.command not in _VERBS:  # (they default to a scratch store)
        args.store = DEFAULT_STORE
    try:
        if args.command in _VERBS:
            status = _VERBS[args.command](args, stream)
        else:
            status = asyncio.run(_ASYNC_VERBS[args.command](args, stream))
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


__all__ = ["main", "parser", "version"]
