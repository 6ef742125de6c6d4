"""The native core and its pure twin, held against each other on random inputs."""

from __future__ import annotations

import itertools
import struct
from datetime import timezone
from types import ModuleType
from typing import Any

import msgpack
import pytest
from hypothesis import assume, example, given, reject
from hypothesis import strategies as st

from unistore import StorageCorruptionError, _purecore, core
from unistore.codec import _pack_default

MAX_ID = 2**64 - 1


def test_the_twins_export_the_same_names(native: ModuleType) -> None:
    assert sorted(native.__all__) == sorted(_purecore.__all__)
    for name in _purecore.__all__:
        assert hasattr(native, name), name
    for constant in ("FLAG_EXPIRES", "RECORD_FORMAT_VERSION", "GLOB_MAX_NESTING", "HEADER_SIZE"):
        assert getattr(native, constant) == getattr(_purecore, constant)
    assert struct.calcsize(_purecore.HEADER.format) == _purecore.HEADER_SIZE


def test_the_selector(native: ModuleType) -> None:
    def missing() -> ModuleType:
        raise ImportError("no extension here")

    assert core._chosen(True, False, lambda: native) is _purecore
    assert core._chosen(False, False, lambda: native) is native
    with pytest.warns(RuntimeWarning, match="native core is not installed.*no extension here"):
        assert core._chosen(False, False, missing) is _purecore
    with pytest.raises(ImportError, match="no extension here"):
        core._chosen(False, True, missing)
    # Every name of the twins, taken from the core in use (one by one, not by a loop over __all__).
    assert sorted(set(core.__all__) - {"NATIVE"}) == sorted(_purecore.__all__)
    for name in _purecore.__all__:
        assert getattr(core, name) is getattr(core._core, name), name


def outcome(call: Any, *args: Any) -> Any:
    """What a call returns, or the type and message of what it raises."""
    try:
        return ("ok", call(*args))
    except (StorageCorruptionError, ValueError, OverflowError) as exc:
        return ("raised", type(exc).__name__, str(exc))


# -- records -------------------------------------------------------------------------

texts = st.text(max_size=12).map(str.encode)
fields = st.fixed_dictionaries(
    {
        "sid": st.integers(0, MAX_ID),
        "uuid": st.binary(min_size=16, max_size=16),
        "created": st.integers(-(2**62), 2**62),
        "updated": st.integers(-(2**62), 2**62),
        "expires": st.none() | st.integers(-(2**62), 2**62),
        "key": st.text(min_size=1, max_size=20).map(str.encode),
        "content_type": texts,
        "tags": st.dictionaries(texts, texts, max_size=4).map(lambda tags: sorted(tags.items())),
        "payload": st.binary(max_size=40),
    }
)
plausible_times = st.integers(0, 4_000_000_000_000_000)  # 1970 to 2096, in µs


def damage(record: bytes, data: st.DataObject) -> bytes:
    """The record, or a cut-short or byte-flipped copy of it."""
    how = data.draw(st.sampled_from(["none", "cut", "flip", "lengths"]))
    if how == "cut":
        return record[: data.draw(st.integers(0, len(record)))]
    if how == "flip":
        at = data.draw(st.integers(0, len(record) - 1))
        return record[:at] + bytes([data.draw(st.integers(0, 255))]) + record[at + 1 :]
    if how == "lengths":  # the tag count and the section lengths
        at = data.draw(st.sampled_from([4, 56, 60, 64]))
        return record[:at] + struct.pack("<I", data.draw(st.integers(0, 300))) + record[at + 4 :]
    return record


@given(values=fields)
def test_pack_and_unpack_agree(native: ModuleType, values: dict[str, Any]) -> None:
    packed = _purecore.pack_record(**values)
    assert native.pack_record(**values) == packed
    assert native.unpack_record(packed) == _purecore.unpack_record(packed)


@given(values=fields, data=st.data(), content_type=st.none() | texts, now=st.none() | st.integers(-(2**62), 2**62))
def test_unpacking_damaged_records_agrees(
    native: ModuleType, values: dict[str, Any], data: st.DataObject, content_type: bytes | None, now: int | None
) -> None:
    record = damage(_purecore.pack_record(**values), data)
    assert outcome(native.unpack_record, record) == outcome(_purecore.unpack_record, record)
    assert outcome(native.unpack_item, record, content_type, now, bytes) == outcome(
        _purecore.unpack_item, record, content_type, now, bytes
    )


