"""Security: a store is private to its owner whatever the umask, one namespace can never
read, match or delete another's items whatever its keys and patterns hold, Redis runs
behind a password and an ACL user fenced to its keys, and nothing unpickles."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import re
import resource
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

import unistore
from unistore import (
    ItemNotFoundError,
    StorageCorruptionError,
    StorageError,
    StorageProvider,
    StorageQuery,
)
from unistore.providers import LmdbStorageProvider, MemoryStorageProvider, RedisStorageProvider
from unistore.providers.redis import layout as redis_layout
from unistore.testing.glob import glob_matches

PACKAGE = Path(unistore.__file__).parent


# -- files: 0700 directories, 0600 files, whatever the umask -------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """The process's umask is 0 for the test (a careless service's): what is created is
    created with exactly the modes asked for."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


async def test_a_store_and_its_backups_are_private_even_with_umask_0(tmp_path: Path, umask_zero: None) -> None:
    store = tmp_path / "store"
    provider = LmdbStorageProvider(store, namespace="private")
    await provider.save("k", {"secret": 1}, "t")
    await provider.backup(tmp_path / "copy")
    await provider.backup(tmp_path / "compact", compact=True)
    (tmp_path / "existing").mkdir(mode=0o700)
    await provider.backup(tmp_path / "existing", compact=False)
    await provider.cleanup()
    assert _mode(store) == 0o700
    assert _mode(store / "data.mdb") == 0o600
    assert _mode(store / "lock.mdb") == 0o600
    for copy in ("copy", "compact", "existing"):
        assert _mode(tmp_path / copy) == 0o700, copy
        assert _mode(tmp_path / copy / "data.mdb") == 0o600, copy
        assert sorted(p.name for p in (tmp_path / copy).iterdir()) == ["data.mdb"], copy  # no lock file left
        restored = LmdbStorageProvider(tmp_path / copy, namespace="private")
        assert (await restored.load("k")).data == {"secret": 1}
        await restored.cleanup()


async def test_directories_made_on_the_way_to_a_store_are_private_too(tmp_path: Path, umask_zero: None) -> None:
    """``LmdbStorageProvider("a/b/store")`` makes ``a`` and ``b`` too: made world-writable
    (0777 under umask 0, os.makedirs' default for parents), anyone could move ``store``
    away and put their own in its place, or read a backup written below them."""
    provider = LmdbStorageProvider(tmp_path / "a" / "b" / "store")
    await provider.save("k", 1, "t")
    await provider.backup(tmp_path / "c" / "d" / "copy")
    await provider.cleanup()
    for made in ("a", "a/b", "a/b/store", "c", "c/d", "c/d/copy"):
        assert _mode(tmp_path / made) == 0o700, made


def test_the_modes_hold_in_a_fresh_process_whose_umask_is_0(tmp_path: Path) -> None:
    """The same from the command line, in a process that starts with umask 0 (the
    fixture above sets it after the package and LMDB are loaded)."""
    script = (
        "import os, sys\n"
        "os.umask(0)\n"
        "from unistore import cli\n"
        "sys.exit(cli.main(['--store', 'lmdb://' + sys.argv[1] + '?namespace=x', 'put', 'k', '1']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "cli")], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert _mode(tmp_path / "cli") == 0o700
    assert {p.name: _mode(p) for p in (tmp_path / "cli").iterdir()} == {"data.mdb": 0o600, "lock.mdb": 0o600}


#: Watches every file in a directory from another process (no GIL shared with the copy),
#: printing every mode it saw once ``done`` appears beside it.
_WATCHER = """
import os, stat, sys, time
directory, done = sys.argv[1], sys.argv[2]
seen = set()
print("watching", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    finished = os.path.exists(done)  # one more look after it: the backup's own file is seen
    for entry in os.scandir(directory):
        try:
            seen.add(stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode))
        except FileNotFoundError:
            pass
    if finished:
        break
print(sorted(seen))
"""


@pytest.mark.watchdog(120)
async def test_a_backup_is_private_from_the_moment_it_exists(tmp_path: Path) -> None:
    # Issue 12: LMDB's copy made data.mdb 0644 (less the umask) and the chmod came after
    # the copy, so a backup into an existing readable directory could be read meanwhile.
    provider = LmdbStorageProvider(tmp_path / "store", durability="none")
    await provider.save_many({f"k{number}": "x" * 1000 for number in range(20_000)}, "t")  # ~30 MB to copy
    dest = tmp_path / "dest"
    dest.mkdir()
    dest.chmod(0o755)
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WATCHER, str(dest), str(tmp_path / "done"), stdout=subprocess.PIPE
    )
    try:
        assert watcher.stdout is not None and await watcher.stdout.readline() == b"watching\n"
        await provider.backup(dest)
    finally:
        (tmp_path / "done").touch()
        seen, _ = await watcher.communicate()
        await provider.cleanup()
    assert seen.decode().strip() == str([0o600])


