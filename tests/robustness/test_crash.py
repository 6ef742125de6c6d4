"""Crash safety: a process SIGKILLed at a random moment loses nothing it was told was written.

A forked child runs ``TASKS`` concurrent tasks on one namespace. Each task owns ``KEYS`` keys and
works on them one operation at a time, picked at random: a single save or delete (the tasks'
single writes meet in the writer's queue: on LMDB they are group-committed together), a
``save_many`` batch or a ``delete_many``. Every item a task writes carries its operation's id,
in its data and as its ``batch`` tag. The child tells the parent through a pipe when it starts an
operation and again once the await has returned: that second line is the acknowledgement.

The parent SIGKILLs the child at a random moment, early (a round needs only writes in flight,
not many of them), then reads the whole namespace and checks, task by task, that it holds
exactly what the acknowledged operations made, but for the one operation the task had in flight:
that one is there whole or not at all (on Redis, whole or absent in each shard: ``save_many``
and ``delete_many`` run one script per shard). It counts each in-flight batch through its tag
(the index agrees with the records), and ``check()`` must be clean. What it finds is the model
of the next round: every round shares one store, so each checks all the earlier ones again.

``CRASH_SEED`` (an environment variable) picks other moments and operations.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import random
import select
import signal
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import redis

from unistore import StorageProvider, StorageQuery
from unistore.providers import LmdbEngine, LmdbStorageProvider, RedisStorageProvider

ROUNDS = 20
TASKS = 12
KEYS = 6  # per task: its saves and deletes keep meeting what its earlier batches wrote
KINDS = ("save", "delete", "save_many", "delete_many")
WEIGHTS = (4, 1, 3, 2)
#: The longest a round lets the child write before the kill (from its first operation's start or
#: acknowledgement), by backend: a Redis child opens a connection per task first.
MOST_BEFORE_KILL = {"lmdb": 0.06, "redis": 0.1}
#: A child that makes no progress (no first operation, or no acknowledgement) fails the round in
#: PROGRESS_SECONDS; its own watchdog (SIGALRM) ends it should the parent die and never kill it.
PROGRESS_SECONDS = 10
CHILD_SECONDS = 30
CONTENT_TYPE = "t"

Event = list[Any]  # ["begin", task, op, kind, keys] | ["ack", task, op, result] | ["error", text]
State = dict[str, str]  # key -> the id of the operation whose write it holds (absent: no item)


# -- the child -------------------------------------------------------------------------


async def _write_until_killed(provider: StorageProvider[Any], seed: str, round_number: int, say: Any) -> None:
    async def task(number: int) -> None:
        chance = random.Random(f"{seed}:{number}")
        keys = [f"t{number}:{n}" for n in range(KEYS)]
        for step in itertools.count():
            op = f"{round_number}.{number}.{step}"
            kind = chance.choices(KINDS, WEIGHTS)[0]
            chosen = (
                [chance.choice(keys)] if kind in ("save", "delete") else chance.sample(keys, chance.randint(2, KEYS))
            )
            say(["begin", number, op, kind, chosen])
            tags = {"batch": op, "task": str(number)}
            result: int
            if kind == "save":
                item = await provider.save(chosen[0], {"op": op, "key": chosen[0]}, CONTENT_TYPE, tags=tags)
                result = int(item.metadata.key == chosen[0])
            elif kind == "save_many":
                items = await provider.save_many(
                    {key: {"op": op, "key": key} for key in chosen}, CONTENT_TYPE, tags=tags
                )
                result = sum(1 for item, key in zip(items, chosen, strict=True) if item.metadata.key == key)
            elif kind == "delete":
                result = int(await provider.delete(chosen[0]))
            else:
                result = await provider.delete_many(chosen)
            say(["ack", number, op, result])  # only now: the await has returned

    await asyncio.gather(*(task(number) for number in range(TASKS)))


def _child(make: Callable[[], StorageProvider[Any]], seed: str, round_number: int, pipe: int) -> None:
    """The forked child's whole life: write until killed; any other end is a failure."""
    signal.alarm(CHILD_SECONDS)  # not faulthandler's timer: a forked child cannot rearm it

    def say(event: Event) -> None:  # one write of less than PIPE_BUF: whole lines only
        os.write(pipe, (json.dumps(event) + "\n").encode())

    try:
        asyncio.run(_write_until_killed(make(), seed, round_number, say))
    except BaseException as exc:
        traceback.print_exc()
        say(["error", repr(exc)])
    finally:
        os._exit(1)


