"""Redis URLs as a user writes them, well and badly: cluster node lists, IPv6, credentials
that must never be shown, options redis-py does not take."""

from __future__ import annotations

import asyncio
import io

import pytest

from helpers import fresh_namespace
from unistore import (
    ValidationError,
    cli,
    open_provider,
)
from unistore.providers import RedisStorageProvider

SECRET = "hunter2secret"  # a password that must never be shown


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://?namespace=x",  # no node at all
        "redis+cluster://h1?namespace=x",  # no port
        "redis+cluster://[::1]?namespace=x",
        "redis+cluster://h1:1,?namespace=x",  # trailing comma
        "redis+cluster://h1:1,,h2:2?namespace=x",
        "redis+cluster://h1:1,h2:99999?namespace=x",
        "redis+cluster://h1:1,h2:x?namespace=x",
        "redis+cluster://h1:1/0/1?namespace=x",
        "redis+cluster://h1:1?namespace=x&shards=0",
        "redis+cluster://h1:1?namespace=x&shards=1025",
        "redis+cluster://h1:1?namespace=x&shards=%2B3",
        "redis+cluster://h1:1?namespace=x&db=3",
        "redis+cluster://h1:1?namespace=x&password=p",
        "redis+cluster://h1:1?namespace=x&host=h2",
        "redis+cluster://h1:1?namespace=x&bogus=1",
        "redis+cluster://h1:1?namespace=x&namespace=y",
    ],
)
def test_malformed_cluster_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        open_provider(url)


def test_ipv6_nodes_and_percent_encoded_credentials_are_split_right() -> None:
    provider = open_provider("redis+cluster://u:p%40ss%2Cw@[::1]:7000,[::1]:7001,h:7002?namespace=x&shards=3")
    assert isinstance(provider, RedisStorageProvider)
    assert provider._nodes == [("::1", 7000), ("::1", 7001), ("h", 7002)]
    assert "p%40ss" not in repr(provider) and "p@ss" not in repr(provider)


@pytest.mark.parametrize("scheme", ["redis://127.0.0.1:6379/0", "redis+cluster://127.0.0.1:7000"])
def test_an_empty_namespace_in_a_redis_url_is_refused(scheme: str) -> None:
    """DEFECT: ``namespace=`` (say an unset variable in a template) silently opens the
    namespace ``default``, where other deployments' data lives; memory:// and the
    provider's own constructor refuse an empty namespace. (from_url re-parses the
    query without keep_blank_values, so the blank option vanishes.)"""
    with pytest.raises(ValidationError, match="namespace must not be empty"):
        open_provider("memory://?namespace=")
    with pytest.raises(ValidationError, match="namespace must not be empty"):
        RedisStorageProvider(namespace="")
    with pytest.raises(ValidationError, match="namespace must not be empty"):
        open_provider(f"{scheme}?namespace=")


@pytest.mark.redis
@pytest.mark.parametrize("cluster", [False, True])
async def test_a_malformed_timeout_in_a_url_is_a_validation_error(
    cluster: bool, redis_port: int, redis_cluster: list[int]
) -> None:
    """DEFECT: ``socket_timeout=abc`` passes open_provider (which promises a
    ValidationError for a malformed URL) and the first operation then raises redis-py's
    raw ``ValueError`` (no StorageError at all)."""
    url = (
        f"redis+cluster://127.0.0.1:{redis_cluster[0]}?namespace=x&socket_timeout=abc"
        if cluster
        else f"redis://127.0.0.1:{redis_port}/0?namespace=x&socket_timeout=abc"
    )
    try:
        provider = open_provider(url)
    except ValidationError:
        return  # refused at once, as a malformed URL should be
    try:
        with pytest.raises(ValidationError, match="socket_timeout"):  # at least no raw ValueError
            await asyncio.wait_for(provider.load("k"), 10)
    finally:
        await provider.cleanup()


@pytest.mark.parametrize(
    "url",
    [
        f"redis+cluster://u:{SECRET}@h1:1,h2:2/3?namespace=x",  # database other than 0
        f"redis+cluster://u:{SECRET}@h1:1,h2:2?namespace=x&bogus=1",  # unknown option
        f"redis://u:{SECRET}@h1:1/0?namespace=x&namespace=y",  # repeated option
        f"redis://u:{SECRET}@h1:1/0?namespace=x#frag",  # fragment
        f"redis+cluster://u:{SECRET}@h1:1,[bad?namespace=x",  # does not parse
        f"redis+cluster://u:{SECRET}@h1:1,h2:x?namespace=x",  # bad node
    ],
)
def test_a_password_never_appears_in_a_url_error(url: str) -> None:
    """DEFECT: the ValidationError of a malformed Redis URL quotes the whole URL,
    password and all, into a message that ends up in logs (urls.py itself says the URL
    "may hold a password" and keeps it out of the import error)."""
    with pytest.raises(ValidationError) as caught:
        open_provider(url)
    assert SECRET not in str(caught.value)


@pytest.mark.redis
async def test_the_cli_does_not_print_the_password_of_a_store_url(redis_port: int) -> None:
    """DEFECT: ``unistore check --store redis://user:password@…`` prints the URL, password
    included, on its first line of output (and ``purge`` does the same)."""
    url = f"redis://default:{SECRET}@127.0.0.1:{redis_port}/0?namespace={fresh_namespace()}"  # nopass: any password
    seeded = RedisStorageProvider.from_url(url)  # check and purge refuse a namespace that does not exist
    await seeded.save("k", 1, "t")
    await seeded.cleanup()
    for command in ("check", "purge"):
        out = io.StringIO()
        assert await asyncio.to_thread(cli.main, [command, "--store", url], out) == 0
        assert SECRET not in out.getvalue(), out.getvalue()


def test_a_url_option_redis_py_does_not_take_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="a Redis setting redis-py does not take"):
        RedisStorageProvider.from_url("redis://127.0.0.1:6379/0?namespace=x&no_such_option=1")
