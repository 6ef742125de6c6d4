"""The Redis glob, checked against a real redis-server's ``SCAN MATCH``."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import redis
from hypothesis import example, given
from hypothesis import strategies as st

from unistore import StorageQuery
from unistore.core import GLOB_MAX_NESTING, Glob, glob_match
from unistore.index import compile_query


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        (b"*", b"anything", True),
        (b"a*", b"a", True),
        (b"*a", b"ba", True),
        (b"*a", b"ab", False),
        (b"a?c", b"abc", True),
        (b"a?c", b"ac", False),
        (b"?", "é".encode(), False),  # '?' is one byte; é is two
        (b"??", "é".encode(), True),
        (b"[abc]", b"b", True),
        (b"[^abc]", b"b", False),
        (b"[^abc]", b"d", True),
        (b"[a-c]x", b"bx", True),
        (b"[c-a]x", b"bx", True),  # reversed ranges are swapped
        (b"[a-]", b"_", True),  # "a-]" is the range ']'..'a', not 'a' or '-'
        (b"[a-]", b"-", False),
        (b"[a-]x]", b"_x", False),  # ... and leaves the class open: 'x' and ']' join it
        (b"[a-]x]", b"x", True),
        (b"[\\]]", b"]", True),
        (b"\\*", b"*", True),
        (b"\\*", b"a", False),
        (b"a\\", b"a\\", True),  # a trailing backslash is literal
        (b"[", b"a", False),  # unterminated and empty: matches nothing
        (b"[^", b"a", True),  # unterminated and negated-empty: any byte
        (b"[ab", b"b", True),  # unterminated: the rest of the pattern is the class
        (b"[a-\xff]", b"\xe9", False),  # bounds compare as signed chars: \xff < a
        (b"[\x80-a]", b"\xe9", True),
        (b"[\xff-\x80]", b"\xe9", True),  # both bounds above \x7f: every byte between, as signed chars
        (b"[\xff-\x80]", b"a", False),
        (b"", b"", True),
        (b"*", b"", False),  # Redis never matches an empty key against '*'
        (b"a*b*c", b"axxbyyc", True),
        (b"a*b*c", b"axxcyyb", False),
        (b"*ab*ab", b"abab", True),
        (b"*ab*ab", b"aba", False),
        (b"a**b", b"axyb", True),  # runs of stars are one star
        (b"a*x*b", b"aqqb", False),  # a middle segment that is not there
        (b"a*x*y*b", b"ayxb", False),  # ... or only in the wrong order
    ],
)
def test_glob_examples(pattern: bytes, subject: bytes, expected: bool) -> None:
    assert glob_match(pattern, subject) is expected
    assert Glob(pattern).match(subject) is expected


@pytest.fixture(scope="module")
def redis_client(redis_port: int, redis_db: int) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_port, db=redis_db, protocol=2)
    yield client
    client.flushdb()
    client.close()


def scan_match(client: redis.Redis, pattern: bytes, keys: list[bytes]) -> set[bytes]:
    client.flushdb()
    client.mset(dict.fromkeys(keys, b"1"))
    return set(client.scan_iter(match=pattern, count=1000))


# Bytes that make globs interesting, with the signed-char boundary on both sides.
_GLOB_BYTES = st.sampled_from([*b"*?[]^-\\abcz", 0x00, 0x7F, 0x80, 0xE9, 0xFF])
_KEY_BYTES = st.sampled_from([*b"*?[]^-\\abcz", 0x00, 0x80, 0xE9, 0xFF])
patterns = st.lists(_GLOB_BYTES, max_size=12).map(bytes) | st.binary(max_size=8)
keys = st.lists(
    st.lists(_KEY_BYTES, min_size=1, max_size=10).map(bytes) | st.binary(min_size=1, max_size=6),
    min_size=1,
    max_size=25,
    unique=True,
)


@pytest.mark.redis
@given(pattern=patterns, subjects=keys)
@example(pattern=b"[a-]x]", subjects=[b"]", b"a", b"_", b"-", b"x", b"_x"])
@example(pattern=b"*\\", subjects=[b"\\", b"a\\", b"a"])
def test_glob_equals_redis_scan_match(redis_client: redis.Redis, pattern: bytes, subjects: list[bytes]) -> None:
    compiled = Glob(pattern)
    ours = {subject for subject in subjects if compiled.match(subject)}
    assert ours == scan_match(redis_client, pattern, subjects)


@pytest.mark.redis
@pytest.mark.parametrize("stars", [GLOB_MAX_NESTING - 1, GLOB_MAX_NESTING, GLOB_MAX_NESTING + 1])
def test_glob_nesting_limit_equals_redis(redis_client: redis.Redis, stars: int) -> None:
    subject = b"a" * (GLOB_MAX_NESTING + 100)
    inner = b"*a" * stars
    for pattern in (inner, inner + b"*"):
        assert glob_match(pattern, subject) is bool(scan_match(redis_client, pattern, [subject]))


# -- compile cost (issue 12) ---------------------------------------------------------------------


def _compile_steps(pattern: str) -> int:
    """The Python calls (and calls into C) that compiling ``pattern`` into a query
    takes: a count of work that does not depend on the machine's speed or load."""
    steps = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal steps
        steps += 1

    sys.setprofile(count)
    try:
        compile_query(StorageQuery(pattern=pattern))
    finally:
        sys.setprofile(None)
    return steps


@pytest.mark.parametrize("unit", ["a", "?", "[^a]", "[a-z]", "[\x00-\U0010ffff]", "a?*[x-z]\\", "[abcdefgh]"])
def test_compiling_a_long_pattern_takes_a_few_steps_a_byte(unit: str) -> None:
    # A 100 KB pattern took half a second to compile (Redis: 0.5 ms): a bitmap built
    # bit by bit for each element, 256 steps per class range, and in the pure twin a
    # regex class of every byte for each element ('[^a]' was a kilobyte of regex).
    # Counting steps keeps the test blind to the machine's load.
    size = 4_000
    small = _compile_steps(unit * (size // len(unit.encode())))
    large = _compile_steps(unit * (2 * size // len(unit.encode())))
    assert small <= 30 * size, f"{small} steps for {size} bytes of {unit!r}"
    assert large <= 2 * small + 100, f"{small} steps for {size} bytes, {large} for twice as many"


def test_a_long_pattern_still_matches() -> None:
    pattern = b"a?*[x-z]" * 2_000 + b"*"  # 2,000 stars: Redis's limit is 1,000 nested ones
    assert Glob(pattern[:8_000]).match(b"ab" + b"yab" * 999 + b"y")
    assert not Glob(pattern[:8_000]).match(b"ab" + b"yab" * 998 + b"y")
    assert not Glob(pattern).match(b"ab" + b"yab" * 1_999 + b"y")
    assert Glob(b"[^a]" * 10_000).match(b"b" * 10_000)
    assert not Glob(b"[^a]" * 10_000).match(b"b" * 9_999 + b"a")
