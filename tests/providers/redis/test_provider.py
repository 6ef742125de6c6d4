"""What is Redis's own in the Redis provider, against real redis-servers: how it is
built, shards, the planner's paths, expiry by Redis and purging, and a server
that goes away and comes back. (The conformance and property suites run on it too.)"""

from __future__ import annotations

import asyncio
import gc
import io
import itertools
import logging
import os
import re
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from helpers import UTC, fresh_namespace
from unistore import (
    StorageConnectionError,
    StorageCorruptionError,
    StorageError,
    StorageMonitor,
    StorageQuery,
    UnifiedStorageManager,
    ValidationError,
    cli,
    index,
    open_provider,
)
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import check as redis_check
from unistore.providers.redis import layout
from unistore.providers.redis import provider as redis_provider


@pytest.fixture
async def make(redis_port: int, redis_db: int, raw: redis.Redis) -> AsyncIterator[Any]:
    made: list[RedisStorageProvider] = []

    def make(**settings: Any) -> RedisStorageProvider:
        provider = RedisStorageProvider({"host": "127.0.0.1", "port": redis_port, "db": redis_db, **settings})
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.cleanup()


def test_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="unknown Redis settings: 'hots'"):
        RedisStorageProvider({"hots": "x"})
    for shards in (0, 1025, "2", True):
        with pytest.raises(ValidationError, match="shards must be an int from 1 to 1024"):
            RedisStorageProvider(shards=shards)
    with pytest.raises(ValidationError, match="namespace"):
        RedisStorageProvider(namespace="")
    for url, why in (
        (5, "url must be a str"),
        ("http://h", r"starts with redis://, rediss://, redis\+cluster:// or rediss\+cluster://"),
        ("redis+sentinel://h", "starts with redis://"),
        ("redis://h?shards=x", "shards must be an int"),
    ):
        with pytest.raises(ValidationError, match=why):
            RedisStorageProvider.from_url(url)  # type: ignore[arg-type]


async def test_built_from_a_url_or_open_provider(redis_port: int, redis_db: int, raw: redis.Redis) -> None:
    url = f"redis://127.0.0.1:{redis_port}/{redis_db}?namespace=urls&shards=3"
    for provider in (RedisStorageProvider.from_url(url), open_provider(url)):
        assert isinstance(provider, RedisStorageProvider)
        assert (provider.namespace, provider.shards) == ("urls", 3)
        assert repr(provider) == "RedisStorageProvider(host='127.0.0.1', namespace='urls', shards=3)"
        await provider.save("k", 1, "t")
        assert (await provider.load("k")).data == 1
        await provider.cleanup()
    secret = RedisStorageProvider({"host": "db.example", "password": "hunter2"})
    assert "hunter2" not in repr(secret) and "db.example" in repr(secret)
    with pytest.raises(ValidationError, match="unknown option"):
        open_provider(f"redis://127.0.0.1:{redis_port}/0?namespaec=x")
    with pytest.raises(ValidationError, match="shards must be a positive integer"):
        open_provider(f"redis://127.0.0.1:{redis_port}/0?shards=-1")


async def test_a_namespace_spread_over_shards_answers_as_one(make: Any, raw: redis.Redis) -> None:
    provider = make(namespace="spread", shards=4)
    saved = await provider.save_many({f"k{n}": n for n in range(200)}, "t", tags={"all": "yes"})
    assert [item.data for item in saved] == list(range(200))
    used = {key.split(b"}")[0] + b"}:" for key in raw.scan_iter(match=b"us{spread:*")}
    assert used == {layout.shard_prefix(b"spread", shard, 4) for shard in range(4)}  # every shard holds some
    assert len(await provider.load_many([f"k{n}" for n in range(0, 200, 2)])) == 100
    assert len([r async for r in provider.search(StorageQuery(tags={"all": "yes"}, limit=150))]) == 150
    assert len([r async for r in provider.search(StorageQuery(pattern="k1*"))]) == 111
    assert await provider.delete_many([f"k{n}" for n in range(100)]) == 100
    assert await provider.delete_matching(StorageQuery(pattern="k1*", limit=5)) == 5
    assert await provider.delete_matching(StorageQuery(tags={"all": "yes"})) == 95
    assert [r async for r in provider.search(StorageQuery())] == []