@given(
    values=fields,
    times=st.tuples(plausible_times, plausible_times, plausible_times),
    content_type=st.none() | texts,
    now=st.none() | plausible_times,
)
def test_unpack_item_agrees_on_sound_records(
    native: ModuleType, values: dict[str, Any], times: tuple[int, int, int], content_type: bytes | None, now: int | None
) -> None:
    values["created"], values["updated"], expiry = times
    values["expires"] = expiry if values["expires"] is not None else None
    if content_type is None and now is None:
        content_type = values["content_type"]
    record = _purecore.pack_record(**values)
    ours, theirs = (
        outcome(native.unpack_item, record, content_type, now, bytes),
        outcome(_purecore.unpack_item, record, content_type, now, bytes),
    )
    assert ours == theirs


# -- payloads ----------------------------------------------------------------------------

map_keys = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=40) | st.binary(max_size=8)
payload_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.datetimes(timezones=st.just(timezone.utc)).map(lambda moment: moment.replace(fold=0))  # fold is not stored
    | st.uuids(),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(map_keys, inner, max_size=6),
    max_leaves=30,
)


def decoded(call: Any, payload: bytes) -> Any:
    """What a payload decodes to, shown exactly (NaN, -0.0), or the class of what it raises."""
    try:
        return ("ok", repr(call(payload)))
    except (ValueError, TypeError, OverflowError) as exc:
        return ("raised", type(exc).__name__)


@given(value=payload_values, single=st.booleans(), data=st.data())
def test_payloads_decode_alike(native: ModuleType, value: Any, single: bool, data: st.DataObject) -> None:
    try:
        payload = msgpack.packb(
            value, default=_pack_default, use_bin_type=True, datetime=False, use_single_float=single
        )
    except OverflowError:  # a float beyond float32
        reject()
    ours = native.unpack_payload(payload)
    assert repr(ours) == repr(_purecore.unpack_payload(payload))
    if not single:
        assert repr(ours) == repr(value)
    damaged = damage(payload, data) if payload else payload
    assert decoded(native.unpack_payload, damaged) == decoded(_purecore.unpack_payload, damaged)


@given(raw=st.binary(max_size=64))
@example(raw=b"\xc1")  # the reserved byte
@example(raw=b"\x91" * 1023 + b"\x90")  # as deep as msgpack goes
@example(raw=b"\x91" * 1024 + b"\x90")  # one container deeper
@example(raw=b"\xdd\xff\xff\xff\xff")  # an array longer than the payload
@example(raw=b"\xdf\x00\x00\x00\x02\x01\x01")  # a map of more pairs than half the payload
@example(raw=b"\x81\x90\x01")  # an unhashable key
@example(raw=b"\xd6\xff\x00\x00\x00\x01")  # msgpack's own timestamp
@example(raw=b"\xc7\x00\xff")  # a timestamp of no bytes
@example(raw=b"\xd7\x01\x7f\xff\xff\xff\xff\xff\xff\xff")  # a datetime past year 9999
@example(raw=b"\xd4\x05\x01")  # an extension type the codec never writes
@example(raw=b"\x01\x02")  # extra data
def test_any_bytes_decode_alike(native: ModuleType, raw: bytes) -> None:
    assert decoded(native.unpack_payload, raw) == decoded(_purecore.unpack_payload, raw)


def test_map_keys_kept_by_the_native_core_stay_right(native: ModuleType) -> None:
    # More keys than the cache has slots, so slots are shared and replaced; then again
    # in another order, with non-ASCII keys (never kept) and keys past the length kept.
    keys = [f"k{i}" for i in range(3000)] + ["é", "ключ", "x" * 32, "y" * 33, ""]
    for order in (keys, keys[::-1]):
        value = {key: index for index, key in enumerate(order)}
        payload = msgpack.packb(value)
        assert native.unpack_payload(payload) == value == _purecore.unpack_payload(payload)


@given(value=payload_values, content_type=st.none() | texts)
def test_unpack_item_decodes_in_place_alike(native: ModuleType, value: Any, content_type: bytes | None) -> None:
    payload = msgpack.packb(value, default=_pack_default, use_bin_type=True, datetime=False)
    record = _purecore.pack_record(1, bytes(16), 0, 0, None, b"k", b"t", [], payload)
    ours = outcome(native.unpack_item, record, content_type, 0, native.unpack_payload)
    assert repr(ours) == repr(outcome(_purecore.unpack_item, record, content_type, 0, _purecore.unpack_payload))


# -- query matching ---------------------------------------------------------------------

