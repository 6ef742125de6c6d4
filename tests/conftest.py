"""Shared fixtures: hypothesis profiles, a real redis-server, and the provider
factory that the conformance and property suites run against."""

from __future__ import annotations

import faulthandler
import importlib
import itertools
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings

from unistore import StorageProvider, _purecore
from unistore.providers import LmdbStorageProvider, MemoryStorageProvider, RedisStorageProvider

settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.register_profile(  # under valgrind every example costs ~50x: fewer of them, still all paths
    "valgrind", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# -- watchdog ------------------------------------------------------------------

#: Seconds any one test may take before the watchdog ends the run (scaled by
#: UNISTORE_WATCHDOG_SCALE, e.g. under valgrind); ``@pytest.mark.watchdog(s)`` sets a test's own.
WATCHDOG_SECONDS = 600


def _real_stderr(config: pytest.Config) -> int:
    """The file descriptor of the terminal's stderr, which pytest's capture has replaced."""
    capture = config.pluginmanager.getplugin("capturemanager")
    saved = getattr(getattr(getattr(capture, "_global_capturing", None), "err", None), "targetfd_save", None)
    return saved if isinstance(saved, int) else 2


@pytest.fixture(autouse=True)
def watchdog(request: pytest.FixtureRequest) -> Iterator[None]:
    """Make a test that hangs fail the run instead of hanging it.

    faulthandler's timer is a C thread that needs no GIL, so it fires even when
    a deadlock holds the GIL (as py-lmdb's ``open_db`` once did): it prints
    every thread's stack to the real stderr and exits the process with status 1.
    A forked child must not rearm it (it would wait for the parent's timer thread).
    """
    marker = request.node.get_closest_marker("watchdog")
    seconds = marker.args[0] if marker is not None else WATCHDOG_SECONDS
    scale = float(os.environ.get("UNISTORE_WATCHDOG_SCALE", "1"))
    stderr = _real_stderr(request.config)
    os.write(stderr, b"")  # fails now, not when the watchdog fires, if it is not writable
    faulthandler.dump_traceback_later(seconds * scale, exit=True, file=stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


# -- redis-server --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (the port + 10000) is free too."""
    for _ in range(100):
        port = random.randrange(20000, 55000)
        try:
            with socket.socket() as data, socket.socket() as bus:
                data.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    pytest.fail("found no free pair of ports for a Redis Cluster node")


def start_redis(workdir: Path, wanted: int | None = None, *options: str) -> tuple[subprocess.Popen[bytes], int]:
    """A private redis-server on 127.0.0.1 (on port ``wanted``, or a free one), its data in
    ``workdir`` (loaded from a dump there), with more command-line ``options``, and its
    port, once it answers (a PING refused for want of a password counts)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server (scripts/test does it)")
    for _ in range(5 if wanted is None else 1):  # a port found free can be taken before the server binds it
        port = _free_port() if wanted is None else wanted
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return process, port
            except OSError:
                time.sleep(0.02)
        process.kill()
        process.wait()
    pytest.fail("could not start redis-server on a free loopback port")


def _cluster_state(port: int) -> str:
    reply = subprocess.run(
        ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=10, check=False
    )
    return reply.stdout


def _start_cluster_node(node: Path, *options: str) -> tuple[subprocess.Popen[bytes], int]:
    """:func:`start_redis` on a free pair of ports, again on another pair if another process
    took one of them between the check and the bind (the suites run side by side in CI)."""
    for _ in range(4):
        try:
            return start_redis(node, _free_cluster_port(), *options)
        except pytest.fail.Exception:
            (node / "nodes.conf").unlink(missing_ok=True)
    return start_redis(node, _free_cluster_port(), *options)


def start_cluster(
    workdir: Path, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000, options: tuple[str, ...] = ()
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """A private Redis Cluster of ``masters`` masters with ``replicas`` replicas each on
    loopback (each node started with ``options`` too), and the ports of all its nodes
    (masters first, as ``--cluster create`` pairs them), once every node reports the
    cluster ok and every replica is in sync."""
    processes: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for number in range(masters * (1 + replicas)):
            node = workdir / f"node{number}"
            node.mkdir()
            process, port = _start_cluster_node(
                node,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node / "nodes.conf"),
                "--cluster-node-timeout",
                str(node_timeout_ms),
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
                *options,
            )
            processes.append(process)
            ports.append(port)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in ports),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
        deadline = time.monotonic() + 30
        while (
            not all("cluster_state:ok" in _cluster_state(port) for port in ports)
            or not all(_in_sync(port) for port in ports[masters:])
            or not _agreed(ports[0])
        ):
            if time.monotonic() > deadline:
                pytest.fail(f"the Redis Cluster on ports {ports} did not become ok")
            time.sleep(0.1)
    except BaseException:
        for process in processes:
            process.kill()
            process.wait()
        raise
    return processes, ports


def _agreed(port: int) -> bool:
    """Whether every node of the cluster agrees on its configuration (as ``redis-cli --cluster``,
    which refuses to reshard a cluster that does not, checks it)."""
    reply = subprocess.run(
        ["redis-cli", "--cluster", "check", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return reply.returncode == 0 and "[WARNING]" not in reply.stdout and "[ERR]" not in reply.stdout


def _in_sync(port: int) -> bool:
    """Whether the replica on ``port`` has its master's data."""
    reply = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "replication"], capture_output=True, text=True, timeout=10, check=False
    )
    return "master_link_status:up" in reply.stdout


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """The ports of the masters of a private 3-master Redis Cluster, for the whole session."""
    processes, ports = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield ports
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=10)


