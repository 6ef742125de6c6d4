"""The record format: layout, round trips, and damaged records named, never a crash."""

from __future__ import annotations

import logging
import struct
import tracemalloc
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from unistore import SerializationError, StorageCorruptionError, StorageQuery
from unistore.codec import decode_item, encode_payload
from unistore.core import HEADER_SIZE, RECORD_FORMAT_VERSION, QueryMatcher, pack_record, unpack_payload, unpack_record
from unistore.index import compile_query, select
from unistore.providers import MemoryStorageProvider

UUID_BYTES = UUID("00112233-4455-6677-8899-aabbccddeeff").bytes


def record(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "sid": 7,
        "uuid": UUID_BYTES,
        "created": 1_700_000_000_000_000,
        "updated": 1_700_000_000_000_001,
        "expires": None,
        "key": b"k",
        "content_type": b"t",
        "tags": [(b"a", b"1"), (b"b", b"")],
        "payload": msgpack.packb({"v": 1}),
    }
    fields.update(overrides)
    return pack_record(**fields)


def test_header_layout_is_fixed() -> None:
    raw = record(expires=5)
    assert HEADER_SIZE == 68
    assert raw[0] == RECORD_FORMAT_VERSION and raw[1] == 1
    assert struct.unpack_from("<Q", raw, 8) == (7,)
    assert raw[16:32] == UUID_BYTES
    assert struct.unpack_from("<qqq", raw, 32) == (1_700_000_000_000_000, 1_700_000_000_000_001, 5)
    assert raw[HEADER_SIZE : HEADER_SIZE + 2] == b"kt"


@given(
    sid=st.integers(0, 2**64 - 1),
    times=st.tuples(*[st.integers(-(2**63), 2**63 - 1)] * 3),
    has_expiry=st.booleans(),
    key=st.binary(min_size=1, max_size=511),
    content_type=st.binary(min_size=1, max_size=50),
    tags=st.dictionaries(st.binary(min_size=1, max_size=20), st.binary(max_size=20), max_size=5),
    payload=st.binary(max_size=100),
)
def test_pack_unpack_round_trip(
    sid: int,
    times: tuple[int, int, int],
    has_expiry: bool,
    key: bytes,
    content_type: bytes,
    tags: dict[bytes, bytes],
    payload: bytes,
) -> None:
    pairs = sorted(tags.items())
    expires = times[2] if has_expiry else None
    raw = pack_record(sid, UUID_BYTES, times[0], times[1], expires, key, content_type, pairs, payload)
    assert tuple(unpack_record(raw)) == (
        sid,
        UUID_BYTES,
        times[0],
        times[1],
        expires,
        key,
        content_type,
        pairs,
        payload,
    )


def test_payload_types() -> None:
    moment = datetime(2020, 5, 17, 1, 2, 3, 4, tzinfo=timezone.utc)
    value = {"t": (1, "a"), "b": b"\x00", "d": moment, "u": UUID(bytes=UUID_BYTES), 5: None}
    payload, loaded = encode_payload(value)
    assert loaded == unpack_payload(payload) == {**value, "t": [1, "a"]}


def test_a_big_payload_leaves_no_big_buffer_behind() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        payload, loaded = encode_payload(b"x" * 5_000_000)
        assert len(payload) > 5_000_000 and loaded == b"x" * 5_000_000
        del payload, loaded
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000  # the packer that grew to 5 MB was let go


def test_a_refused_payload_leaves_nothing_behind_for_the_next() -> None:
    # The packer is reused: what it had packed before the refusal must not leak into the next payload.
    with pytest.raises(SerializationError, match="a set is not a msgpack value"):
        encode_payload({"first": "x" * 100, "then": {1, 2}})
    assert encode_payload([1, 2]) == (b"\x92\x01\x02", [1, 2])


