"""What the library logs, at which level, and that it never prints on its own."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap

import pytest

from unistore import (
    ItemNotFoundError,
    MetricsManager,
    ProviderNotFoundError,
    SerializationError,
    StorageConnectionError,
    StorageQuery,
    UnifiedStorageManager,
    ValidationError,
)
from unistore.providers import MemoryStorageProvider, RedisStorageProvider


def ops(metrics: MetricsManager, operation: str, content_type: str, success: str) -> float:
    return metrics.value("storage_operations", operation=operation, content_type=content_type, success=success)


def test_the_package_logger_has_only_a_null_handler() -> None:
    handlers = logging.getLogger("unistore").handlers
    assert [type(handler) for handler in handlers] == [logging.NullHandler]


async def test_caller_mistakes_are_logged_at_debug_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = MetricsManager()
    manager = UnifiedStorageManager(metrics=metrics)
    manager.register_provider("t", MemoryStorageProvider())
    caplog.set_level(logging.DEBUG, logger="unistore")
    mistakes = [
        (manager.load("missing", "t"), ItemNotFoundError, "load", "t"),
        (manager.save("", 1, "t"), ValidationError, "save", "t"),
        (manager.save("k", object(), "t"), SerializationError, "save", "t"),
        (manager.load("k", "unknown"), ProviderNotFoundError, "load", "unknown"),
        (manager.delete("k", None), ValidationError, "delete", "*"),  # type: ignore[arg-type]
        (manager.save_many({"k": 1}, "unknown"), ProviderNotFoundError, "save_many", "unknown"),
        (manager.load_many(["k"], ""), ValidationError, "load_many", "*"),
        (manager.delete_many(["k"], "unknown"), ProviderNotFoundError, "delete_many", "unknown"),
        (
            manager.delete_matching(StorageQuery(content_type="unknown")),
            ProviderNotFoundError,
            "delete_matching",
            "unknown",
        ),
    ]
    for call, error, operation, label in mistakes:
        with pytest.raises(error):
            await call
        assert ops(metrics, operation, label, "false") >= 1, (operation, label)
    with pytest.raises(ProviderNotFoundError):
        [r async for r in manager.search(StorageQuery(content_type="unknown"))]
    with pytest.raises(ValidationError, match="limit"):
        [r async for r in manager.search(StorageQuery(limit=-1))]
    with pytest.raises(ValidationError, match="query must be a StorageQuery"):
        [r async for r in manager.search("tag=x")]  # type: ignore[arg-type]
    assert ops(metrics, "search", "unknown", "false") == 1
    assert ops(metrics, "search", "*", "false") == 2
    records = [r for r in caplog.records if r.name.startswith("unistore")]
    assert len(records) == len(mistakes) + 3
    assert {r.levelno for r in records} == {logging.DEBUG}
    assert [r.operation for r in records[:3]] == ["load", "save", "save"]  # type: ignore[attr-defined]
    assert "missing" in records[0].error  # type: ignore[attr-defined]


def dead_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_backend_failures_are_logged_at_error(caplog: pytest.LogCaptureFixture) -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("t", RedisStorageProvider({"host": "127.0.0.1", "port": dead_port()}))
    caplog.set_level(logging.DEBUG, logger="unistore")
    with pytest.raises(StorageConnectionError):
        await manager.save("k", 1, "t")
    errors = [r for r in caplog.records if r.name == "unistore.manager"]
    assert [(r.levelno, r.operation) for r in errors] == [(logging.ERROR, "save")]  # type: ignore[attr-defined]
    await manager.cleanup()


SCRIPT = """
import asyncio, sys, tempfile
from unistore import UnifiedStorageManager, open_provider, StorageError, StorageQuery

async def main():
    async with UnifiedStorageManager() as manager:
        manager.register_provider("t", open_provider("lmdb://" + tempfile.mkdtemp()))
        manager.register_provider("down", open_provider("redis://127.0.0.1:" + sys.argv[1]))
        calls = [
            manager.load("missing", "t"),
            manager.save("", 1, "t"),
            manager.save("k", object(), "t"),
            manager.load("k", "unknown"),
            manager.save("k", 1, "down"),  # a backend failure: logged at ERROR, still not printed
        ]
        for call in calls:
            try:
                await call
            except StorageError:
                pass
        try:
            [r async for r in manager.search(StorageQuery(limit=-1))]
        except StorageError:
            pass
    print("done")

asyncio.run(main())
"""


@pytest.mark.watchdog(60)
def test_caller_mistakes_never_reach_stderr() -> None:
    ran = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(dead_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert (ran.stdout, ran.stderr) == ("done\n", "")


@pytest.mark.watchdog(60)
def test_an_application_that_configures_logging_sees_the_debug_lines() -> None:
    script = "import logging\nlogging.basicConfig(level=logging.DEBUG)\n" + textwrap.dedent(SCRIPT)
    ran = subprocess.run(
        [sys.executable, "-c", script, str(dead_port())], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [line for line in ran.stderr.splitlines() if line.startswith(("DEBUG:unistore", "ERROR:unistore"))]
    assert [line.split(":")[0] for line in lines] == ["DEBUG"] * 4 + ["ERROR", "DEBUG"]
    assert "storage load failed" in lines[0] and "storage save failed" in lines[4]
