"""The Redis provider (one server and Redis Cluster) used as a hostile user would: odd
URLs, credentials in URLs, cancellation, many tasks, many event loops, damage, and
bulk deletes with a limit. Each defect found is a failing test here; the passing ones
pin behaviour that was verified."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from unistore import (
    StorageCorruptionError,
    StorageError,
    StorageQuery,
    ValidationError,
    cli,
    open_provider,
)
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout

SECRET = "hunter2secret"  # a password that must never be shown


def _namespace() -> str:
    return uuid.uuid4().hex


@pytest.fixture
async def made() -> AsyncIterator[list[RedisStorageProvider]]:
    """Providers to clean up after the test."""
    providers: list[RedisStorageProvider] = []
    yield providers
    for provider in providers:
        await provider.cleanup()


@pytest.fixture
def cluster_raw(redis_cluster: list[int]) -> Iterator[redis.RedisCluster]:
    client = redis.RedisCluster(host="127.0.0.1", port=redis_cluster[0])
    yield client
    client.close()


def _loop_errors() -> list[str]:
    """Collects what the running loop's exception handler is given (unread task exceptions)."""
    errors: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: errors.append(f"{context['message']}: {context.get('exception')!r}")
    )
    return errors


async def _quiet(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """The tasks beyond ``before`` still alive after the loop has had a moment."""
    for _ in range(100):
        await asyncio.sleep(0.01)
        if not set(asyncio.all_tasks()) - before:
            break
    return set(asyncio.all_tasks()) - before


# -- URLs --------------------------------------------------------------------------------


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
    url = f"redis://default:{SECRET}@127.0.0.1:{redis_port}/0?namespace={_namespace()}"  # nopass: any password
    seeded = RedisStorageProvider.from_url(url)  # check and purge refuse a namespace that does not exist
    await seeded.save("k", 1, "t")
    await seeded.cleanup()
    for command in ("check", "purge"):
        out = io.StringIO()
        assert await asyncio.to_thread(cli.main, [command, "--store", url], out) == 0
        assert SECRET not in out.getvalue(), out.getvalue()


# -- cluster keys ------------------------------------------------------------------------


@pytest.mark.redis
async def test_keys_with_braces_and_glob_characters_stay_in_their_shard_on_a_cluster(
    redis_cluster: list[int], cluster_raw: redis.RedisCluster, made: list[RedisStorageProvider]
) -> None:
    nodes = [f"127.0.0.1:{port}" for port in redis_cluster]
    provider = RedisStorageProvider(cluster_nodes=nodes, namespace="{x}:*", shards=5)
    made.append(provider)
    await provider.delete_matching(StorageQuery())
    keys = ["{a}", "}{", "a{b}c*?[", "{", "}", "{}", "us{x}:r:k", "*", "\\", "[^a]", "é{ü}"]
    await provider.save_many({key: key for key in keys}, "t", tags={"{t}": "}"})
    for key in keys:  # the record lies in the slot of the shard it hashes to, not in a slot of its braces
        prefix = provider._shard(key.encode()).prefix
        assert cluster_raw.exists(layout.record_key(prefix, key.encode()))
        assert (await provider.load(key)).data == key
    escaped = "a\\{b}c\\*\\?\\["
    assert [r.item.data async for r in provider.search(StorageQuery(pattern=escaped))] == ["a{b}c*?["]
    assert sorted([r.item.data async for r in provider.search(StorageQuery(tags={"{t}": "}"}))]) == sorted(keys)
    assert await provider.delete_matching(StorageQuery(pattern="\\{*")) == 3  # {a} { {}
    assert (await provider.check()).ok
    await provider.delete_matching(StorageQuery())


# -- cancellation and many tasks ---------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("cluster", [False, True])
async def test_cancelling_one_caller_during_the_first_connect_spares_the_others(
    cluster: bool, redis_port: int, redis_cluster: list[int], made: list[RedisStorageProvider]
) -> None:
    """DEFECT: every caller of a fresh provider awaits the one task that checks the
    shard count (``await ready`` in ``_redis``); cancelling any one caller cancels that
    shared task, and every other caller, none of them cancelled, gets CancelledError."""
    provider = (
        RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=_namespace(), shards=3)
        if cluster
        else RedisStorageProvider(port=redis_port, namespace=_namespace(), shards=3)
    )
    made.append(provider)
    victim = asyncio.ensure_future(provider.load_many(["a"]))
    others = [asyncio.ensure_future(provider.load_many([f"b{n}"])) for n in range(5)]
    await asyncio.sleep(0)  # every caller now awaits the first connection
    victim.cancel()
    results = await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), 10)
    assert [type(result).__name__ for result in results] == ["dict"] * 5