async def test_the_planner_takes_the_cheapest_path(make: Any, raw: redis.Redis) -> None:
    provider = make(namespace="plans")
    raw.mset({f"other:{n}": b"" for n in range(20_000)})  # a SCAN visits every key of the database
    await provider.save_many({f"rare{n}": n for n in range(10)}, "t", tags={"rare": "yes"})
    await provider.save_many({f"common{n}": n for n in range(2000)}, "t", tags={"common": "yes"})
    soon = datetime.now(UTC) + timedelta(hours=1)
    await provider.save_many({f"due{n}": n for n in range(600)}, "d", expires_at=soon)  # one score for all
    assert (await provider.explain(StorageQuery(tags={"rare": "yes"}))).path == index.POSTINGS
    assert (await provider.explain(StorageQuery(pattern="*5", tags={"common": "yes"}))).path == index.KEYS
    expiring = StorageQuery(expires_before=soon + timedelta(seconds=1))
    assert (await provider.explain(expiring)).path == index.EXPIRES_RANGE
    # 600 items of one expiry score read in pages of 256: no page repeats or skips one.
    assert sorted([r.item.data async for r in provider.search(expiring)]) == list(range(600))
    assert len([r async for r in provider.search(StorageQuery(tags={"rare": "yes", "common": "yes"}))]) == 0
    both = StorageQuery(tags={"rare": "yes"}, content_type="t")
    assert (await provider.explain(both)).terms[0] == (index.TAG, index.tag_term(b"rare", b"yes"))
    assert len([r async for r in provider.search(both)]) == 10


async def test_expired_items_vanish_and_purging_removes_their_index_entries(make: Any, raw: redis.Redis) -> None:
    provider = make(namespace="ttl")
    soon = datetime.now(UTC) + timedelta(milliseconds=50)
    await provider.save_many({f"brief{n}": n for n in range(5)}, "t", expires_at=soon, tags={"x": "1"})
    await provider.save("stays", 0, "t", tags={"x": "1"})
    await asyncio.sleep(0.1)
    prefix = layout.shard_prefix(b"ttl", 0, 1)
    assert not raw.exists(layout.record_key(prefix, b"brief0"))  # Redis expired it
    assert raw.scard(layout.posting_key(prefix, index.TAG, index.tag_term(b"x", b"1"))) == 6  # stale entries
    assert [r.item.metadata.key async for r in provider.search(StorageQuery(tags={"x": "1"}))] == ["stays"]
    assert await provider.purge_expired() == 5
    assert raw.scard(layout.posting_key(prefix, index.TAG, index.tag_term(b"x", b"1"))) == 1
    assert raw.zcard(prefix + layout.EXPIRES) == 0 and not raw.exists(prefix + b"heads")
    assert await provider.purge_expired() == 0


async def test_purge_works_through_more_than_one_batch(make: Any, raw: redis.Redis, monkeypatch: Any) -> None:
    monkeypatch.setattr(redis_provider, "PURGE_BATCH", 3)
    provider = make(namespace="batches")
    await provider.save_many(
        {f"k{n}": n for n in range(7)}, "t", expires_at=datetime.now(UTC) + timedelta(milliseconds=20)
    )
    await asyncio.sleep(0.05)
    assert await provider.purge_expired() == 7