small = st.sampled_from([b"a", b"b", b"ab", b""])
queries = st.fixed_dictionaries(
    {
        "pattern": st.none()
        | st.lists(st.sampled_from([b"a", b"b", b"*", b"?", b"[ab]", b"\\"]), max_size=4).map(b"".join),
        "content_type": st.none() | small,
        "tags": st.lists(st.tuples(small, small), max_size=2),
        "created_after": st.none() | st.integers(-5, 5),
        "created_before": st.none() | st.integers(-5, 5),
        "expires_after": st.none() | st.integers(-5, 5),
        "expires_before": st.none() | st.integers(-5, 5),
    }
)
matchable = st.fixed_dictionaries(
    {
        "sid": st.integers(0, 9),
        "uuid": st.just(bytes(16)),
        "created": st.integers(-5, 5),
        "updated": st.integers(-5, 5),
        "expires": st.none() | st.integers(-5, 5),
        "key": st.lists(st.sampled_from([b"a", b"b", b"\xff"]), min_size=1, max_size=4).map(b"".join),
        "content_type": small,
        "tags": st.dictionaries(small, small, max_size=3).map(lambda tags: sorted(tags.items())),
        "payload": st.just(b"\xc0"),
    }
)


@given(values=matchable, query=queries, now=st.integers(-6, 6), data=st.data())
def test_query_matching_agrees(
    native: ModuleType, values: dict[str, Any], query: dict[str, Any], now: int, data: st.DataObject
) -> None:
    record = damage(_purecore.pack_record(**values), data)
    ours = outcome(native.QueryMatcher(**query).matches, record, now)
    assert ours == outcome(_purecore.QueryMatcher(**query).matches, record, now)
    batch = [_purecore.pack_record(**values), record, record]
    assert outcome(native.QueryMatcher(**query).matching, batch, now) == outcome(
        _purecore.QueryMatcher(**query).matching, batch, now
    )
    assert found(native.QueryMatcher(**query).results, batch, now) == found(
        _purecore.QueryMatcher(**query).results, batch, now
    )


def found(call: Any, *args: Any) -> Any:
    """What ``results`` returns, or which record it names and why: the header's own
    message, or the class of the payload decoder's error (their messages differ)."""
    try:
        return ("ok", call(*args))
    except StorageCorruptionError as exc:
        cause = exc.__cause__
        payload = isinstance(cause, (ValueError, TypeError, OverflowError))
        return ("raised", exc.details["index"], type(cause).__name__ if payload else str(exc))


@given(values=matchable, payload=st.binary(max_size=6), data=st.data())
def test_results_agree_on_any_payload(native: ModuleType, values: dict[str, Any], payload: bytes, data: Any) -> None:
    # Decoding happens in the same call: a payload that does not decode is named by index alike.
    record = _purecore.pack_record(**{**values, "expires": None, "payload": payload})
    batch = [_purecore.pack_record(**{**values, "expires": None}), record]
    matcher: dict[str, Any] = {"pattern": None, "content_type": None, "tags": [], "created_after": None}
    matcher.update(created_before=None, expires_after=None, expires_before=None)
    ours, theirs = native.QueryMatcher(**matcher), _purecore.QueryMatcher(**matcher)
    assert found(ours.results, batch, 0) == found(theirs.results, batch, 0)
    most = data.draw(st.integers(-1, 2))
    assert found(ours.results, batch, 0, most) == found(theirs.results, batch, 0, most)


def test_matching_names_the_damaged_record(twin: ModuleType) -> None:
    good = twin.pack_record(1, bytes(16), 0, 0, None, b"k", b"t", [], b"")
    matcher = twin.QueryMatcher(None, None, [], None, None, None, None)
    assert matcher.matching([good, good], 0) == [0, 1]
    assert matcher.matching([good, good, b"never read"], 0, 2) == [0, 1]
    with pytest.raises(StorageCorruptionError) as caught:
        matcher.matching([good, good, b"\x01short"], 0)
    assert caught.value.details["index"] == 2


def test_results_name_the_record_that_does_not_decode(twin: ModuleType) -> None:
    good = twin.pack_record(1, bytes(16), 0, 0, None, b"k", b"t", [(b"a", b"1")], b"\x01")
    matcher = twin.QueryMatcher(None, None, [(b"a", b"1")], None, None, None, None)
    [first, second] = matcher.results([good, good], 0)
    assert (first.item.metadata.key, first.item.data, first.score, first.highlights) == ("k", 1, 1.0, [])
    assert first.highlights is not second.highlights  # each result its own list, as the dataclass makes them
    assert len(matcher.results([good, good, b"never read"], 0, 2)) == 2
    for damaged, cause in ((b"\x01short", None), (good[:-1] + b"\xc1", ValueError)):
        with pytest.raises(StorageCorruptionError) as caught:
            matcher.results([good, damaged], 0)
        assert caught.value.details["index"] == 1
        assert cause is None or isinstance(caught.value.__cause__, cause)