@pytest.mark.redis
async def test_a_scattered_search_cut_off_by_a_timeout_leaves_nothing_behind(
    redis_cluster: list[int], made: list[RedisStorageProvider]
) -> None:
    errors = _loop_errors()
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=_namespace(), shards=6)
    made.append(provider)
    await provider.save_many({f"k{n}": n for n in range(3000)}, "t", tags={"a": "b"})
    before = set(asyncio.all_tasks())
    for query in (StorageQuery(), StorageQuery(tags={"a": "b"}), StorageQuery(pattern="k1*")):

        async def slow_reader(query: StorageQuery = query) -> None:
            async for _ in provider.search(query):
                await asyncio.sleep(0.001)

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow_reader(), 0.05)
        assert not await _quiet(before)
    gc.collect()
    await asyncio.sleep(0)
    assert errors == []


@pytest.mark.redis
async def test_many_tasks_search_one_cluster_provider_at_once(
    redis_cluster: list[int], made: list[RedisStorageProvider]
) -> None:
    errors = _loop_errors()
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[1]}"], namespace=_namespace(), shards=5)
    made.append(provider)
    await provider.save_many({f"k{n}": n for n in range(600)}, "t", tags={"all": "y"})
    before = set(asyncio.all_tasks())

    async def count(limit: int) -> int:
        keys = [r.item.metadata.key async for r in provider.search(StorageQuery(tags={"all": "y"}, limit=limit))]
        assert len(keys) == len(set(keys))
        return len(keys)

    limits = [n * 17 + 1 for n in range(40)]
    assert await asyncio.wait_for(asyncio.gather(*(count(limit) for limit in limits)), 30) == [
        min(n, 600) for n in limits
    ]
    assert not await _quiet(before)
    assert errors == []


@pytest.mark.redis
async def test_a_scattered_search_passes_over_a_damaged_record_in_one_shard(
    redis_cluster: list[int],
    cluster_raw: redis.RedisCluster,
    made: list[RedisStorageProvider],
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = _loop_errors()
    namespace = _namespace()
    url = f"redis+cluster://127.0.0.1:{redis_cluster[2]}?namespace={namespace}&shards=4"
    provider = open_provider(url)
    assert isinstance(provider, RedisStorageProvider)
    made.append(provider)
    await provider.save_many({f"k{n}": n for n in range(2000)}, "t", tags={"a": "b"})
    damaged = next(f"k{n}" for n in range(2000) if provider._shard(f"k{n}".encode()).number == 2)
    cluster_raw.set(layout.record_key(provider._shards[2].prefix, damaged.encode()), b"garbage")
    before = set(asyncio.all_tasks())
    for query in (StorageQuery(), StorageQuery(tags={"a": "b"})):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="unistore.index"):
            assert await asyncio.wait_for(_drain(provider.search(query)), 10) == 1999  # every other shard's too
        [logged] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert f"{damaged!r}, which does not decode" in logged
        assert not await _quiet(before)
    with pytest.raises(StorageCorruptionError) as caught:
        await provider.load(damaged)
    assert caught.value.details == {"key": damaged}
    out = io.StringIO()
    assert await asyncio.to_thread(cli.main, ["check", "--store", url], out) == 1
    assert f"key {damaged!r} does not decode" in out.getvalue()
    gc.collect()
    await asyncio.sleep(0)
    assert errors == []


async def _drain(results: AsyncIterator[Any]) -> int:
    return len([result async for result in results])


