"""The ``unistore`` command and provider URLs."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unistore import ValidationError, open_provider
from unistore.cli import main
from unistore.providers import MemoryStorageProvider


def test_demo_walks_through_every_operation() -> None:
    out = io.StringIO()
    assert main(["demo"], out) == 0
    text = out.getvalue()
    store = text.split()[3]
    assert store.startswith("lmdb:///") and store.endswith("?namespace=demo")
    assert not Path(store[len("lmdb://") : -len("?namespace=demo")]).exists()  # the scratch store is removed
    assert text.count(" µs  save") == 3
    assert "-> ['fruit:apple', 'fruit:cherry']" in text  # the tag search
    assert "-> ['fruit:apple', 'fruit:banana']" in text  # the glob search
    assert text.count("-> True") == 3
    assert "left after delete: []" in text


def test_demo_with_a_bad_store_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--store", "nosuch://x"], io.StringIO()) == 1
    assert "unistore: url: unknown scheme in 'nosuch://x'" in capsys.readouterr().err


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "usage: unistore" in capsys.readouterr().err


def test_the_installed_console_script_runs() -> None:
    script = Path(sys.executable).with_name("unistore")
    command = [str(script)] if script.exists() else [shutil.which("unistore") or "unistore"]
    done = subprocess.run(
        [*command, "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "left after delete: []" in done.stdout


def test_open_memory_provider() -> None:
    provider = open_provider("memory://")
    assert isinstance(provider, MemoryStorageProvider) and provider.namespace == "default"
    named = open_provider("memory://?namespace=x")
    assert isinstance(named, MemoryStorageProvider) and named.namespace == "x"
    assert repr(named) == "MemoryStorageProvider(namespace='x')"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nosuch://", "unknown scheme in 'nosuch://'; known: lmdb://, memory://"),
        ("memory", "unknown scheme"),
        ("memory://host", "memory:// takes no host or path"),
        ("memory:///path", "memory:// takes no host or path"),
        ("memory://?namespace=a&namespace=b", "option 'namespace' is given twice"),
        ("memory://?nmespace=a", r"unknown option\(s\) nmespace"),
        ("memory://?namespace=", "namespace must not be empty"),
        (b"memory://", "url must be a str"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        open_provider(url)