def test_query_matching_examples(twin: ModuleType) -> None:
    record = twin.pack_record(1, bytes(16), 10, 10, 20, b"user:1", b"doc", [(b"a", b"1"), (b"b", b"")], b"\xc0")
    match = twin.QueryMatcher
    assert match(b"user:*", b"doc", [(b"b", b"")], 10, 10, 20, 20).matches(record, 19) is True
    assert match(None, None, [], None, None, None, None).matches(record, 20) is False  # expired at 20
    assert match(None, b"do", [], None, None, None, None).matches(record, 0) is False
    assert match(None, None, [(b"a", b"2")], None, None, None, None).matches(record, 0) is False
    assert match(b"user:2", None, [], None, None, None, None).matches(record, 0) is False
    assert match(None, None, [], 11, None, None, None).matches(record, 0) is False
    assert match(None, None, [], None, 9, None, None).matches(record, 0) is False
    assert match(None, None, [], None, None, 21, None).matches(record, 0) is False
    assert match(None, None, [], None, None, None, 19).matches(record, 0) is False


# -- glob --------------------------------------------------------------------------------

glob_bytes = st.sampled_from([*b"*?[]^-\\ab", 0x00, 0x7F, 0x80, 0xE9, 0xFF])
globs = st.lists(glob_bytes, max_size=16).map(bytes) | st.binary(max_size=12)
subjects = st.lists(glob_bytes, max_size=24).map(bytes) | st.binary(max_size=12)


@given(pattern=globs, subject=subjects)
@example(pattern=b"*a" * 1001, subject=b"a" * 1100)
@example(pattern=b"*a" * 1000 + b"*", subject=b"a" * 1100)
@example(pattern=b"[^", subject=b"x")
def test_glob_agrees(native: ModuleType, pattern: bytes, subject: bytes) -> None:
    expected = _purecore.glob_match(pattern, subject)
    assert native.glob_match(pattern, subject) is expected
    assert native.Glob(pattern).match(subject) is expected
    assert native.glob_literal_prefix(pattern) == _purecore.glob_literal_prefix(pattern)


@given(stars=st.integers(0, 40), subject=st.binary(min_size=0, max_size=4000))
def test_glob_agrees_on_long_inputs(native: ModuleType, stars: int, subject: bytes) -> None:
    pattern = b"*".join([b"?"] * stars) + b"*\x00"
    assert native.glob_match(pattern, subject) is _purecore.glob_match(pattern, subject)


# -- id lists -----------------------------------------------------------------------------


def packed(ids: set[int]) -> bytes:
    return b"".join(struct.pack(">Q", value) for value in sorted(ids))


id_sets = st.sets(st.integers(0, 300), max_size=60) | st.sets(st.integers(0, MAX_ID), max_size=20)


@given(first=id_sets, second=id_sets)
def test_id_lists_agree(native: ModuleType, first: set[int], second: set[int]) -> None:
    a, b = packed(first), packed(second)
    assert native.intersect_ids(a, b) == _purecore.intersect_ids(a, b) == packed(first & second)
    assert native.union_ids(a, b) == _purecore.union_ids(a, b) == packed(first | second)


BIG = set(range(3, 2_000_000, 7))  # 285,714 ids: galloping territory against a few dozen
BIG_PACKED = packed(BIG)


@given(
    small_set=st.sets(st.integers(0, 2_000_000), max_size=50) | st.sets(st.sampled_from(sorted(BIG)[:200]), max_size=40)
)
def test_galloping_agrees_when_sizes_differ_a_lot(native: ModuleType, small_set: set[int]) -> None:
    a = packed(small_set)
    assert native.intersect_ids(a, BIG_PACKED) == native.intersect_ids(BIG_PACKED, a) == packed(small_set & BIG)