# -- event loops -------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("cluster", [False, True])
async def test_one_provider_used_from_two_event_loops_at_once(
    cluster: bool, redis_port: int, redis_cluster: list[int]
) -> None:
    """DEFECT: the guide says a client belongs to the loop that made it and another
    loop gets its own, but there is one ``_client``/``_ready`` slot per provider: a
    thread running its own loop replaces it while another thread's loop is between
    making it and awaiting it, and that loop then awaits a future of the other loop
    (raw ``RuntimeError: ... attached to a different loop``)."""
    provider = (
        RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=_namespace(), shards=3)
        if cluster
        else RedisStorageProvider(port=redis_port, namespace=_namespace(), shards=3)
    )
    failures: list[str] = []

    def worker(number: int) -> None:
        async def work() -> None:
            try:
                for n in range(200):
                    await provider.save(f"t{number}-{n}", n, "t")
                    assert (await provider.load(f"t{number}-{n}")).data == n
            finally:
                await provider.cleanup()

        try:
            asyncio.run(asyncio.wait_for(work(), 15))
        except Exception as exc:  # collected and asserted on below
            failures.append(repr(exc)[:200])

    with warnings.catch_warnings(record=True):  # the pools the threads drop: kept out of other tests
        warnings.simplefilter("always")
        threads = [threading.Thread(target=worker, args=(number,)) for number in range(4)]
        for thread in threads:
            thread.start()
        await asyncio.to_thread(lambda: [thread.join(60) for thread in threads])
        await provider.cleanup()
        for _ in range(3):
            gc.collect()
    assert failures == []


@pytest.mark.redis
@pytest.mark.parametrize("cluster", [False, True])
async def test_a_provider_reused_across_asyncio_run_calls_leaks_no_connection(
    cluster: bool, redis_port: int, redis_cluster: list[int]
) -> None:
    """DEFECT: a script calling ``asyncio.run`` for each step (the usual way to drive an
    async library from sync code) leaves each finished loop's connection pool open: the
    next loop drops it unclosed (ResourceWarning: unclosed Connection / transport), and
    the final ``asyncio.run(provider.cleanup())``, in a loop of its own, closes nothing."""
    provider = (
        RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=_namespace(), shards=2)
        if cluster
        else RedisStorageProvider(port=redis_port, namespace=_namespace(), shards=2)
    )

    def script() -> None:
        for n in range(3):
            asyncio.run(provider.save(f"k{n}", n, "t"))
        asyncio.run(provider.cleanup())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await asyncio.to_thread(script)
        for _ in range(3):
            gc.collect()
    await provider.cleanup()
    leaks = [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)]
    assert leaks == []


# -- bulk deletes, damage, explain -------------------------------------------------------


@pytest.mark.redis
async def test_delete_matching_with_a_small_limit_reads_only_about_what_it_deletes(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    """DEFECT: ``delete_matching(limit=1)`` collects every matching record of a shard
    (``_delete_matching_in`` reads the shard unlimited, then slices ``[:most]``), so
    deleting in small batches from a big namespace costs the whole shard per batch, O(N^2)
    overall; a search with the same limit reads one chunk."""
    provider = RedisStorageProvider(port=redis_port, namespace=_namespace())
    made.append(provider)
    await provider.save_many({f"k{n}": n for n in range(10_000)}, "t")
    with redis.Redis(port=redis_port) as admin:

        def mgets() -> int:
            return int(admin.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))

        start = mgets()
        assert len([r async for r in provider.search(StorageQuery(limit=1))]) == 1
        searched = mgets() - start
        start = mgets()
        assert await provider.delete_matching(StorageQuery(limit=1)) == 1
        deleted = mgets() - start
    assert searched <= 2
    assert deleted <= 2, f"delete_matching(limit=1) made {deleted} MGETs (a search with limit=1: {searched})"


