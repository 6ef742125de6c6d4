"""Provider URLs: open_provider, open_existing and namespace_urls."""

from __future__ import annotations

from pathlib import Path

import pytest

from unistore import ValidationError, open_provider
from unistore.providers import MemoryStorageProvider


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


@pytest.mark.parametrize("url", ["lmdb://relative/path", "lmdb:relative", "lmdb://host/abs", "lmdb://.x/y"])
def test_lmdb_urls_need_an_absolute_local_path(url: str) -> None:
    with pytest.raises(ValidationError, match="lmdb URLs take an absolute path"):
        open_provider(url)


def test_lmdb_urls_relative_to_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from unistore.providers import LmdbStorageProvider

    monkeypatch.chdir(tmp_path)
    for url, path in (("lmdb://./.unistore", ".unistore"), ("lmdb://./a/b%20c", "a/b c"), ("lmdb://.", "")):
        provider = open_provider(url)
        assert isinstance(provider, LmdbStorageProvider)
        assert provider.engine.path == str(tmp_path / path).rstrip("/")
        provider.engine.close()
    assert (tmp_path / ".unistore" / "data.mdb").exists() and (tmp_path / "a" / "b c" / "data.mdb").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"lmdb:///tmp/x?map_size={'9' * 5000}", "option map_size is out of range"),  # int() refuses 4300 digits
        ("redis://localhost:99999999999/0", "bad port in"),
        ("redis://u:secret@localhost:x/0", r"bad port in 'redis://u:\*\*\*@localhost:x/0'"),
    ],
)
def test_urls_out_of_range_are_validation_errors(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        open_provider(url)