@contextlib.contextmanager
def _small_file_limit() -> Iterator[None]:
    """No file of this process may grow past 256 KiB (a full disk, as a writer meets it:
    the write fails with EFBIG, SIGXFSZ ignored); lifted after the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


async def test_a_backup_that_cannot_be_written_whole_leaves_no_file(tmp_path: Path) -> None:
    """A full disk fails the backup with a StorageError, the cause chained, and removes
    what it had written: a half copy must not be taken for a backup."""
    provider = LmdbStorageProvider(tmp_path / "store")
    await provider.save_many({f"k{number}": "x" * 1000 for number in range(2000)}, "t")  # ~3 MB
    for dest, compact in ((tmp_path / "plain", False), (tmp_path / "compact", True)):
        with _small_file_limit(), pytest.raises(StorageError) as failed:
            await provider.backup(dest, compact=compact)
        assert failed.value.__cause__ is not None
        assert list(dest.iterdir()) == [], compact
    await provider.cleanup()


# -- namespaces: no key or pattern reaches another's items ---------------------------

LONG = "*?[" * 300  # past LMDB's key size: stored under a digest form
#: Keys full of what a backend might read as syntax: glob characters, Redis Cluster hash
#: tags, the Redis layout's separators and part names, and 0xff-ish text.
HOSTILE_KEYS = [
    "*",
    "?",
    "[^a]",
    "[a-z]*",
    "\\",
    "\\*",
    "a\\",
    "{",
    "}",
    "{x}:*",
    ":",
    "::",
    "r:*",
    "t:x",
    "created",
    "expires",
    "shards",
    "\xff",
    "\xff\xff*",
    "\U0010ffff",
    "%",
    "%2A",
    "\x00",
    "k\x00*",
    LONG,
    LONG + "x",
]
PATTERNS = ["*", "?", "??", "[^a]", "[^a]*", "\\", "\\\\", "\\*", "*\\", "[", "[^", "{*", "*}*", "us{*", "*:*", "\xff*"]
VICTIM = {"a": 1, "k1": 2, "secret": 3, "[^a]": 4, "*": 5, "\xff": 6, "us": 7, LONG: 8}


def _same_store(kind: str, request: pytest.FixtureRequest, first: StorageProvider[Any], namespace: str) -> Any:
    """Another provider on ``first``'s store (a memory provider: another instance), in ``namespace``."""
    if kind == "lmdb":
        assert isinstance(first, LmdbStorageProvider)
        return LmdbStorageProvider(first.engine.path, namespace=namespace)
    if kind == "redis":
        return RedisStorageProvider(
            {"host": "127.0.0.1", "port": request.getfixturevalue("redis_port"), "namespace": namespace}
        )
    if kind == "redis-cluster":
        nodes = [f"127.0.0.1:{port}" for port in request.getfixturevalue("redis_cluster")]
        return RedisStorageProvider(cluster_nodes=nodes, namespace=namespace, shards=4)
    return MemoryStorageProvider(namespace=namespace)


def _internal_names(kind: str, provider: Any) -> list[str]:
    """What the victim's own keys are called inside the backend, as text another may use as keys."""
    if kind.startswith("redis"):
        prefix = redis_layout.shard_prefix(provider.namespace.encode(), 0, provider.shards).decode()
        return [prefix, prefix + "r:a", prefix + "r:*", prefix + "t:*", "us{" + provider.namespace + "}:shards"]
    return ["\x00\x00\x00\x01a", "\x00\x00\x00\x00a", "\x00\x00\x00\x02*"]


async def _keys(provider: Any, **query: Any) -> list[str]:
    return sorted([result.item.metadata.key async for result in provider.search(StorageQuery(**query))])