@pytest.mark.parametrize(
    ("damaged", "why"),
    [
        (b"", "shorter than the 68-byte header"),
        (record()[:40], "shorter than the 68-byte header"),
        (bytes([9]) + record()[1:], "unknown format version 9"),
        (record()[:1] + b"\x04" + record()[2:], "unknown flags"),
        (record()[:2] + b"\x01\x00" + record()[4:], "unknown flags"),
        (record()[: HEADER_SIZE + 3], "section lengths run past the end"),
        (
            record(tags=[(b"a", b"1")])[:4] + struct.pack("<I", 2) + record(tags=[(b"a", b"1")])[8:],
            "tags section is truncated",
        ),
        (record()[:4] + struct.pack("<I", 1) + record()[8:], "tags section length does not match"),
        (record(key=b"\xff"), "invalid start byte"),
        (record(payload=b"\xc1"), "does not decode"),
        (record(payload=b"\x92\x01"), "does not decode"),
        (record(payload=msgpack.packb(msgpack.ExtType(7, b"x"))), "unknown extension type 7"),
        (record(payload=msgpack.packb(msgpack.ExtType(1, b"x"))), "unknown extension type 1 of 1 bytes"),
        (record(payload=msgpack.packb(msgpack.ExtType(1, struct.pack(">q", 2**62)))), "does not decode"),
        (record(created=2**62), "does not decode"),
        (record(payload=msgpack.packb({"v": 1}) + b"\x00"), "does not decode"),
    ],
)
def test_damaged_records_raise_corruption_naming_the_key(damaged: bytes, why: str) -> None:
    with pytest.raises(StorageCorruptionError, match=why) as caught:
        decode_item(damaged, "the-key")
    assert "'the-key'" in str(caught.value)
    assert caught.value.details == {"key": "the-key"}
    assert caught.value.__cause__ is not None


async def test_damaged_records_in_a_store_are_named_and_never_block(caplog: pytest.LogCaptureFixture) -> None:
    provider = MemoryStorageProvider()
    await provider.save("good", 1, "t")
    for key in ("bad", "worse"):
        provider.engine._records[key] = b"\x01garbage"  # what a damaged disk would leave
    with pytest.raises(StorageCorruptionError, match="'bad'"):
        await provider.load("bad")
    with caplog.at_level(logging.ERROR, logger="unistore.index"):
        assert [r.item.metadata.key async for r in provider.search(StorageQuery())] == ["good"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"search skipped the record under key {key!r}, which does not decode: corrupt record: 8 bytes is shorter"
        " than the 68-byte header; run `unistore check`"
        for key in ("bad", "worse")
    ]
    assert await provider.purge_expired() == 0  # damage is not expiry: purge leaves it for load to name
    with pytest.raises(StorageCorruptionError, match="'bad'"):
        await provider.load("bad")
    item = await provider.save("bad", 2, "t")  # a save replaces it
    assert await provider.load("bad") == item
    assert await provider.delete("worse", content_type="other") is True  # a delete removes it
    assert await provider.load_many(["good", "bad", "worse"]) == {"good": await provider.load("good"), "bad": item}


def test_matcher_reads_headers_without_the_payload() -> None:
    # The payload is garbage, but a non-matching header never gets that far.
    raw = record(payload=b"\xc1")
    assert QueryMatcher(None, b"other", [], None, None, None, None).matches(raw, 0) is False
    assert QueryMatcher(b"k", b"t", [(b"a", b"1")], None, None, None, None).matches(raw, 0) is True
    assert QueryMatcher(None, None, [(b"b", b"")], None, None, None, None).matches(raw, 0) is True
    assert QueryMatcher(None, None, [(b"b", b"x")], None, None, None, None).matches(raw, 0) is False
    assert QueryMatcher(None, None, [(b"c", b"")], None, None, None, None).matches(raw, 0) is False


def test_select_stops_at_the_limit_before_decoding_more() -> None:
    good = record()
    candidates = [("a", good), ("b", good), ("c", b"never looked at")]
    hits = list(select(compile_query(StorageQuery()), candidates, 0, 2))
    assert len(hits) == 2
    assert list(select(compile_query(StorageQuery()), candidates, 0, 0)) == []