async def test_a_search_skips_and_names_a_record_that_does_not_decode(
    make: Any, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    provider = make(namespace="named")
    await provider.save("fine", 1, "t")
    await provider.save("dog", 2, "t")
    raw.set(layout.record_key(layout.shard_prefix(b"named", 0, 1), "dégât".encode()), b"\x01short")
    with caplog.at_level(logging.ERROR, logger="unistore.index"):
        assert [r.item.metadata.key async for r in provider.search(StorageQuery(pattern="d*"))] == ["dog"]
    [logged] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "'dégât'" in logged  # as load names it: the key, as text
    with pytest.raises(StorageCorruptionError) as caught:
        await provider.load("dégât")
    assert caught.value.details["key"] == "dégât"


async def test_a_save_replaces_a_damaged_record(make: Any, raw: redis.Redis) -> None:
    provider = make(namespace="damage")
    raw.set(layout.record_key(layout.shard_prefix(b"damage", 0, 1), b"k"), b"\x01short")
    with pytest.raises(StorageCorruptionError):
        await provider.load("k")
    item = await provider.save("k", 1, "t", tags={"a": "b"})
    assert await provider.load("k") == item
    assert [r.item async for r in provider.search(StorageQuery(tags={"a": "b"}))] == [item]
    assert (await provider.check()).ok


async def test_a_server_that_goes_away_and_comes_back(tmp_path: Path, redis_starter: Any) -> None:
    process, port = redis_starter(tmp_path)
    provider = RedisStorageProvider({"host": "127.0.0.1", "port": port, "namespace": uuid.uuid4().hex})
    try:
        await provider.save("before", 1, "t")
        redis.Redis(port=port).save()  # kept in the server's dump, for the server that comes back
        process.terminate()
        process.wait(timeout=10)
        for operation in (provider.load("before"), provider.save("during", 2, "t"), provider.delete("before")):
            with pytest.raises(StorageConnectionError, match="Redis is unreachable") as caught:
                await operation
            assert caught.value.__cause__ is not None
        with pytest.raises(StorageConnectionError):
            [r async for r in provider.search(StorageQuery())]
        with pytest.raises(StorageConnectionError):
            await provider.page(StorageQuery(), 5)  # (each shard's ordered stream fails: the page says so)
        process, _ = redis_starter(tmp_path, port)
        assert (await provider.load("before")).data == 1  # the same provider, reconnected
        await provider.save("after", 3, "t")
        assert {r.item.metadata.key async for r in provider.search(StorageQuery())} == {"before", "after"}
    finally:
        await provider.cleanup()
        process.terminate()
        process.wait(timeout=10)


async def test_a_key_saved_again_after_redis_expired_it_survives_purging(make: Any, raw: redis.Redis) -> None:
    # The new save used to leave the expired item's index entries (and its expiry
    # entry), and purging them then deleted the new, live record (found by probing).
    provider = make(namespace="again")
    await provider.save("k", 1, "t", datetime.now(UTC) + timedelta(milliseconds=30), tags={"old": "1"})
    await provider.save("past", 1, "t", datetime(2000, 1, 1, tzinfo=UTC), tags={"old": "1"})
    await asyncio.sleep(0.08)
    await provider.save("k", 2, "t", tags={"new": "1"})
    await provider.save("past", 2, "t", tags={"new": "1"})
    prefix = layout.shard_prefix(b"again", 0, 1)
    assert raw.scard(layout.posting_key(prefix, index.TAG, index.tag_term(b"old", b"1"))) == 0
    assert raw.zcard(prefix + layout.EXPIRES) == 0 and not raw.exists(prefix + b"heads")
    assert await provider.purge_expired() == 0
    assert {key: (await provider.load(key)).data for key in ("k", "past")} == {"k": 2, "past": 2}
    await provider.save("gone", 1, "t", datetime.now(UTC) + timedelta(milliseconds=30), tags={"old": "1"})
    await asyncio.sleep(0.08)
    assert await provider.delete("gone") is False  # nothing live; its leftovers go with it
    assert raw.scard(layout.posting_key(prefix, index.TAG, index.tag_term(b"old", b"1"))) == 0
    assert raw.zcard(prefix + layout.EXPIRES) == 0


async def test_a_namespace_keeps_its_shard_count(make: Any) -> None:
    await make(namespace="counted", shards=3).save("k", 1, "t")
    other = make(namespace="counted", shards=2)
    for _ in range(2):  # refused again: a client whose check failed is not kept
        with pytest.raises(ValidationError, match="split over 3 shards; open it with shards=3"):
            await other.load("k")
    assert (await make(namespace="counted", shards=3).load("k")).data == 1
    assert (await make(namespace="counted2", shards=2).load_many(["k"])) == {}  # another namespace: its own count


async def test_a_password_and_an_acl_user_limited_to_its_keys(tmp_path: Path, redis_starter: Any) -> None:
    process, port = redis_starter(tmp_path, None, "--requirepass", "s3cret")
    try:
        admin = redis.Redis(port=port, password="s3cret")
        admin.acl_setuser("app", enabled=True, passwords=["+apppass"], keys=["us{tenant*"], commands=["+@all"])
        admin.close()
        settings = {"host": "127.0.0.1", "port": port}
        wrong = RedisStorageProvider({**settings, "password": "nope"})
        with pytest.raises(StorageConnectionError, match="Redis refused the credentials"):
            await wrong.load("k")
        owner = RedisStorageProvider({**settings, "password": "s3cret", "namespace": "anything"})
        await owner.save("k", 1, "t")
        app = RedisStorageProvider({**settings, "username": "app", "password": "apppass", "namespace": "tenant-a"})
        await app.save("k", 2, "t", tags={"x": "1"})
        assert [r.item.data async for r in app.search(StorageQuery(tags={"x": "1"}))] == [2]
        assert [r.item.data async for r in app.search(StorageQuery(pattern="*"))] == [2]  # its own keys only
        outside = RedisStorageProvider({**settings, "username": "app", "password": "apppass", "namespace": "other"})
        with pytest.raises(StorageError, match=r"Redis refused the operation: .*no permissions"):
            await outside.save("k", 3, "t")
        for provider in (wrong, owner, app, outside):
            await provider.cleanup()
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_provider_inherited_across_a_fork_works_in_the_child(make: Any) -> None:
    provider = make(namespace="forked")
    await provider.save("parent", 1, "t")
    pid = os.fork()
    if pid == 0:  # the child: its own watchdog, its own event loop, its own connections
        signal.alarm(30)
        code = 1
        try:

            async def child() -> None:
                assert (await provider.load("parent")).data == 1
                await provider.save("child", 2, "t")
                await provider.cleanup()

            asyncio.run(child())
            code = 0
        finally:
            os._exit(code)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (await provider.load("child")).data == 2  # the parent's connections still work
    assert (await provider.load("parent")).data == 1


def test_cluster_settings_are_checked() -> None:
    for nodes, why in (
        ([], "names no node"),
        ("127.0.0.1:7000", "must be a list"),
        (["127.0.0.1"], "with a port from 1 to 65535"),
        (["127.0.0.1:0"], "with a port from 1 to 65535"),
        ([("127.0.0.1", "x")], "with a port from 1 to 65535"),
        ([("", 7000)], "with a port from 1 to 65535"),
        ([7000], r"is 'host:port' or \(host, port\)"),
    ):
        with pytest.raises(ValidationError, match=why):
            RedisStorageProvider(cluster_nodes=nodes)
    for clash, why in (({"host": "h"}, "not host"), ({"port": 1, "db": 2}, "not port, db")):
        with pytest.raises(ValidationError, match=f"reached through cluster_nodes, {why}"):
            RedisStorageProvider(cluster_nodes=["h:1"], **clash)
    with pytest.raises(ValidationError, match="database 0 only; the URL names '3'"):
        open_provider("redis+cluster://h:1,h:2/3?namespace=x")
    provider = open_provider("rediss+cluster://u:pw@h:1,[::1]:2/0?namespace=x&shards=16")
    assert repr(provider) == "RedisStorageProvider(cluster='h:1,::1:2', namespace='x', shards=16)"
    assert "pw" not in repr(provider)


async def test_a_namespace_spans_every_master_of_a_cluster(redis_cluster: list[int]) -> None:
    nodes = ",".join(f"127.0.0.1:{port}" for port in redis_cluster[1:])  # any node finds the others
    provider = open_provider(f"redis+cluster://{nodes}?namespace=spans&shards=3")
    try:
        await provider.delete_matching(StorageQuery())
        await provider.save_many({f"k{n}": n for n in range(300)}, "t", tags={"all": "yes"})
        held = []
        for port in redis_cluster:  # each master holds one shard, as the slots spread them
            with redis.Redis(port=port) as master:
                held.append(sum(1 for _ in master.scan_iter(match=b"us{spans:*}:r:*")))
        assert all(held) and sum(held) == 300
        for query in (StorageQuery(tags={"all": "yes"}), StorageQuery(pattern="k*"), StorageQuery()):
            assert sorted([r.item.data async for r in provider.search(query)]) == list(range(300))
        for limit in (1, 7, 256, 299):  # exact, however the shards' answers interleave
            found = [r.item.metadata.key async for r in provider.search(StorageQuery(pattern="k*", limit=limit))]
            assert len(found) == len(set(found)) == limit
        assert await provider.delete_matching(StorageQuery(tags={"all": "yes"}, limit=150)) == 150
        assert await provider.delete_matching(StorageQuery(pattern="k*")) == 150
    finally:
        await provider.cleanup()


async def test_leaving_a_scattered_search_early_stops_every_shard(redis_cluster: list[int]) -> None:
    provider = RedisStorageProvider(
        cluster_nodes=[("127.0.0.1", redis_cluster[0])], namespace=uuid.uuid4().hex, shards=8
    )
    try:
        await provider.save_many({f"k{n}": n for n in range(2000)}, "t")
        before = len(asyncio.all_tasks())
        search = provider.search(StorageQuery())
        await anext(search)
        assert len(asyncio.all_tasks()) > before  # the other shards are being read meanwhile
        await search.aclose()
        assert len(asyncio.all_tasks()) == before  # closed: no shard is still being read
        async for _ in provider.search(StorageQuery()):
            break  # Python closes a generator left this way when it collects it: soon, not at once
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(asyncio.all_tasks()) == before:
                break
        assert len(asyncio.all_tasks()) == before
    finally:
        await provider.cleanup()


async def test_a_cluster_that_cannot_be_reached_or_is_no_cluster(redis_port: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    unreachable = open_provider(f"redis+cluster://127.0.0.1:{closed}?namespace=x&socket_connect_timeout=0.5")
    with pytest.raises(StorageConnectionError, match="Redis is unreachable") as caught:
        await unreachable.load("k")
    assert caught.value.__cause__ is not None
    standalone = open_provider(f"redis+cluster://127.0.0.1:{redis_port}?namespace=x")
    with pytest.raises(StorageError, match="cluster support disabled") as refused:
        await standalone.load("k")
    assert not isinstance(refused.value, StorageConnectionError)
    for provider in (unreachable, standalone):
        await provider.cleanup()


async def test_check_counts_a_healthy_namespace_and_tolerates_what_redis_expired(make: Any, raw: redis.Redis) -> None:
    provider = make(namespace="healthy", shards=2)
    soon = datetime.now(UTC) + timedelta(seconds=1)  # (40 ms ran out before the first check under CI's load)
    await provider.save_many({f"k{n}": n for n in range(20)}, "t", tags={"a": "1"})
    await provider.save_many({f"e{n}": n for n in range(5)}, "e", expires_at=soon, tags={"a": "1"})
    await provider.save("k0", "again", "u", tags={"b": "2"})  # an upsert moves its entries
    await provider.delete("k1")
    report = await provider.check()
    assert report.ok, report.problems
    assert (report.records, report.tag_entries, report.type_entries) == (24, 24, 24)
    assert (report.created_entries, report.expires_entries, report.updated_entries) == (24, 5, 24)
    assert report.ids == 24  # the key order's entries
    # Redis expires five records: their entries are stale, not damage.
    await asyncio.sleep((soon - datetime.now(UTC)).total_seconds() + 0.05)
    assert (await provider.check()).ok
    assert await provider.purge_expired() == 5
    report = await provider.check()
    assert report.ok and (report.records, report.expires_entries) == (19, 0)


async def test_check_reports_each_kind_of_damage(make: Any, raw: redis.Redis) -> None:
    provider = make(namespace="hurt")
    soon = datetime.now(UTC) + timedelta(hours=1)
    await provider.save("plain", 1, "t", tags={"colour": "red"})
    await provider.save("due", 2, "t", expires_at=soon)
    await provider.save("other", 3, "t")
    prefix = layout.shard_prefix(b"hurt", 0, 1)
    red = layout.posting_key(prefix, index.TAG, index.tag_term(b"colour", b"red"))
    raw.srem(red, b"plain")  # a missing tag entry
    raw.sadd(layout.posting_key(prefix, index.CONTENT_TYPE, b"t"), b"ghost")  # an entry with no record
    raw.zadd(prefix + layout.CREATED, {b"other": 1})  # a wrong score
    raw.hdel(prefix + b"heads", b"due")  # an expiring record without its head
    raw.hset(prefix + b"heads", b"plain", b"x")  # a head for a record that does not expire
    raw.hset(prefix + b"heads", b"lost", b"\x01short")  # a head that does not decode
    raw.set(layout.record_key(prefix, b"copy"), raw.get(layout.record_key(prefix, b"other")))  # under another key
    raw.set(layout.record_key(prefix, b"broken"), b"\x01short")
    problems = (await provider.check()).problems
    expected = [
        r"tags index lacks entry .*plain",
        r"types index entry .*ghost.* points at no record",
        r"created index entry \(b'other', 1\) points at no record",
        r"created index lacks entry \(b'other', \d+\)",
        r"heads lacks entry b'due'",
        r"heads entry b'plain' belongs to a record that does not expire",
        r"heads entry: .*lost",
        r"record under b'copy' says its key is b'other'",
        r"broken",
    ]
    for pattern in expected:
        assert any(re.search(pattern, problem) for problem in problems), (pattern, problems)
    assert not (await make(namespace="unhurt").check()).problems


async def test_a_repair_deletes_only_what_the_store_confirms_by_key_when_it_repairs(
    make: Any, raw: redis.Redis
) -> None:
    # A repair acts on what its SCANs saw; what changed since (or what a stale view missed)
    # is read again by key first, and kept unless it is still damage.
    provider = make(namespace="confirm")
    soon = datetime.now(UTC) + timedelta(hours=1)
    await provider.save("damaged", 1, "t")
    await provider.save("plain", 2, "t")
    await provider.save("due", 3, "t", expires_at=soon)
    prefix = layout.shard_prefix(b"confirm", 0, 1)
    heads = prefix + layout.HEADS
    ghost = (layout.posting_key(prefix, index.CONTENT_TYPE, b"t"), b"ghost")
    raw.set(layout.record_key(prefix, b"damaged"), b"\x01short")
    raw.hset(heads, b"plain", raw.hget(heads, b"due"))  # a (real) head for a record that does not expire
    raw.hset(heads, b"lost", b"\x01short")  # a head that does not decode, of no record
    raw.sadd(*ghost)  # an entry with no record
    connection = await provider._connection(maintenance=True)
    [shard] = provider._shards
    found = await redis_check._read(shard.pinned(connection), prefix, redis_provider.now_micros(), 1)
    assert set(found.damaged) == {b"damaged"} and set(found.drop_heads) == {b"plain", b"lost"}
    assert ghost in found.stray["types"]
    # Meanwhile: the damaged record is saved whole, "plain" goes (its head left: a head of
    # an expired record vouches for its entries), "lost" gets another head, "ghost" is saved.
    await provider.save("damaged", 4, "t")
    raw.delete(layout.record_key(prefix, b"plain"))
    raw.hset(heads, b"lost", b"\x01other")
    await provider.save("ghost", 5, "t")
    await redis_check._confirm(connection, shard, found)
    assert found.damaged == {} and found.drop_heads == [] and ghost not in found.stray["types"]
    await provider.check(repair=True)  # and a repair now keeps them
    assert (await provider.load("damaged")).data == 4 and (await provider.load("ghost")).data == 5
    assert raw.hget(heads, b"plain") is not None


async def test_check_and_purge_from_the_command_line(redis_port: int, redis_db: int, raw: redis.Redis) -> None:
    url = f"redis://127.0.0.1:{redis_port}/{redis_db}?namespace=cli"
    provider = open_provider(url)
    await provider.save("k", 1, "t", expires_at=datetime.now(UTC) + timedelta(milliseconds=30))
    await provider.cleanup()
    await asyncio.sleep(0.06)
    out = io.StringIO()
    assert await asyncio.to_thread(cli.main, ["check", "--store", url], out) == 0
    assert "consistent" in out.getvalue()
    assert await asyncio.to_thread(cli.main, ["purge", "--store", url], out) == 0
    assert "purged 1 expired item(s)" in out.getvalue()
    raw.sadd(layout.posting_key(layout.shard_prefix(b"cli", 0, 1), index.CONTENT_TYPE, b"t"), b"ghost")
    assert await asyncio.to_thread(cli.main, ["check", "--store", url], out) == 1
    assert "1 problem(s)" in out.getvalue()


async def test_r065_validation_runs_unchanged_on_redis_but_for_the_port(redis_port: int) -> None:
    """R065's validation test ("Validação"), word for word but for the port."""
    # Setup
    manager = UnifiedStorageManager()
    monitor = StorageMonitor()

    # Register providers
    redis_provider = RedisStorageProvider({"host": "localhost", "port": redis_port})
    manager.register_provider("test", redis_provider)

    # Test save
    item = await manager.save("test_key", {"value": "test"}, "test", tags={"purpose": "test"})

    assert item.metadata.key == "test_key"
    assert item.data["value"] == "test"
    assert item.metadata.tags["purpose"] == "test"

    # Test load
    loaded = await manager.load("test_key", "test")
    assert loaded.data["value"] == "test"

    # Test search
    query = StorageQuery(content_type="test", tags={"purpose": "test"})

    results = []
    async for result in manager.search(query):
        results.append(result)

    assert len(results) == 1
    assert results[0].item.data["value"] == "test"

    # Test delete
    deleted = await manager.delete("test_key", "test")
    assert deleted

    # Test monitoring
    await monitor.record_operation("test", "save", True)
    await monitor.record_size("test", 1000)

    await redis_provider.cleanup()  # not in R065's text: the suite fails on a leaked connection


@pytest.mark.watchdog(120)
async def test_a_server_killed_in_a_stream_of_writes_leaves_nothing_half_written(
    tmp_path: Path, redis_starter: Any
) -> None:
    durable = ("--appendonly", "yes", "--appendfsync", "always")  # an acknowledged write is on disk
    process, port = redis_starter(tmp_path, None, *durable)
    provider = RedisStorageProvider({"host": "127.0.0.1", "port": port, "namespace": "stream", "shards": 2})
    present: dict[str, int] = {}  # what the server acknowledged, saves and deletes
    uncertain: set[str] = set()  # the keys of the writes the kill interrupted: done or not
    failed: list[StorageConnectionError] = []
    enough = asyncio.Event()

    async def writer(number: int) -> None:
        for batch in itertools.count():
            keys = {f"w{number}:{batch}:{n}": batch for n in range(20)}
            old = [f"w{number}:{batch - 2}:{n}" for n in range(20)] if batch >= 2 else []
            try:
                await provider.save_many(keys, "t", tags={"batch": f"{number}:{batch}"})
                present.update(keys)
                if batch == 50:
                    enough.set()
                if old:  # and the batch before last goes, in one delete
                    await provider.delete_many(old)
                    for key in old:
                        del present[key]
            except StorageConnectionError as exc:
                failed.append(exc)
                uncertain.update(keys, old)
                return

    writers = [asyncio.create_task(writer(number)) for number in range(4)]
    try:
        await enough.wait()
        process.kill()  # mid-stream: scripts are in flight
        process.wait(timeout=10)
        await asyncio.wait_for(asyncio.gather(*writers), 60)
        assert len(failed) == 4 and all(exc.__cause__ is not None for exc in failed)
        process, _ = redis_starter(tmp_path, port, *durable)
        report = await provider.check()  # the same provider object, reconnected
        assert report.ok, report.problems
        found = {r.item.metadata.key: r.item.data async for r in provider.search(StorageQuery())}
        sure = {key: value for key, value in present.items() if key not in uncertain}
        assert sure.items() <= found.items()  # every acknowledged write survived
        assert not (found.keys() - present.keys() - uncertain)  # and no write that was not made
        batches: dict[str, int] = {}
        for key in found:
            batch = key.rsplit(":", 1)[0]
            batches[batch] = batches.get(batch, 0) + 1
        # a batch is one script per shard: each shard's part is whole or absent
        for batch, count in batches.items():
            in_shards = [
                sum(1 for n in range(20) if provider._shard(f"{batch}:{n}".encode()).number == s) for s in (0, 1)
            ]
            assert count in (0, *in_shards, 20), (batch, count)
    finally:
        for task in writers:
            task.cancel()
        await provider.cleanup()
        process.terminate()
        process.wait(timeout=10)


async def test_check_pages_through_a_cluster(redis_cluster: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_check, "PAGE", 5)  # every SCAN, SSCAN, ZSCAN and HSCAN takes many calls
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace="paged", shards=2)
    try:
        await provider.delete_matching(StorageQuery())
        soon = datetime.now(UTC) + timedelta(hours=1)
        await provider.save_many({f"k{n}": n for n in range(400)}, "t", expires_at=soon, tags={"n": "x"})
        report = await provider.check()
        assert report.ok, report.problems[:5]
        assert (report.records, report.tag_entries, report.expires_entries) == (400, 400, 400)
    finally:
        await provider.cleanup()


async def test_limited_searches_leave_the_loop_quiet(make: Any) -> None:
    """A search that stops at its limit leaves no task whose exception nobody read
    (asyncio logs each at ERROR): a shard's read that ended (StopAsyncIteration) in the
    wake-up whose chunk reached the limit used to. Found by tests/providers/test_differential.py."""
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    handler = loop.get_exception_handler()
    loop.set_exception_handler(
        lambda loop, context: errors.append(f"{context['message']}: {context.get('exception')!r}")
    )
    try:
        provider = make(namespace="quiet", shards=3)
        for key in ("a", "b", ":", "ab"):  # some shards empty, then fewer and fewer
            await provider.save(key, None, "t")
            for _ in range(50):
                assert len([r async for r in provider.search(StorageQuery(limit=1))]) == 1
        await asyncio.sleep(0)
        gc.collect()  # an unread task exception is logged when the task is collected
    finally:
        loop.set_exception_handler(handler)
    assert errors == []


async def test_cleanup_closes_every_connection(redis_port: int, redis_cluster: list[int]) -> None:
    def connected() -> list[int]:
        counts = []
        for port in (redis_port, *redis_cluster):
            with redis.Redis(port=port) as admin:
                counts.append(int(admin.info("clients")["connected_clients"]) - 1)  # less this one
        return counts

    before = connected()
    for round_ in range(30):
        for provider in (
            RedisStorageProvider({"port": redis_port, "namespace": "leaks", "shards": 2}),
            RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace="leaks", shards=3),
        ):
            await provider.save_many({f"k{n}": round_ for n in range(10)}, "t")
            assert len([r async for r in provider.search(StorageQuery(pattern="k*"))]) == 10
            await provider.cleanup()
    assert connected() == before