@pytest.mark.redis
async def test_delete_matching_and_purge_span_every_shard_of_a_cluster(
    redis_cluster: list[int], made: list[RedisStorageProvider]
) -> None:
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=_namespace(), shards=7)
    made.append(provider)
    await provider.save_many({f"k{n}": n for n in range(200)}, "t", tags={"x": "1"})
    assert await provider.delete_matching(StorageQuery(tags={"x": "1"}, limit=123)) == 123
    assert await provider.delete_matching(StorageQuery(tags={"x": "1"}, limit=1000)) == 77
    assert await provider.purge_expired() == 0
    report = await provider.check()
    assert report.ok and report.records == 0


@pytest.mark.redis
async def test_a_damaged_shard_count_is_a_storage_error(redis_port: int, made: list[RedisStorageProvider]) -> None:
    """DEFECT: a shard-count key that does not hold a number (damage, or another program's
    key under the same name) makes every operation raise a raw ``ValueError`` from
    ``int(before)`` in ``_check_shards``, not a StorageError naming the namespace."""
    namespace = _namespace()
    with redis.Redis(port=redis_port) as admin:
        admin.set(layout.shards_key(namespace.encode()), b"abc")
    provider = RedisStorageProvider(port=redis_port, namespace=namespace)
    made.append(provider)
    with pytest.raises(StorageError, match=namespace):
        await asyncio.wait_for(provider.load("k"), 10)


