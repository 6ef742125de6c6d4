"""The ``unistore`` command and provider URLs."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unistore import NATIVE, ValidationError, open_provider
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
        ("memory://[::1", "does not parse"),
        ("memory://#frag", "has a '#' fragment"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        open_provider(url)


def test_open_lmdb_provider(tmp_path: Path) -> None:
    from unistore.providers import LmdbStorageProvider

    url = f"lmdb://{tmp_path}/a%20store?namespace=x&durability=none&map_size=1048576&max_readers=600"
    provider = open_provider(url)
    assert isinstance(provider, LmdbStorageProvider)
    engine = provider.engine
    assert (engine.path, engine.namespace, engine.durability) == (str(tmp_path / "a store"), "x", "none")
    assert engine.shared.env.info()["map_size"] == 1048576
    engine.close()
    localhost = open_provider(f"lmdb://localhost{tmp_path}/b")
    assert isinstance(localhost, LmdbStorageProvider) and localhost.engine.path == str(tmp_path / "b")
    localhost.engine.close()


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("?bogus=1", r"unknown option\(s\) bogus"),
        ("?map_size=-5", "option map_size must be a positive integer"),
        ("?max_readers=lots", "option max_readers must be a positive integer"),
        ("?map_size=%C2%B2", "option map_size must be a positive integer"),  # '²' is a digit to str.isdigit
        ("?durability=maybe", "durability must be one of"),
    ],
)
def test_bad_lmdb_urls_create_nothing(tmp_path: Path, suffix: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        open_provider(f"lmdb://{tmp_path}/store{suffix}")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("url", ["lmdb://relative/path", "lmdb:relative", "lmdb://host/abs"])
def test_lmdb_urls_need_an_absolute_local_path(url: str) -> None:
    with pytest.raises(ValidationError, match="lmdb URLs take an absolute path"):
        open_provider(url)


def test_check_and_purge_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import datetime, timedelta, timezone

    from unistore.providers.lmdb import LmdbEngine

    url = f"lmdb://{tmp_path}/store"
    engine = LmdbEngine(tmp_path / "store")
    engine.save("stays", 1, "t", tags={"a": "b"})
    engine.save("goes", 2, "t", expires_at=datetime.now(timezone.utc) + timedelta(milliseconds=30))
    out = io.StringIO()
    assert main(["check", "--store", url], out) == 0
    assert (
        f"{url}: 2 records, 2 ids, 1 tag entries, 2 type entries, 2 created entries, 1 expiry entries" in out.getvalue()
    )
    assert out.getvalue().endswith("consistent\n")
    time.sleep(0.05)
    out = io.StringIO()
    assert main(["purge", "--store", url], out) == 0
    assert out.getvalue() == f"{url}: purged 1 expired item(s)\n"
    # Damage the store behind its back: check says so and fails.
    engine.write(lambda txn, dbs: txn.delete(engine.record_key(b"stays"), db=dbs.records))
    engine.close()
    out = io.StringIO()
    assert main(["check", "--store", url], out) == 1
    assert "problem: tags index entry" in out.getvalue() and out.getvalue().endswith("problem(s)\n")


def test_housekeeping_needs_a_store_that_has_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--store", "memory://"], io.StringIO()) == 1
    assert "memory://: this kind of store has no check" in capsys.readouterr().err
    out = io.StringIO()
    assert main(["purge", "--store", "memory://"], out) == 0
    assert out.getvalue() == "memory://: purged 0 expired item(s)\n"


def test_default_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from unistore.cli import default_store

    monkeypatch.setenv("UNISTORE_STORE", "memory://?namespace=env")
    assert default_store() == "memory://?namespace=env"
    monkeypatch.delenv("UNISTORE_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_store() == f"lmdb://{tmp_path}/unistore"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "a#b%c"))
    assert default_store() == f"lmdb://{tmp_path}/a%23b%25c/unistore"  # quoted: the URL names that very path
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store() == f"lmdb://{tmp_path}/home/.local/share/unistore"
    out = io.StringIO()
    monkeypatch.setenv("UNISTORE_STORE", f"lmdb://{tmp_path}/via-env")
    assert main(["purge"], out) == 0
    assert out.getvalue() == f"lmdb://{tmp_path}/via-env: purged 0 expired item(s)\n"


def test_demo_on_a_given_store(tmp_path: Path) -> None:
    out = io.StringIO()
    assert main(["demo", "--store", "memory://?namespace=demo"], out) == 0
    native = "yes" if NATIVE else "no"
    assert out.getvalue().startswith(f"unistore demo on memory://?namespace=demo (native core: {native})\n")