@dataclass
class Cluster:
    """A Redis Cluster on loopback, and what tests do to one as an operator would: the ports
    of its nodes (its ``masters`` first, as ``--cluster create`` pairs them) and, for a
    cluster a test started, their processes."""

    ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    masters: int = 3

    def kill(self, port: int) -> None:
        """``kill -9`` the node on ``port``."""
        self.processes[port].kill()
        self.processes[port].wait()

    def restart(self, port: int) -> None:
        """Restart the node on ``port`` empty (its data gone, its cluster configuration
        kept), as a node without persistence comes back from a crash; once it answers and
        the cluster is ok again."""
        old = self.processes[port]
        old.kill()
        old.wait()
        self.processes[port] = subprocess.Popen(old.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while "cluster_state:ok" not in _cluster_state(port) or not _agreed(self.ports[0]):
            assert time.monotonic() < deadline, f"the node on {port} did not come back"
            time.sleep(0.1)

    def cli(self, *arguments: str, timeout: float = 120) -> str:
        """Run redis-cli (it must succeed); its output."""
        done = subprocess.run(["redis-cli", *arguments], capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0 and "[ERR]" not in done.stdout, (
            f"{arguments}\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}"
        )
        return done.stdout

    def settled(self) -> None:
        """Wait until every node agrees on the configuration (after a change the nodes learn
        of it over their bus; ``redis-cli --cluster`` refuses to act before)."""
        deadline = time.monotonic() + 60
        while not _agreed(self.ports[0]):
            assert time.monotonic() < deadline, f"the nodes of {self.ports} never agreed"
            time.sleep(0.2)

    def node_id(self, port: int) -> str:
        return self.cli("-p", str(port), "cluster", "myid").strip()

    def _slots(self, ask: int | None = None) -> list[tuple[int, int, int]]:
        with redis.Redis(port=self.ports[0] if ask is None else ask) as client:
            return [(start, end, int(node[1])) for start, end, node, *_ in client.execute_command("CLUSTER", "SLOTS")]

    def owner(self, slot: int, ask: int | None = None) -> int:
        """The port of the master that serves ``slot`` now, as the node ``ask`` (the first
        by default) says."""
        return next(port for start, end, port in self._slots(ask) if start <= slot <= end)

    def move(self, slot: int) -> tuple[int, int]:
        """Move ``slot`` to the next master with ``redis-cli --cluster reshard`` (plain: no
        ``--cluster-replace``); the master before and after. reshard takes a source's slots
        in ascending order, so it moves every slot of the source up to this one."""
        self.settled()
        masters = self.ports[: self.masters]
        before = self.owner(slot)
        target = masters[(masters.index(before) + 1) % len(masters)]
        slots = self._slots()
        up_to = sum(min(end, slot) - start + 1 for start, end, port in slots if port == before and start <= slot)
        self.cli(
            "--cluster", "reshard", f"127.0.0.1:{masters[0]}",
            "--cluster-from", self.node_id(before), "--cluster-to", self.node_id(target),
            "--cluster-slots", str(up_to), "--cluster-yes",
        )  # fmt: skip
        return before, self.owner(slot)

    def replica_of(self, master: int) -> int:
        with redis.Redis(port=master) as client:
            return int(client.info("replication")["slave0"]["port"])

    def replicated(self) -> None:
        """Wait until every master's writes have reached a replica."""
        for port in self.ports[: self.masters]:
            with redis.Redis(port=port) as client:
                assert client.execute_command("WAIT", 1, 10_000) >= 1

    def open_migration(self, slot: int, keys: list[bytes]) -> tuple[int, int]:
        """Start moving ``slot`` to the next master by hand, as redis-cli does, and move
        ``keys`` (of that slot) over; the source and target ports."""
        masters = self.ports[: self.masters]
        source = self.owner(slot)
        target = masters[(masters.index(source) + 1) % len(masters)]
        self.cli("-p", str(target), "cluster", "setslot", str(slot), "importing", self.node_id(source))
        self.cli("-p", str(source), "cluster", "setslot", str(slot), "migrating", self.node_id(target))
        if keys:
            with redis.Redis(port=source) as client:
                client.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        return source, target

    def close_migration(self, slot: int, source: int, target: int) -> None:
        """Move the rest of ``slot``'s keys and hand it to the target, as redis-cli ends a move."""
        with redis.Redis(port=source) as client:
            while keys := client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                client.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        for port in self.ports[: self.masters]:
            self.cli("-p", str(port), "cluster", "setslot", str(slot), "node", self.node_id(target))


@pytest.fixture
def shared_cluster(redis_cluster: list[int]) -> Cluster:
    """The session's Redis Cluster (:func:`redis_cluster`), with :class:`Cluster`'s helpers
    (for reads: a test must leave it as it found it)."""
    return Cluster(redis_cluster)


@pytest.fixture
def cluster_starter(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Starts private Redis Clusters (:func:`start_cluster`'s arguments; by default 3 masters
    with a replica each) that one test may reshard, fail over or kill nodes of; every node
    is killed when the test ends."""
    started: list[Cluster] = []

    def start(
        masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000, options: tuple[str, ...] = ()
    ) -> Cluster:
        workdir = tmp_path / f"cluster{len(started)}"
        workdir.mkdir()
        processes, ports = start_cluster(workdir, masters, replicas, node_timeout_ms, options)
        cluster = Cluster(ports, dict(zip(ports, processes, strict=True)), masters)
        started.append(cluster)
        return cluster

    yield start
    processes = [process for cluster in started for process in cluster.processes.values()]  # restarted ones too
    for process in processes:
        process.kill()
    for process in processes:
        process.wait(timeout=10)


@pytest.fixture
def redis_starter() -> Callable[..., tuple[subprocess.Popen[bytes], int]]:
    """:func:`start_redis`, for a test that stops and starts a server of its own."""
    return start_redis


@pytest.fixture(scope="session")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of a private redis-server on 127.0.0.1, for the whole session."""
    process, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield port
    process.terminate()
    process.wait(timeout=10)


#: The Redis database each test module was given on the session's server, by module.
_DATABASES: dict[str, int] = {}
#: Database 0 holds the namespaces of every test that makes its own (a namespace each).
_MOST_DATABASES = 15


@pytest.fixture(scope="module")
def redis_db(request: pytest.FixtureRequest) -> int:
    """The Redis database of the test's module on the session's server: its own (1 to 15),
    so that a module that empties its database never meets another's keys."""
    name = request.module.__name__
    if name not in _DATABASES:
        if len(_DATABASES) == _MOST_DATABASES:
            raise RuntimeError(f"more than {_MOST_DATABASES} test modules ask for a Redis database of their own")
        _DATABASES[name] = len(_DATABASES) + 1
    return _DATABASES[name]


@pytest.fixture
def raw(redis_port: int, redis_db: int) -> Iterator[redis.Redis]:
    """A plain redis-py client of the session's server, on the module's own database
    (:func:`redis_db`), emptied first."""
    client = redis.Redis(port=redis_port, db=redis_db)
    client.flushdb()
    yield client
    client.close()


# -- the two cores ------------------------------------------------------------------


def _native_or_skip() -> ModuleType:
    """The extension; a skip where it was not built, a failure where it must be."""
    try:
        return importlib.import_module("unistore._core")
    except ImportError:
        if os.environ.get("UNISTORE_REQUIRE_NATIVE") == "1":
            raise
        pytest.skip("the native core was not built on this machine (no compiler at install time)")


@pytest.fixture(scope="module")
def native() -> ModuleType:
    """The native core (the extension), whichever core the package runs on."""
    return _native_or_skip()


@pytest.fixture(params=["pure", pytest.param("native", marks=pytest.mark.native)])
def twin(request: pytest.FixtureRequest) -> ModuleType:
    """Each core in turn, for tests of behaviour both must have."""
    return _purecore if request.param == "pure" else _native_or_skip()


# -- providers -------------------------------------------------------------------

#: What share of the profile's examples a property test runs on a provider whose every
#: call is several round trips to several servers (the suite must fit CI's budget).
NETWORK_SHARE = {"redis-cluster": 4, "redis-near-cache": 2, "redis-cluster-near-cache": 4}


@pytest.fixture
def property_settings(request: pytest.FixtureRequest) -> settings:
    """The hypothesis settings of a property test run on ``provider_factory``'s provider:
    the profile's, with a quarter of its examples on a Redis Cluster."""
    kind = getattr(request.node, "callspec", None) and request.node.callspec.params.get("provider_factory")
    profile = settings()
    share = NETWORK_SHARE.get(kind, 1) if isinstance(kind, str) else 1
    return settings(profile, max_examples=max(profile.max_examples // share, 20))


#: The kinds of provider every test of ``provider_factory`` runs on. It makes two more for the
#: tests that ask for them by name (the conformance suite): "redis-near-cache" and
#: "redis-cluster-near-cache", a Redis provider with a near cache on one server and on the cluster.
PROVIDERS = ["memory", "lmdb", "redis", "redis-cluster"]
#: The near cache's items in the conformance runs with one: few, so that evictions happen too.
NEAR_CACHE_ITEMS = 16
#: The shards a namespace is split over on the cluster: more than its masters, so one
#: namespace spans all of them and every search scatters.
CLUSTER_SHARDS = 4


@pytest.fixture(params=PROVIDERS)
async def provider_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], StorageProvider[Any]]]:
    """Makes fresh, empty, isolated providers of one kind; every conformance test runs on each kind.

    Each LMDB provider gets a store of its own, so that no provider starts with another's
    namespaces in its store (``namespaces()`` and the CLI's listings see one each).
    """
    numbers = itertools.count()
    made: list[StorageProvider[Any]] = []

    def make() -> StorageProvider[Any]:
        number = next(numbers)
        provider: StorageProvider[Any]
        if request.param == "lmdb":
            provider = LmdbStorageProvider(tmp_path / f"store{number}", namespace=f"ns{number}")
        elif request.param == "redis":  # one database shared by every test: a namespace each
            port = request.getfixturevalue("redis_port")
            provider = RedisStorageProvider({"host": "127.0.0.1", "port": port, "namespace": uuid.uuid4().hex})
        elif request.param == "redis-near-cache":  # the same, loads served from a near cache where they can be
            port = request.getfixturevalue("redis_port")
            provider = RedisStorageProvider(port=port, namespace=uuid.uuid4().hex, near_cache=NEAR_CACHE_ITEMS)
        elif request.param in ("redis-cluster", "redis-cluster-near-cache"):
            nodes = [f"127.0.0.1:{port}" for port in request.getfixturevalue("redis_cluster")]
            near = NEAR_CACHE_ITEMS if request.param == "redis-cluster-near-cache" else 0
            provider = RedisStorageProvider(
                cluster_nodes=nodes, namespace=uuid.uuid4().hex, shards=CLUSTER_SHARDS, near_cache=near
            )
        else:
            provider = MemoryStorageProvider(namespace=f"ns{number}")
        made.append(provider)
        return provider

    yield make
    for provider in made:
        if isinstance(provider, LmdbStorageProvider):
            provider.engine.close()
        elif isinstance(provider, RedisStorageProvider):
            await provider.cleanup()