@pytest.mark.redis
async def test_explain_of_a_shard_that_does_not_exist_is_a_validation_error(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    """DEFECT: ``explain(query, shard=5)`` on a 2-shard namespace raises a bare
    IndexError, and ``shard=-1`` silently explains the last shard; its docstring promises
    ValidationError for bad input."""
    provider = RedisStorageProvider(port=redis_port, namespace=_namespace(), shards=2)
    made.append(provider)
    for shard in (5, -1):
        with pytest.raises(ValidationError, match="shard"):
            await provider.explain_shard(StorageQuery(), shard)


@pytest.mark.redis
async def test_a_shard_whose_marker_names_another_count_refuses_writes(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    # The namespace's own marker lost (or never written by an older writer), a shard's marker
    # still says how the namespace was split: a write there is refused, not misplaced.
    namespace = _namespace()
    prefix = layout.shard_prefix(namespace.encode(), 0, 1)
    with redis.Redis(port=redis_port) as admin:
        admin.set(prefix + layout.MARKER, b"3")
        provider = RedisStorageProvider(port=redis_port, namespace=namespace)
        made.append(provider)
        with pytest.raises(ValidationError, match="split over 3 shards; open it with shards=3"):
            await provider.save("k", 1, "doc")
        assert admin.get(layout.record_key(prefix, b"k")) is None
        admin.set(prefix + layout.MARKER, b"one")  # damage
        with pytest.raises(StorageCorruptionError, match=r"shard count \(b'us\{.*:0\}:shards'\) is damaged"):
            await provider.save("k", 1, "doc")
        assert admin.get(layout.record_key(prefix, b"k")) is None


@pytest.mark.redis
async def test_a_write_whose_keys_keep_changing_runs_with_the_probe_declared(
    redis_cluster: list[int], made: list[RedisStorageProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a cluster a run of a write script that meets keys it was not given asks for them
    # (NEED); past NEED_ROUNDS of those it runs with the shard's probe key declared and
    # uses the keys it learns (here at once: the first NEED spends the rounds).
    from unistore.providers.redis import provider as redis_provider

    monkeypatch.setattr(redis_provider, "NEED_ROUNDS", 1)
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=_namespace())
    made.append(provider)
    await provider.save("k", 1, "doc", tags={"colour": "red"})
    await provider.save("k", 2, "doc", tags={"colour": "blue"})
    await provider.save_many({"k": 3, "j": 4}, "doc", tags={"colour": "green"})
    assert await provider.delete_many(["k", "j"]) == 2
    assert (await provider.check()).ok


@pytest.mark.redis
async def test_an_index_key_of_the_wrong_type_is_a_storage_error_not_a_crash(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    namespace = _namespace()
    provider = RedisStorageProvider(port=redis_port, namespace=namespace)
    made.append(provider)
    await provider.save("k", 1, "doc", tags={"colour": "red"})
    prefix = layout.shard_prefix(namespace.encode(), 0, 1)
    from unistore import index

    red = layout.posting_key(prefix, index.TAG, index.tag_term(b"colour", b"red"))
    with redis.Redis(port=redis_port) as admin:
        admin.delete(red)
        admin.set(red, b"not a set")  # another program's key, or damage
    with pytest.raises(StorageError, match="WRONGTYPE"):
        [r async for r in provider.search(StorageQuery(tags={"colour": "red"}))]
    assert (await provider.load("k")).data == 1


def test_a_url_option_redis_py_does_not_take_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="a Redis setting redis-py does not take"):
        RedisStorageProvider.from_url("redis://127.0.0.1:6379/0?namespace=x&no_such_option=1")


# -- found by a hostile review of the Redis provider's operations ------------------------


@pytest.mark.redis
async def test_a_provider_whose_first_check_keeps_failing_keeps_no_connection_behind(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    # Every operation after a failed first check made a new connection and kept the old one
    # (and its slot map) for ever: 500 refused loads held 68 MB.
    from unistore.providers.redis.connection import Connection

    namespace = _namespace()
    counted = RedisStorageProvider(port=redis_port, namespace=namespace, shards=3)
    made.append(counted)
    await counted.save("k", 1, "doc")
    refused = RedisStorageProvider(port=redis_port, namespace=namespace, shards=2)
    made.append(refused)
    for _ in range(50):
        with pytest.raises(ValidationError, match="split over 3 shards"):
            await refused.load("k")
    gc.collect()
    assert len(refused._closers) <= 1
    assert sum(isinstance(thing, Connection) for thing in gc.get_objects()) <= 3  # counted's, refused's last, slack


@pytest.mark.redis
async def test_every_operation_reconnects_after_the_server_closed_idle_connections(
    tmp_path: Any, redis_starter: Any
) -> None:
    # check() sent INFO on a pooled connection that the server had closed (--timeout), and
    # failed with "Connection closed by server" where every other operation reconnected.
    process, port = redis_starter(tmp_path, None, "--timeout", "1")
    provider = RedisStorageProvider(port=port, namespace=_namespace())
    try:
        await provider.save("k", 1, "doc")
        for operation in (provider.check, provider.usage, provider.namespaces, lambda: provider.load("k")):
            await asyncio.sleep(2.2)  # the server closes connections idle for a second
            await operation()
    finally:
        await provider.cleanup()
        process.kill()
        process.wait()


async def _contend(provider: RedisStorageProvider, writers: int, keys: int, seconds: float) -> list[BaseException]:
    """Writers that save, save_many and delete_many the same keys, each giving a tag a new
    value every time; the errors they met."""
    failures: list[BaseException] = []
    deadline = asyncio.get_running_loop().time() + seconds

    async def writer(number: int) -> None:
        serial = 0
        while asyncio.get_running_loop().time() < deadline:
            serial += 1
            chosen = [f"k{(number + serial + n) % keys}" for n in range(3)]
            tag = {"v": f"{number}-{serial}"}
            try:
                if serial % 3 == 0:
                    await provider.save(chosen[0], serial, "doc", tags=tag)
                elif serial % 3 == 1:
                    await provider.save_many(dict.fromkeys(chosen, serial), "doc", tags=tag)
                else:
                    await provider.delete_many(chosen)
            except StorageError as exc:
                failures.append(exc)

    await asyncio.gather(*(writer(number) for number in range(writers)))
    return failures


@pytest.mark.redis
@pytest.mark.watchdog(120)
async def test_writers_changing_the_same_items_tags_are_not_turned_away_on_one_server(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    # One server routes nothing, yet writes asked for their keys again and again under
    # contention, then gave up with a "connection" error: 23% of 20 writers' batches.
    provider = RedisStorageProvider(port=redis_port, namespace=_namespace())
    made.append(provider)
    assert await _contend(provider, writers=10, keys=10, seconds=2) == []
    assert (await provider.check()).ok


@pytest.mark.redis
@pytest.mark.watchdog(120)
async def test_writers_changing_the_same_items_tags_get_through_on_a_cluster(
    redis_cluster: list[int], made: list[RedisStorageProvider]
) -> None:
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=_namespace())
    made.append(provider)
    assert await _contend(provider, writers=4, keys=10, seconds=2) == []
    assert (await provider.check()).ok


@pytest.mark.redis
@pytest.mark.watchdog(120)
async def test_each_delete_batch_declares_only_its_own_items_keys(
    tmp_path: Any, redis_starter: Any
) -> None:
    # delete_matching declared the posting sets of every match of the shard in every batch:
    # items with tags of their own made each script's work grow with all the matches
    # (30 ms a batch for 100k matches).
    process, port = redis_starter(tmp_path, None, "--slowlog-log-slower-than", "0", "--slowlog-max-len", "100000")
    provider = RedisStorageProvider(port=port, namespace=_namespace())
    try:
        for start in range(0, 2000, 500):
            for n in range(start, start + 500):
                await provider.save(f"k{n}", n, "doc", tags={"own": str(n), "all": "yes"})
        with redis.Redis(port=port) as admin:
            admin.slowlog_reset()
            assert await provider.delete_matching(StorageQuery(tags={"all": "yes"})) == 2000
            keys = [
                int(entry["command"].split()[2])
                for entry in admin.slowlog_get(100_000)
                if entry["command"].startswith(b"EVALSHA")
            ]
        # 4 of the shard's own, then per item its record, content type and two tags, at most
        assert keys and max(keys) <= 4 + 200 * 4, max(keys)
    finally:
        await provider.cleanup()
        process.kill()
        process.wait()


@pytest.mark.redis
async def test_a_save_that_meets_a_damaged_index_key_writes_nothing_and_check_repairs_it(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    # An index key of the wrong type (someone's string under our name) failed a save halfway:
    # the record was written, its index entries not; and check() then crashed on it.
    namespace = _namespace()
    provider = RedisStorageProvider(port=redis_port, namespace=namespace)
    made.append(provider)
    await provider.save("a", 1, "doc", tags={"colour": "red"}, expires_at=_soon())
    prefix = layout.shard_prefix(namespace.encode(), 0, 1)
    from unistore import index

    damaged = [
        prefix + layout.CREATED,
        prefix + layout.EXPIRES,
        layout.posting_key(prefix, index.CONTENT_TYPE, b"doc"),
        layout.posting_key(prefix, index.TAG, index.tag_term(b"colour", b"red")),
    ]
    with redis.Redis(port=redis_port) as admin:
        for key in damaged:
            kept = admin.dump(key)
            admin.delete(key)
            admin.set(key, b"not ours")
            with pytest.raises(StorageError, match=r"WRONGTYPE|holds a string"):
                await provider.save("b", 2, "doc", tags={"colour": "red"}, expires_at=_soon())
            assert admin.get(layout.record_key(prefix, b"b")) is None, key  # nothing written
            report = await provider.check()
            assert not report.ok and any("string" in problem for problem in report.problems), report.problems
            await provider.check(repair=True)
            assert (await provider.check()).ok
            assert admin.type(key) != b"string"
            admin.delete(key)
            admin.restore(key, 0, kept)
    assert (await provider.save("b", 2, "doc", tags={"colour": "red"})).data == 2


@pytest.mark.redis
async def test_a_record_key_of_another_type_is_reported_and_repaired_by_check(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    # check read record keys with MGET, which answers nil for a key of another type: a hash
    # under a record's name was passed over in silence, and no repair ever removed it.
    namespace = _namespace()
    provider = RedisStorageProvider(port=redis_port, namespace=namespace)
    made.append(provider)
    await provider.save("a", 1, "doc")
    prefix = layout.shard_prefix(namespace.encode(), 0, 1)
    with redis.Redis(port=redis_port) as admin:
        admin.hset(layout.record_key(prefix, b"b"), "field", "value")
        report = await provider.check()
        assert report.records == 1 and any("a hash, not a string" in problem for problem in report.problems), (
            report.problems
        )
        assert (await provider.usage())["doc"].items == 1  # counted without it
        await provider.check(repair=True)
        assert admin.exists(layout.record_key(prefix, b"b")) == 0
    assert (await provider.check()).ok
    assert (await provider.save("b", 2, "doc")).data == 2


def _soon() -> Any:
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc) + timedelta(hours=1)


@pytest.mark.redis
async def test_damaged_markers_are_reported_and_repaired_by_check(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    namespace = _namespace()
    provider = RedisStorageProvider(port=redis_port, namespace=namespace, shards=2)
    made.append(provider)
    await provider.save_many({f"k{n}": n for n in range(20)}, "doc")
    marker = layout.shards_key(namespace.encode())
    shard_marker = layout.shard_prefix(namespace.encode(), 1, 2) + layout.MARKER
    with redis.Redis(port=redis_port) as admin:
        for damage in (lambda: admin.set(marker, b"garbage"), lambda: admin.rpush(marker, b"2")):
            admin.delete(marker)
            damage()
            fresh = RedisStorageProvider(port=redis_port, namespace=namespace, shards=2)
            made.append(fresh)
            with pytest.raises(StorageCorruptionError, match="shard count"):
                await fresh.load("k1")  # data operations refuse a namespace they cannot verify
            report = await fresh.check()
            assert any("shard count" in problem for problem in report.problems), report.problems
            await fresh.check(repair=True)
            assert admin.get(marker) == b"2"
            assert (await fresh.load("k1")).data == 1
        for damage in (lambda: admin.set(shard_marker, b"garbage"), lambda: admin.rpush(shard_marker, b"2")):
            admin.delete(shard_marker)
            damage()
            report = await provider.check()
            assert any(repr(shard_marker) in problem for problem in report.problems), report.problems
            await provider.check(repair=True)
            assert admin.get(shard_marker) == b"2" and (await provider.check()).ok
        admin.set(shard_marker, b"5")  # another count: reported, not ours to overwrite
        report = await provider.check()
        assert any("says b'5', not 2" in problem for problem in report.problems), report.problems
        await provider.check(repair=True)
        assert admin.get(shard_marker) == b"5"
        admin.set(shard_marker, b"2")


@pytest.mark.redis
async def test_a_marker_damaged_while_a_provider_writes_stops_its_writes(
    redis_port: int, made: list[RedisStorageProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    from unistore.providers.redis import provider as redis_provider

    monkeypatch.setattr(redis_provider, "MARKER_EVERY", 0)  # every write records the count again
    namespace = _namespace()
    provider = RedisStorageProvider(port=redis_port, namespace=namespace)
    made.append(provider)
    await provider.save("k", 1, "doc")
    with redis.Redis(port=redis_port) as admin:
        admin.set(layout.shards_key(namespace.encode()), b"garbage")
    with pytest.raises(StorageCorruptionError, match="shard count"):
        await provider.save("k", 2, "doc")
    assert (await provider.load("k")).data == 1


@pytest.mark.redis
@pytest.mark.watchdog(60)
async def test_a_server_busy_with_another_clients_script_is_waited_for(
    tmp_path: Any, redis_starter: Any
) -> None:
    # BUSY (another client's long script) came back as a plain StorageError, not retried.
    from unistore import StorageConnectionError

    process, port = redis_starter(tmp_path, None, "--busy-reply-threshold", "50")
    provider = RedisStorageProvider(port=port, namespace=_namespace())
    spin = "local start = redis.call('TIME') repeat local now = redis.call('TIME') until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1])"  # noqa: E501

    def busy(micros: int) -> threading.Thread:
        def run() -> None:
            with redis.Redis(port=port) as other:
                other.eval(spin, 0, micros)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    try:
        await provider.save("k", 1, "doc")
        thread = busy(150_000)
        await asyncio.sleep(0.08)  # past the threshold: others get BUSY
        assert (await provider.load("k")).data == 1  # waited for
        thread.join()
        thread = busy(3_000_000)
        await asyncio.sleep(0.08)
        with pytest.raises(StorageConnectionError, match="BUSY"):  # past the retries: one a caller may retry
            await provider.load("k")
        thread.join()
    finally:
        await provider.cleanup()
        process.kill()
        process.wait()