@pytest.mark.watchdog(300)
async def test_no_key_or_pattern_reaches_another_namespace(
    provider_factory: Callable[[], StorageProvider[Any]], request: pytest.FixtureRequest
) -> None:
    kind = request.node.callspec.params["provider_factory"]
    victim: Any = provider_factory()
    name = getattr(victim, "namespace", "victim")
    # The attacker's namespaces: the victim's name with what may end or extend it in a backend's layout.
    attackers = [
        _same_store(kind, request, victim, name + suffix) for suffix in ("*", ":0", "}", ":0}:r", "\xff", "%3A0")
    ]
    try:
        await victim.save_many(VICTIM, "v", tags={"owner": "victim"})
        for attacker in attackers:
            keys = [*HOSTILE_KEYS, *_internal_names(kind, victim)]
            await attacker.save_many(dict.fromkeys(keys, "mine"), "v", tags={"owner": "victim"})
            mine = set(keys)
            for key in set(VICTIM) & mine:  # the same text as a victim's key: the attacker's own item
                assert (await attacker.load(key)).data == "mine"
            for key in sorted(set(VICTIM) - mine):
                with pytest.raises(ItemNotFoundError):
                    await attacker.load(key)
                assert await attacker.delete(key) is False
            assert set(await attacker.load_many(VICTIM)) == set(VICTIM) & mine
            for pattern in PATTERNS:
                expected = sorted(key for key in mine if glob_matches(pattern, key))
                assert await _keys(attacker, pattern=pattern) == expected, pattern
                limited = await _keys(attacker, pattern=pattern, limit=3)
                assert len(limited) == min(3, len(expected)) and set(limited) <= set(expected), pattern
            assert await _keys(attacker, tags={"owner": "victim"}) == sorted(mine)
            assert await _keys(attacker, content_type="v") == sorted(mine)
            assert await attacker.delete_many([key for key in VICTIM if key not in mine]) == 0
            for pattern in PATTERNS:
                await attacker.delete_matching(StorageQuery(pattern=pattern))
            assert await attacker.delete_matching(StorageQuery(tags={"owner": "victim"})) == 0  # all gone already
            assert await attacker.delete_many(keys) == 0
            assert await _keys(attacker) == []
            # The victim's items are all there, untouched, and it never saw the attacker's.
            assert await _keys(victim) == sorted(VICTIM)
            assert {key: item.data for key, item in (await victim.load_many(VICTIM)).items()} == VICTIM
    finally:
        for attacker in attackers:
            await attacker.cleanup()


async def test_what_the_victim_matches_is_its_own(
    provider_factory: Callable[[], StorageProvider[Any]], request: pytest.FixtureRequest
) -> None:
    """The other way round: another namespace full of hostile keys never shows in the
    victim's searches, and the victim's deletions by pattern never reach it."""
    kind = request.node.callspec.params["provider_factory"]
    victim: Any = provider_factory()
    other = _same_store(kind, request, victim, getattr(victim, "namespace", "x") + "*")
    try:
        await other.save_many(dict.fromkeys(HOSTILE_KEYS, "theirs"), "v")
        await victim.save("mine", 1, "v")
        for pattern in PATTERNS:
            assert await _keys(victim, pattern=pattern) == (["mine"] if glob_matches(pattern, "mine") else [])
        assert await victim.delete_matching(StorageQuery(pattern="*")) == 1
        assert await _keys(other) == sorted(HOSTILE_KEYS)
    finally:
        await other.cleanup()


def test_redis_namespaces_never_share_a_prefix() -> None:
    """The Redis layout's own promise, over the namespaces that could collide once escaped."""
    names = ["a", "a:0", "a}", "a%3A0", "a%", "a*", "a\xff", "a{b}", "a:0}:r:", "us{a", ""]
    prefixes = [redis_layout.shard_prefix(name.encode(), 0, 1) for name in names]
    for prefix, name in zip(prefixes, names, strict=True):
        assert not set(prefix[3:-2]) & set(b"*?[]\\{}"), name  # nothing a glob or a hash tag reads
        assert [other for other in prefixes if other.startswith(prefix)] == [prefix], name
        assert redis_layout.namespace_of(redis_layout.shards_key(name.encode())) == (name or None)


# -- Redis: a password, and an ACL user fenced to its namespace's keys -------------------


