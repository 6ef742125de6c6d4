"""The verbs that keep a store: ``check``, ``purge``, ``stats``, ``namespaces`` and
``backup``, each on every namespace of the store unless the URL names one. They call
the provider contract's maintenance methods and nothing else."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, TextIO

from ..errors import StoreNotFoundError, ValidationError
from ..metrics import MetricsManager, StorageMonitor
from ..providers.base import StorageProvider
from ..providers.maintenance import Usage, merge
from ..redaction import redact
from ..urls import missing_parent, namespace_of, namespace_urls, open_existing, upgrade_store
from .render import columns, progress_bar

#: The gauge ``stats`` sets to the live items of a content type (``storage_size`` holds their bytes).
ITEMS_GAUGE = "storage_items"


async def _each_namespace(store: str) -> list[tuple[str, str]]:
    """The (name, URL) of every namespace a maintenance command covers."""
    return [(namespace_of(url) or "default", url) for url in await namespace_urls(store)]


@contextlib.asynccontextmanager
async def _maintained(url: str) -> AsyncIterator[StorageProvider[Any]]:
    """``async with _maintained(url) as provider``: the existing namespace ``url`` names, cleaned up on leaving."""
    async with await open_existing(url) as provider:
        yield provider


def _covered(out: TextIO, verb: str, names: Sequence[str]) -> None:
    out.write(f"{verb} {len(names)} namespace(s): {', '.join(map(repr, names))}\n")


async def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    """``check [--repair]``: verify (and repair) every namespace's records and indexes."""
    namespaces = await _each_namespace(args.store)
    left = 0
    with progress_bar(out, "checking") as progress:
        for done, (name, url) in enumerate(namespaces):
            async with _maintained(url) as provider:
                report = await provider.check(repair=args.repair)
                out.write(
                    f"{name!r}: {report.records} records, {report.ids} ids, {report.tag_entries} tag entries, "
                    f"{report.type_entries} type entries, {report.created_entries} created entries, "
                    f"{report.updated_entries} updated entries, {report.expires_entries} expiry entries\n"
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


async def cmd_purge(args: argparse.Namespace, out: TextIO) -> int:
    """``purge``: remove the expired items of every namespace."""
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


async def cmd_namespaces(args: argparse.Namespace, out: TextIO) -> int:
    """``namespaces``: every namespace with its live items and bytes."""
    rows = []
    for name, usage in await _usages(args.store):
        total = sum(usage.values(), Usage())
        rows.append((name, total.items, total.bytes))
    columns(out, ("namespace", "items", "bytes"), rows)
    return 0


async def cmd_rm_namespace(args: argparse.Namespace, out: TextIO) -> int:
    """``rm-namespace NAME --yes``: remove a namespace of the store with its items and index entries."""
    found = [url for url in await namespace_urls(args.store) if (namespace_of(url) or "default") == args.name]
    if not found:
        raise StoreNotFoundError(
            f"rm-namespace: {redact(args.store)} has no namespace {args.name!r}", {"namespace": args.name}
        )
    async with _maintained(found[0]) as provider:
        if not args.yes:
            live = sum((await provider.usage()).values(), Usage())
            raise ValidationError(
                f"rm-namespace: add --yes to remove the namespace {args.name!r} and its {live.items} live "
                f"item(s) from {redact(args.store)}"
            )
        dropped = await provider.drop_namespace()
    out.write(f"removed the namespace {args.name!r} ({dropped} record(s)) from {redact(args.store)}\n")
    return 0


async def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    """``stats [--prometheus]``: live items and bytes per content type, over every namespace."""
    found = await _usages(args.store)
    total = merge(usage for _, usage in found)
    metrics = MetricsManager.get_instance()
    monitor = StorageMonitor(metrics)
    for content_type, usage in total.items():
        await monitor.record_size(content_type, usage.bytes)
        metrics.gauge(ITEMS_GAUGE, usage.items, content_type=content_type)
    if args.prometheus:
        from ..exporters.prometheus import exposition  # noqa: PLC0415  (needs the prometheus extra)

        out.write(exposition(metrics))
        return 0
    everything = sum(total.values(), Usage())
    rows = [(content_type, usage.items, usage.bytes) for content_type, usage in total.items()]
    columns(out, ("content type", "items", "bytes"), [*rows, ("(all)", everything.items, everything.bytes)])
    _covered(out, "counted", [name for name, _ in found])
    return 0


async def cmd_backup(args: argparse.Namespace, out: TextIO) -> int:
    """``backup DEST [--compact]``: a copy of the whole store (refused where the backend has none of ours)."""
    missing = missing_parent(args.dest)
    if missing is not None:  # (a mistyped path is not made)
        raise ValidationError(f"backup: no directory {missing!r} to make the copy {args.dest!r} in; create it first")
    [first, *_] = await namespace_urls(args.store)  # (the whole store is copied, from any namespace)
    async with _maintained(first) as provider:
        await provider.backup(args.dest, compact=args.compact)
    compacted = " (compacted)" if args.compact else ""
    out.write(f"copied {redact(args.store)} to {args.dest}{compacted}\n")
    return 0


async def cmd_upgrade(args: argparse.Namespace, out: TextIO) -> int:
    """``upgrade``: bring an LMDB store of the previous format to this release's, in place."""
    await asyncio.to_thread(upgrade_store, args.store)
    out.write(f"{redact(args.store)} is in this release's format\n")
    return 0


__all__ = [
    "ITEMS_GAUGE",
    "cmd_backup",
    "cmd_check",
    "cmd_namespaces",
    "cmd_purge",
    "cmd_rm_namespace",
    "cmd_stats",
    "cmd_upgrade",
]