def crash_round(
    make: Callable[[], StorageProvider[Any]], chance: random.Random, round_number: int, most: float
) -> list[Event]:
    """Fork a child writing through ``make()``'s provider, SIGKILL it at a random moment
    (at most ``most`` seconds after it began) and return what it said, in order."""
    seed = f"{chance.random()}"
    delay = chance.uniform(0, most)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: it never returns
        os.close(read_end)
        _child(make, seed, round_number, write_end)
    os.close(write_end)
    said = bytearray()
    ended = False

    def take(timeout: float) -> None:
        nonlocal ended
        if not ended and select.select([read_end], [], [], max(timeout, 0))[0]:
            chunk = os.read(read_end, 1 << 16)
            ended = not chunk
            said.extend(chunk)

    # Half the rounds count the moment from the first operation's start (a kill may come
    # before any commit), half from its acknowledgement (the child is connected and writing).
    started = b'["begin"' if round_number % 2 else b'["ack"'
    try:
        deadline = time.monotonic() + PROGRESS_SECONDS
        while started not in said and not ended:
            if time.monotonic() > deadline:
                pytest.fail(f"round {round_number}: the child made no progress in {PROGRESS_SECONDS} s")
            take(deadline - time.monotonic())
        kill_at = time.monotonic() + delay
        while not ended and time.monotonic() < kill_at:  # read on: a full pipe would stall it
            take(kill_at - time.monotonic())
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        while not ended:
            take(10)
        os.close(read_end)
    text = said.decode()
    events: list[Event] = [json.loads(line) for line in text.splitlines()]
    errors = [event for event in events if event[0] == "error"]
    assert not errors, f"round {round_number} (seed {seed}): the child failed: {errors}"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (round_number, status)
    assert text.endswith("\n")
    return events


# -- the check -------------------------------------------------------------------------


def replay(model: State, events: list[Event], counts: collections.Counter[str]) -> list[Event]:
    """Apply the acknowledged operations to ``model`` (checking each one's result against
    it) and return the operations still in flight at the kill: at most one per task."""
    in_flight: dict[int, Event] = {}
    for event in events:
        if event[0] == "begin":
            assert event[1] not in in_flight, event  # a task runs one operation at a time
            in_flight[event[1]] = event
            continue
        _, task, op, result = event
        _, _, begun, kind, keys = in_flight.pop(task)
        assert begun == op, (begun, event)
        if kind.startswith("save"):
            assert result == len(keys), event
            model.update(dict.fromkeys(keys, op))
        else:
            assert result == sum(1 for key in keys if key in model), (event, {key: model.get(key) for key in keys})
            for key in keys:
                model.pop(key, None)
        counts["acknowledged"] += 1
        counts[f"acknowledged {kind}"] += 1
    return list(in_flight.values())


def observe(found: Iterable[Any]) -> State:
    """The namespace's items, as ``State``; every record says the same in its data and tags."""
    observed: State = {}
    for result in found:
        item = result.item
        key = item.metadata.key
        assert item.data == {"op": item.metadata.tags["batch"], "key": key}, item
        assert item.metadata.tags["task"] == key[1:].split(":")[0] and key not in observed, item
        observed[key] = item.data["op"]
    return observed


def settle(
    model: State,
    in_flight: list[Event],
    observed: State,
    unit_of: Callable[[str], int],
    counts: collections.Counter[str],
) -> State:
    """Check ``observed`` against the acknowledged ``model`` and the operations in flight,
    each of whose atomic units (its keys in one shard, ``unit_of``) is whole or absent;
    return what the store holds, the model of the next round."""
    expected = dict(model)
    for _, task, op, kind, keys in in_flight:
        counts["in flight"] += 1
        units: dict[int, list[str]] = {}
        for key in keys:
            units.setdefault(unit_of(key), []).append(key)
        for unit in units.values():
            before = {key: model.get(key) for key in unit}
            after = {key: (op if kind.startswith("save") else None) for key in unit}
            now = {key: observed.get(key) for key in unit}
            assert now in (before, after), f"task {task}: {kind} {op} is half there: {now}, not {before} or {after}"
            if now != before:
                counts[f"landed unacknowledged {kind}"] += 1
            for key, value in now.items():
                if value is None:
                    expected.pop(key, None)
                else:
                    expected[key] = value
    lost = {key: value for key, value in expected.items() if observed.get(key) != value}
    assert not lost, f"acknowledged writes lost: {lost} (found {[observed.get(key) for key in lost]})"
    assert observed.keys() == expected.keys(), f"items no acknowledged write made: {observed.keys() - expected.keys()}"
    return observed


def batch_sizes(observed: State, in_flight: list[Event]) -> dict[str, int]:
    """How many items each in-flight save batch left, by its id, as the records say."""
    batches = [op for _, _, op, kind, _ in in_flight if kind == "save_many"]
    held = collections.Counter(observed.values())
    return {op: held[op] for op in batches}