async def test_cleanup_waits_for_a_command_under_way_and_closes_even_when_cancelled(redis_port: int) -> None:
    def connected() -> int:
        with redis.Redis(port=redis_port) as admin:
            return int(admin.info("clients")["connected_clients"]) - 1  # less this one

    before = connected()
    provider = RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex})
    await provider.save("k", 1, "t")
    connection = await provider._connection()
    async with connection.step():  # a command under way, as a search's chunk read is
        closing = asyncio.ensure_future(provider.cleanup())
        await asyncio.sleep(0.05)
        assert not closing.done() and connected() == before + 1  # it waits; nothing closed yet
        with pytest.raises(StorageError, match=r"closed \(cleanup\) during this operation"):
            async with connection.step():  # no new step once the close has begun
                pass
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
    await provider.cleanup()  # returns once the close the cancelled cleanup began has ended
    assert connected() == before  # closed all the same
    assert (await provider.load("k")).data == 1  # and the next operation connects again
    await provider.cleanup()


@pytest.mark.redis
async def test_delete_matching_with_a_small_limit_reads_only_about_what_it_deletes(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    """DEFECT: ``delete_matching(limit=1)`` collects every matching record of a shard
    (``_delete_matching_in`` reads the shard unlimited, then slices ``[:most]``), so
    deleting in small batches from a big namespace costs the whole shard per batch, O(N^2)
    overall; a search with the same limit reads one chunk."""
    provider = RedisStorageProvider(port=redis_port, namespace=fresh_namespace())
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
    provider = RedisStorageProvider(
        cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=fresh_namespace(), shards=7
    )
    made.append(provider)
    await provider.save_many({f"k{n}": n for n in range(200)}, "t", tags={"x": "1"})
    assert await provider.delete_matching(StorageQuery(tags={"x": "1"}, limit=123)) == 123
    assert await provider.delete_matching(StorageQuery(tags={"x": "1"}, limit=1000)) == 77
    assert await provider.purge_expired() == 0
    report = await provider.check()
    assert report.ok and report.records == 0


@pytest.mark.redis
async def test_explain_of_a_shard_that_does_not_exist_is_a_validation_error(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    """DEFECT: ``explain(query, shard=5)`` on a 2-shard namespace raises a bare
    IndexError, and ``shard=-1`` silently explains the last shard; its docstring promises
    ValidationError for bad input."""
    provider = RedisStorageProvider(port=redis_port, namespace=fresh_namespace(), shards=2)
    made.append(provider)
    for shard in (5, -1):
        with pytest.raises(ValidationError, match="shard"):
            await provider.explain_shard(StorageQuery(), shard)