async def test_an_acl_user_fenced_to_its_keys_can_do_everything_in_its_namespace(
    tmp_path: Path, redis_starter: Any
) -> None:
    process, port = redis_starter(tmp_path, None, "--requirepass", "s3cret")
    try:
        with redis.Redis(port=port, password="s3cret") as admin:
            # Keys: its namespace's only. Commands: all but the dangerous and admin ones
            # (KEYS, FLUSHALL, CONFIG, DEBUG, ...): a managed Redis's usual application user.
            admin.acl_setuser(
                "app", enabled=True, passwords=["+apppass"], keys=["us{tenant*"], commands=["+@all", "-@dangerous"]
            )
            admin.set("us{other:0}:r:k", b"not yours")
        settings = {"host": "127.0.0.1", "port": port, "username": "app", "password": "apppass"}
        for shards in (1, 3):
            app = RedisStorageProvider({**settings, "namespace": f"tenant-{shards}", "shards": shards})
            await _every_operation(app)
            await app.cleanup()
        with redis.Redis(port=port, password="s3cret") as admin:
            assert admin.get("us{other:0}:r:k") == b"not yours"
            kept = sorted(key for key in admin.scan_iter() if admin.pttl(key) == -1)  # (deletes' answers expire)
            assert kept == sorted(
                [b"us{other:0}:r:k", *redis_layout.markers(b"tenant-1", 1), *redis_layout.markers(b"tenant-3", 3)]
            )  # the other key, and each namespace's and shard's marker
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _every_operation(provider: Any) -> None:
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    await provider.save("k", 1, "t", tags={"x": "1"})
    assert (await provider.load("k")).data == 1
    await provider.save_many({f"m{n}": n for n in range(20)}, "t", tags={"x": "2"})
    await provider.save("gone", 0, "t", expires_at=now - timedelta(seconds=1))
    await provider.save("later", 0, "t", expires_at=now + timedelta(hours=1))
    assert len(await provider.load_many([f"m{n}" for n in range(25)])) == 20
    assert len(await _keys(provider, tags={"x": "2"}, limit=5)) == 5
    assert await _keys(provider, pattern="m1?") == [f"m{n}" for n in range(10, 20)]
    assert len(await _keys(provider, created_after=now - timedelta(minutes=1))) == 22
    assert await _keys(provider, expires_after=now) == ["later"]
    assert await _keys(provider, content_type="t", tags={"x": "1"}) == ["k"]
    assert await provider.delete("k") is True
    assert await provider.delete_many(["m0", "m1", "nothing"]) == 2
    assert await provider.delete_matching(StorageQuery(pattern="m1*")) == 10
    assert await provider.purge_expired() >= 0
    report = await provider.check()
    assert report.ok, report.problems
    assert report.records == 8 + 1  # m2..m9 and "later"
    assert (await provider.check(repair=True)).ok
    assert await provider.delete_matching(StorageQuery()) == 9


async def test_a_password_protected_server_refuses_no_password_and_serves_the_right_one(
    tmp_path: Path, redis_starter: Any
) -> None:
    process, port = redis_starter(tmp_path, None, "--requirepass", "s3cret")
    try:
        nopass = RedisStorageProvider({"host": "127.0.0.1", "port": port})
        with pytest.raises(StorageError, match=r"(?i)auth|credentials|password"):
            await nopass.save("k", 1, "t")
        await nopass.cleanup()
        owner = RedisStorageProvider.from_url(f"redis://:s3cret@127.0.0.1:{port}/0?namespace=pw")
        assert "s3cret" not in repr(owner)
        await _every_operation(owner)
        await owner.cleanup()
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- nothing unpickles ----------------------------------------------------------------

_UNPICKLING = re.compile(
    rb"\b(c?pickle|_pickle|marshal|shelve|dill|cloudpickle|jsonpickle|joblib)\b|__reduce(_ex)?__|__setstate__"
)


def test_the_package_source_never_unpickles() -> None:
    found = []
    for source in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(source.read_bytes().splitlines(), 1):
            if _UNPICKLING.search(line):
                found.append(f"{source.relative_to(PACKAGE)}:{number}: {line.decode().strip()}")
    assert found == []


def test_the_native_extension_has_no_unpickling_entry_point_of_its_own(native: Any) -> None:
    """Cython gives every cdef class pickle support unless told not to (``auto_pickle``):
    a module-level ``__pyx_unpickle_<Class>`` that any pickle stream may call, which builds
    the object without its ``__cinit__`` (a QueryMatcher with no glob). unistore's classes
    must have none; what is left is Cython's own memoryview support (``Enum``), which
    nothing here calls."""
    (extension,) = PACKAGE.glob("_core*.so")
    names = re.finditer(rb"[\w.]*unpickle_\w+", extension.read_bytes())
    own = sorted(
        {match.group().decode() for match in names} - {"__pyx_unpickle_Enum", "__pyx_unpickle_Enum__set_state"}
    )
    assert [name for name in own if "MemoryView" not in name] == []
    assert [name for name in dir(native) if "pickle" in name and name != "__pyx_unpickle_Enum"] == []