def assert_not_vacuous(counts: collections.Counter[str]) -> None:
    """Every round was killed with writes in flight, and every kind of write was acknowledged
    (a slow machine acknowledges fewer: the bounds are loose)."""
    print(dict(counts))
    assert counts["in flight"] >= ROUNDS and counts["acknowledged"] >= ROUNDS, counts
    assert all(counts[f"acknowledged {kind}"] for kind in KINDS), counts


# -- LMDB ------------------------------------------------------------------------------

#: Each round's durability: ``ROUNDS`` rounds of group commits ("sync" and "async": one writer
#: thread, one transaction per batch), then a few of "none" (inline commits). A process crash
#: loses nothing acknowledged in any mode: the OS keeps the pages.
DURABILITY = ("sync", "async") * (ROUNDS // 2) + ("none",) * 4


@pytest.mark.watchdog(180)
def test_lmdb_writers_killed_at_random_moments_lose_nothing_acknowledged(tmp_path: Path) -> None:
    store = tmp_path / "store"
    chance = random.Random(os.environ.get("CRASH_SEED", "12"))
    counts: collections.Counter[str] = collections.Counter()
    model: State = {}
    for round_number, durability in enumerate(DURABILITY):

        def make(durability: str = durability) -> LmdbStorageProvider:
            return LmdbStorageProvider(store, namespace="crash", durability=durability)

        events = crash_round(make, chance, round_number, MOST_BEFORE_KILL["lmdb"])
        in_flight = replay(model, events, counts)
        engine = LmdbEngine(store, namespace="crash")  # the parent holds no store while a child runs
        try:
            observed = observe(engine.search(StorageQuery()))
            model = settle(model, in_flight, observed, lambda key: 0, counts)
            for op, size in batch_sizes(observed, in_flight).items():  # the index agrees
                assert len(list(engine.search(StorageQuery(tags={"batch": op})))) == size, op
            report = engine.check()
            assert report.ok, (round_number, report.problems)
            assert report.records == len(model)
        finally:
            engine.close()
    assert_not_vacuous(counts)


# -- Redis -----------------------------------------------------------------------------

SHARDS = 3


def _quiet(port: int) -> None:
    """Wait until the server has dropped the killed child's connections: after that no
    script of its can still run (a script it sent whole may run after the kill)."""
    with redis.Redis(port=port) as client:
        deadline = time.monotonic() + 10
        while int(client.info("clients")["connected_clients"]) > 1:  # but this one
            assert time.monotonic() < deadline, client.client_list()
            time.sleep(0.002)


@pytest.mark.watchdog(180)
async def test_redis_clients_killed_at_random_moments_lose_nothing_acknowledged(
    tmp_path: Path, redis_starter: Any
) -> None:
    durable = ("--appendonly", "yes", "--appendfsync", "always")  # an acknowledged write is on disk
    process, port = redis_starter(tmp_path, None, *durable)
    settings = {"host": "127.0.0.1", "port": port, "namespace": "crash", "shards": SHARDS}
    chance = random.Random(os.environ.get("CRASH_SEED", "12"))
    counts: collections.Counter[str] = collections.Counter()
    model: State = {}
    try:
        for round_number in range(ROUNDS):
            events = crash_round(
                lambda: RedisStorageProvider(settings), chance, round_number, MOST_BEFORE_KILL["redis"]
            )
            in_flight = replay(model, events, counts)
            _quiet(port)
            provider = RedisStorageProvider(settings)
            try:
                observed = observe([r async for r in provider.search(StorageQuery())])

                def shard(key: str, provider: RedisStorageProvider = provider) -> int:
                    return provider._shard(key.encode()).number

                model = settle(model, in_flight, observed, shard, counts)
                for op, size in batch_sizes(observed, in_flight).items():  # the index agrees
                    assert len([r async for r in provider.search(StorageQuery(tags={"batch": op}))]) == size, op
                report = await provider.check()
                assert report.ok, (round_number, report.problems)
                assert report.records == len(model)
            finally:
                await provider.cleanup()  # before the next fork: the child inherits no connection
        # The server's AOF holds it all, the killed clients' last scripts too: killed at rest
        # and started again, it answers the same.
        process.kill()
        process.wait(timeout=10)
        process, _ = redis_starter(tmp_path, port, *durable)
        provider = RedisStorageProvider(settings)
        try:
            assert observe([r async for r in provider.search(StorageQuery())]) == model
            assert (await provider.check()).ok
        finally:
            await provider.cleanup()
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert_not_vacuous(counts)