@given(raw=st.binary(max_size=40), other=id_sets)
@example(raw=packed({5}) + packed({5}), other=set())  # a repeat
@example(raw=packed({6}) + packed({5}), other=set())  # out of order
@example(raw=b"\x00" * 7, other=set())  # not whole ids
def test_bad_id_lists_are_refused_alike(native: ModuleType, raw: bytes, other: set[int]) -> None:
    for operation in ("intersect_ids", "union_ids"):
        for args in ((raw, packed(other)), (packed(other), raw)):
            ours = outcome(getattr(native, operation), *args)
            assert ours == outcome(getattr(_purecore, operation), *args)
    ids = [struct.unpack(">Q", raw[i : i + 8])[0] for i in range(0, len(raw) - len(raw) % 8, 8)]
    assume(len(raw) % 8 or any(x >= y for x, y in itertools.pairwise(ids)))
    with pytest.raises(ValueError, match="id list"):
        native.union_ids(raw, b"")


@given(key=st.binary(max_size=40), ids=st.lists(st.binary(min_size=8, max_size=8), max_size=50), cut=st.integers(0, 9))
def test_bulk_posting_reads_agree(native: ModuleType, key: bytes, ids: list[bytes], cut: int) -> None:
    entries = b"".join(key + sid for sid in ids)
    expected = b"".join(ids)
    assert native.ids_from_entries(entries, len(key)) == _purecore.ids_from_entries(entries, len(key)) == expected
    assert native.ids_from_entries(memoryview(entries), len(key)) == expected  # LMDB hands out buffers
    damaged = entries[: len(entries) - cut] if entries else b"x" * cut
    assert outcome(native.ids_from_entries, damaged, len(key)) == outcome(_purecore.ids_from_entries, damaged, len(key))
    assert outcome(native.ids_from_entries, entries, -1) == outcome(_purecore.ids_from_entries, entries, -1)


# -- batches of new records ------------------------------------------------------------------

utf8 = st.text(min_size=1, max_size=6).map(str.encode)


@given(
    keys=st.lists(utf8, max_size=4, unique=True),
    content_type=utf8,
    tags=st.dictionaries(utf8, st.text(max_size=3).map(str.encode), max_size=2).map(lambda tags: sorted(tags.items())),
    expires=st.none() | st.integers(-(2**40), 2**40),
    now=st.integers(-(2**40), 2**40),
    first=st.integers(1, 2**63),
    data=st.data(),
)
def test_batches_of_new_records_agree(
    native: ModuleType,
    keys: list[bytes],
    content_type: bytes,
    tags: list[tuple[bytes, bytes]],
    expires: int | None,
    now: int,
    first: int,
    data: st.DataObject,
) -> None:
    values = [data.draw(st.integers(-(2**63), 2**64 - 1) | st.text(max_size=4)) for _ in keys]
    payloads = [msgpack.packb(value) for value in values]
    uuids = data.draw(st.binary(min_size=16 * len(keys), max_size=16 * len(keys)))
    args = (keys, payloads, values, content_type, tags, expires, now, first, uuids)
    records, items = native.pack_new(*args)
    pure_records, pure_items = _purecore.pack_new(*args)
    assert records == pure_records and repr(items) == repr(pure_items)
    for index, record in enumerate(records):  # each record is what pack_record lays out, its item what it holds
        item = _purecore.unpack_item(record, None, None, _purecore.unpack_payload)
        assert repr(item) == repr(items[index]) and item.metadata.id.version == 4
        assert _purecore.unpack_record(record).sid == first + index
    with pytest.raises(ValueError, match="16 random bytes per key"):
        native.pack_new(keys, payloads, values, content_type, tags, expires, now, first, uuids + b"x")
    with pytest.raises(ValueError, match="16 random bytes per key"):
        _purecore.pack_new(keys, [*payloads, b"\xc0"], values, content_type, tags, expires, now, first, uuids)


def test_tags_are_matched_on_records_with_many_tags(twin: ModuleType) -> None:
    # More tags than the native matcher's room on the stack: their spans go to the heap.
    tags = sorted((f"k{n:03d}".encode(), f"v{n}".encode()) for n in range(100))
    record = twin.pack_record(1, bytes(16), 0, 0, None, b"key", b"t", tags, b"\xc0")
    match = twin.QueryMatcher
    assert match(None, None, [(b"k099", b"v99"), (b"k000", b"v0")], None, None, None, None).matches(record, 0)
    assert not match(None, None, [(b"k099", b"v98")], None, None, None, None).matches(record, 0)
    assert not match(None, None, [(b"k100", b"v100")], None, None, None, None).matches(record, 0)
    [result] = match(None, None, [(b"k050", b"v50")], None, None, None, None).results([record], 0)
    assert len(result.item.metadata.tags) == 100