def test_using_every_part_of_the_package_imports_no_pickle() -> None:
    script = r"""
import asyncio, sys, tempfile
from unistore import StorageQuery, UnifiedStorageManager, cli
from unistore.providers import LmdbStorageProvider, MemoryStorageProvider

async def main(path):
    async with UnifiedStorageManager() as manager:
        manager.register_provider("a", LmdbStorageProvider(path, namespace="n"))
        manager.register_provider("b", MemoryStorageProvider())
        for ct in ("a", "b"):
            await manager.save("k", {"x": [1, b"2"]}, ct, tags={"t": "1"})
            assert (await manager.load("k", ct)).data == {"x": [1, b"2"]}
        assert len([r async for r in manager.search(StorageQuery(tags={"t": "1"}))]) == 2

path = tempfile.mkdtemp() + "/s"
asyncio.run(main(path))
assert cli.main(["--store", "lmdb://" + path + "?namespace=n", "get", "k", "--type", "a"]) == 0
bad = [name for name in sys.modules if "pickle" in name or name in ("shelve", "dill")]
sys.exit(repr(bad) if bad else 0)
"""
    for pure in ("0", "1"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "UNISTORE_PURE_PYTHON": pure},
        )
        assert done.returncode == 0, (pure, done.stderr)


class _Tripwire:
    """Unpickling one of these sets an environment variable: proof that something unpickled."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.putenv, ("UNISTORE_UNPICKLED", "yes"))


def _payloads() -> list[bytes]:
    evil = pickle.dumps(_Tripwire())
    return [
        msgpack.packb(evil),  # a pickle as plain bytes: loads as those bytes
        msgpack.packb(msgpack.ExtType(1, evil)),  # the datetime extension, wrong size
        msgpack.packb(msgpack.ExtType(2, evil)),  # the UUID extension, wrong size
        *(msgpack.packb({"x": msgpack.ExtType(code, evil)}) for code in (0, 3, 42, 127)),
        # Negative codes are msgpack's own (-1, its timestamp, loads as a msgpack.Timestamp):
        # ext 32 with code -2 and -128, written by hand (ExtType refuses them).
        *(b"\xc9" + len(evil).to_bytes(4, "big") + code + evil for code in (b"\xfe", b"\x80")),
    ]


def test_a_crafted_payload_never_reaches_pickle(twin: Any) -> None:
    os.environ.pop("UNISTORE_UNPICKLED", None)
    plain, *extensions = _payloads()
    assert twin.unpack_payload(plain) == pickle.dumps(_Tripwire())
    for payload in extensions:
        with pytest.raises(ValueError, match="unknown extension type"):
            twin.unpack_payload(payload)
    assert "UNISTORE_UNPICKLED" not in os.environ


async def test_a_crafted_record_in_a_store_loads_as_data_or_is_refused(redis_port: int) -> None:
    """A record planted in a shared Redis by someone else: it is our format around a
    pickle; loading it gives bytes or StorageCorruptionError, never an unpickled object."""
    os.environ.pop("UNISTORE_UNPICKLED", None)
    namespace = uuid.uuid4().hex
    provider = RedisStorageProvider({"host": "127.0.0.1", "port": redis_port, "namespace": namespace})
    prefix = redis_layout.shard_prefix(namespace.encode(), 0, 1)
    with redis.Redis(port=redis_port) as raw:
        for number, payload in enumerate(_payloads()):
            key = b"planted%d" % number
            await provider.save(key.decode(), 0, "t")  # a record of ours, its payload then replaced
            record = raw.get(prefix + b"r:" + key)
            assert record is not None and record.endswith(msgpack.packb(0))
            raw.set(prefix + b"r:" + key, record[: -len(msgpack.packb(0))] + payload)
    plain = await provider.load("planted0")
    assert plain.data == pickle.dumps(_Tripwire())
    for number in range(1, len(_payloads())):
        with pytest.raises(StorageCorruptionError):
            await provider.load(f"planted{number}")
    await provider.cleanup()
    assert "UNISTORE_UNPICKLED" not in os.environ
