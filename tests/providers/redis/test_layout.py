"""The Redis layout and write scripts, against a real redis-server: key names,
hash tags, escaping, and what SAVE and DELETE leave in the server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from helpers import UTC
from unistore import (
    StorageQuery,
    index,
)
from unistore.codec import decode_item, prepare_save
from unistore.model import now_micros
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout, scripts

HOUR = 3_600_000_000  # µs


@given(
    first=st.binary(min_size=1, max_size=12),
    second=st.binary(min_size=1, max_size=12),
    shard=st.integers(0, 99),
    shards=st.sampled_from([1, 2, 3, 7, 64, 100, 1024]),
)
def test_no_namespace_shard_prefix_starts_another(first: bytes, second: bytes, shard: int, shards: int) -> None:
    shard %= shards
    one, other = layout.shard_prefix(first, shard, shards), layout.shard_prefix(second, shard, shards)
    assert one.startswith(other) == (first == second)
    escaped = layout.escape_namespace(first)
    assert not set(escaped) & set(b"*?[]\\{}:")  # nothing a glob, a hash tag or a part separator reads
    assert one != layout.shard_prefix(first, (shard + 1) % shards, shards) or shards == 1
    assert one.startswith(b"us{" + escaped + b":" + str(shard).encode() + b"}:") or one.startswith(
        b"us{" + escaped + b":" + str(shard).encode() + b":"
    )


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 16, 64, 100, 1024])
def test_shards_spread_evenly_over_the_slots(shards: int) -> None:
    """Shards land in equal parts of the slot space, in order, so the masters of a
    cluster (each owning a contiguous range) share a namespace's shards evenly."""
    prefixes = [layout.shard_prefix(b"spread", shard, shards) for shard in range(shards)]
    slots = [key_slot(prefix) for prefix in prefixes]
    assert slots == [layout.slot(prefix[3 : prefix.index(b"}")]) for prefix in prefixes]  # Redis's own hash
    parts = min(shards, layout.SPREAD)
    assert [slot * parts // layout.SLOTS for slot in slots] == [shard * parts // shards for shard in range(shards)]
    thirds = [0, 5461, 10923, layout.SLOTS]  # how redis-cli splits the slots over 3 masters
    per_master = [sum(low <= slot < high for slot in slots) for low, high in itertools.pairwise(thirds)]
    assert max(per_master) - min(per_master) <= (0 if shards % 3 == 0 and shards <= 64 else 1 + shards // 64)
    if shards == 1:  # the whole slot space is its part: no suffix
        assert prefixes == [b"us{spread:0}:"]


def test_every_key_of_a_shard_is_in_one_slot() -> None:
    prefix = layout.shard_prefix(b"ns {with} braces*", 3, 4)
    assert prefix.startswith(b"us{ns%20%7Bwith%7D%20braces%2A:3")
    with pytest.raises(ValueError, match="shard 4 is not one of 4"):
        layout.shard_prefix(b"ns", 4, 4)
    keys = [
        layout.record_key(prefix, b"any key {at} all"),
        layout.posting_key(prefix, 0, b"\x00\x00\x00\x01ab"),
        layout.posting_key(prefix, 1, b"doc"),
        layout.time_key(prefix, 2),
        layout.time_key(prefix, 3),
    ]
    assert len({key_slot(key) for key in keys}) == 1


@pytest.fixture
def client(redis_port: int, redis_db: int) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_port, db=redis_db, protocol=3)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_a_scan_pattern_never_reaches_another_namespace(client: redis.Redis) -> None:
    mine, other = layout.shard_prefix(b"a", 0, 1), layout.shard_prefix(b"a:0}:r:", 0, 1)
    for prefix in (mine, other):
        for key in (b"x", b"*", b"}:r:x", b"a:0}:r:x"):
            client.set(layout.record_key(prefix, key), b"")
    for pattern in (b"*", b"*x", b"?", b"\\*", b"[*]"):
        found = set(client.scan_iter(match=layout.scan_pattern(mine, pattern)))
        assert found and all(key.startswith(mine + layout.RECORD) for key in found), pattern
    assert set(client.scan_iter(match=layout.scan_pattern(mine, None))) == {
        layout.record_key(mine, key) for key in (b"x", b"*", b"}:r:x", b"a:0}:r:x")
    }


class Shard:
    """One namespace shard, written through the scripts as the provider writes it (each
    script run again with the keys it asks for declared)."""

    def __init__(self, client: redis.Redis, namespace: bytes, cluster: bool = True) -> None:
        self.client = client
        self.prefix = layout.shard_prefix(namespace, 0, 1)
        self.flag = "1" if cluster else "0"  # a cluster's scripts ask for the keys they learn (NEED)
        self.runs = 0  # round trips, counted

    def run(self, script: scripts.Script, keys: list[bytes], args: list[Any]) -> list[Any]:
        while True:
            self.runs += 1
            try:
                reply = self.client.evalsha(script.sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                reply = self.client.eval(script.source, len(keys), *keys, *args)
            if reply[0] == b"NEED":
                keys = keys + reply[1:]
                continue
            assert reply[0] == b"OK", reply
            return list(reply[1:])

    def write_args(
        self, items: dict[str, Any], content_type: str, expires_at: datetime | None, now: int, **tags: str
    ) -> tuple[list[bytes], list[Any], list[bytes]]:
        keys, args, records = (
            list(layout.shard_keys(self.prefix)),
            [self.flag, self.prefix, now, 1, "1", len(items)],
            [],
        )
        for key, data in items.items():
            fields, record, _ = prepare_save(key, data, content_type, expires_at, tags).build(None, now, lambda: 0)
            postings = [layout.posting_key(self.prefix, kind, term) for kind, term in index.postings(fields)]
            keys += [layout.record_key(self.prefix, key.encode()), *postings]
            args += [key, record, len(postings)]
            records.append(record)
        return keys, args, records

    def save_many(
        self, items: dict[str, Any], content_type: str, expires_at: datetime | None = None, now: int = 0, **tags: str
    ) -> list[Any]:
        now = now or now_micros()  # the scripts judge expiry by the now they are given
        keys, args, records = self.write_args(items, content_type, expires_at, now, **tags)
        patches = self.run(scripts.SAVE, keys, args)
        return [
            decode_item(record[:8] + patch + record[40:] if patch else record, key)
            for record, patch, key in zip(records, patches, items, strict=True)
        ]

    def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, now: int = 0, **tags: str
    ) -> Any:
        [item] = self.save_many({key: data}, content_type, expires_at, now, **tags)
        return item

    def delete_many(self, keys: list[str], content_type: str = "", now: int = 0, token: str = "t") -> int:
        declared = [*layout.shard_keys(self.prefix)[1:], self.prefix + layout.TOKEN + token.encode()]
        declared += [layout.record_key(self.prefix, key.encode()) for key in keys]
        args: list[Any] = [self.flag, self.prefix, now or now_micros(), content_type, len(keys)]
        for key in keys:
            args += [key, ""]
        [count] = self.run(scripts.DELETE, declared, [*args, scripts.TOKEN_TTL_MS])
        return int(count)

    def delete(self, key: str, content_type: str = "", now: int = 0, token: str = "t") -> int:
        return self.delete_many([key], content_type, now, token)

    def members(self, part: bytes) -> set[bytes]:
        return set(self.client.smembers(self.prefix + part))

    def scores(self, part: bytes) -> dict[bytes, float]:
        return dict(self.client.zrange(self.prefix + part, 0, -1, withscores=True))

    def data_keys(self) -> set[bytes]:
        """The shard's keys but its marker and counted deletes' answers."""
        return {
            key
            for key in self.client.keys(self.prefix + b"*")
            if key != self.prefix + layout.MARKER and layout.TOKEN not in key
        }


def test_save_writes_the_record_and_every_index_entry(client: redis.Redis) -> None:
    shard = Shard(client, b"ns")
    soon = datetime.now(UTC) + timedelta(hours=1)
    item = shard.save("k", {"n": 1}, "doc", soon, colour="red")
    assert decode_item(client.get(layout.record_key(shard.prefix, b"k")), "k") == item
    assert shard.members(b"c:doc") == shard.members(b"t:\x00\x00\x00\x06colourred") == {b"k"}
    created = item.metadata.created_at.timestamp() * 1e6
    assert shard.scores(b"created") == {b"k": pytest.approx(created, abs=1)}
    assert shard.scores(b"expires") == {b"k": pytest.approx(soon.timestamp() * 1e6, abs=1)}
    # Redis expires it too, at the expiry rounded up to its millisecond (never before it):
    # read within the millisecond the expiry was taken in, an hour and one ms remain.
    assert 3_500_000 < client.pttl(layout.record_key(shard.prefix, b"k")) <= 3_600_001


def test_an_upsert_keeps_the_item_and_swaps_its_index_entries(client: redis.Redis) -> None:
    shard = Shard(client, b"ns")
    first = shard.save("k", 1, "doc", datetime.now(UTC) + timedelta(hours=1), colour="red")
    second = shard.save("k", 2, "note", None, size="L")
    assert (second.metadata.id, second.metadata.created_at) == (first.metadata.id, first.metadata.created_at)
    assert second.metadata.updated_at > first.metadata.updated_at and second.data == 2
    assert shard.members(b"c:doc") == shard.members(b"t:\x00\x00\x00\x06colourred") == set()
    assert shard.members(b"c:note") == shard.members(b"t:\x00\x00\x00\x04sizeL") == {b"k"}
    assert shard.scores(b"expires") == {} and client.pttl(layout.record_key(shard.prefix, b"k")) == -1


def test_a_save_over_an_expired_record_makes_a_new_item(client: redis.Redis) -> None:
    shard = Shard(client, b"ns")
    # Expired when the script runs (as by a microsecond, while Redis, by the millisecond, still holds it).
    old = shard.save("k", 1, "doc", datetime.now(UTC) + timedelta(hours=1), tag="a")
    new = shard.save("k", 2, "doc", None, now=now_micros() + 2 * HOUR)
    assert new.metadata.id != old.metadata.id and new.metadata.created_at > old.metadata.created_at
    assert shard.members(b"t:\x00\x00\x00\x03taga") == set() and shard.scores(b"expires") == {}


def test_a_save_already_expired_leaves_no_record(client: redis.Redis) -> None:
    shard = Shard(client, b"ns")
    shard.save("k", 1, "doc", datetime(1969, 1, 1, tzinfo=UTC))
    assert client.get(layout.record_key(shard.prefix, b"k")) is None  # accepted, and gone at once


def test_delete_removes_a_live_item_of_its_content_type_only(client: redis.Redis) -> None:
    shard = Shard(client, b"ns")
    assert shard.delete("missing", token="1") == 0
    shard.save("k", 1, "doc", None, colour="red")
    assert shard.delete("k", "note", token="2") == 0 and client.exists(layout.record_key(shard.prefix, b"k"))
    assert shard.delete("k", "doc", token="3") == 1
    assert shard.data_keys() == set()  # the record and every index entry
    shard.save("gone", 1, "doc", datetime.now(UTC) + timedelta(hours=1), colour="red")
    assert shard.delete("gone", now=now_micros() + 2 * HOUR, token="4") == 0  # expired: not live, its leftovers go
    assert shard.data_keys() == set()


def test_two_namespaces_in_one_database_stay_apart(client: redis.Redis) -> None:
    one, two = Shard(client, b"one"), Shard(client, b"two")
    one.save("k", 1, "doc", None, colour="red")
    two.save("k", 2, "doc", None, colour="red")
    assert one.delete("k") == 1
    assert decode_item(client.get(layout.record_key(two.prefix, b"k")), "k").data == 2
    assert two.members(b"c:doc") == {b"k"}


def test_one_script_saves_and_deletes_a_batch_atomically(client: redis.Redis) -> None:
    shard = Shard(client, b"ns")
    kept = shard.save("b", 0, "doc", None)
    saved = shard.save_many({"a": 1, "b": 2, "c": 3}, "doc")
    assert [item.data for item in saved] == [1, 2, 3]
    assert saved[1].metadata.id == kept.metadata.id  # an upsert in a batch keeps its item too
    assert shard.members(b"c:doc") == {b"a", b"b", b"c"}
    assert shard.delete_many(["a", "c", "missing", "a"], "note", token="1") == 0
    assert shard.delete_many(["a", "c", "missing", "a"], token="2") == 2
    assert shard.members(b"c:doc") == {b"b"} and set(shard.scores(b"created")) == {b"b"}
    # A script that fails midway (here: a record too short to read) leaves nothing of its batch.
    keys, args, _ = shard.write_args({"x": 1, "y": 2}, "doc", None, now_micros())
    args[-2] = b"short"  # y's record
    with pytest.raises(redis.ResponseError):
        shard.run(scripts.SAVE, keys, args)
    bad = [layout.record_key(shard.prefix, key) for key in (b"x", b"y")]
    assert not client.exists(*bad) and shard.members(b"c:doc") == {b"b"}
    keys, args, _ = shard.write_args({"x": 1}, "doc", None, now_micros())
    args[5] = 2
    shared = len(layout.shard_keys(shard.prefix))  # the keys before the items'
    with pytest.raises(redis.ResponseError, match="names one key twice"):
        shard.run(scripts.SAVE, keys + keys[shared:], args + args[6:])
    assert not client.exists(*bad)


def test_a_counted_delete_sent_again_answers_the_same_count(client: redis.Redis) -> None:
    # The client sends a delete again when its connection was lost before the answer came:
    # the second run must not answer 0 for what the first removed.
    shard = Shard(client, b"ns")
    shard.save_many({"a": 1, "b": 2}, "doc")
    assert shard.delete_many(["a", "b"], token="same") == 2
    assert shard.delete_many(["a", "b"], token="same") == 2
    assert shard.delete_many(["a", "b"], token="other") == 0
    assert 0 < client.pttl(shard.prefix + layout.TOKEN + b"same") <= scripts.TOKEN_TTL_MS


def test_a_save_of_a_new_key_or_with_unchanged_tags_is_one_run(client: redis.Redis) -> None:
    shard = Shard(client, b"ns")
    shard.save("k", 1, "doc", None, colour="red")
    assert shard.runs == 1
    shard.save("k", 2, "doc", None, colour="red")
    assert shard.runs == 2
    shard.save("k", 3, "doc", None, colour="blue")  # the old tag's set is learnt by the script: twice
    assert shard.runs == 4
    alone = Shard(client, b"alone", cluster=False)  # one server routes nothing: no key to ask for
    alone.save("k", 1, "doc", None, colour="red")
    alone.save("k", 2, "doc", None, colour="blue")
    assert alone.runs == 2 and alone.members(b"t:\x00\x00\x00\x06colourred") == set()
    alone.delete("k")
    assert alone.runs == 3 and alone.data_keys() == set()
    assert shard.members(b"t:\x00\x00\x00\x06colourred") == set()
    assert shard.members(b"t:\x00\x00\x00\x06colourblue") == {b"k"}


@given(st.binary(max_size=20) | st.sampled_from([b"{}", b"a{}b", b"{a}", b"x{a}{b}", b"{", b"}{x}", b"{{x}}"]))
def test_key_slot_is_redis_clusters(key: bytes) -> None:
    assert layout.key_slot(key) == key_slot(key)


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
