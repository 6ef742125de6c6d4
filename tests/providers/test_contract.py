"""The one provider contract (:class:`unistore.StorageProvider`): every provider of ours
has the maintenance methods, with the same signatures and return types, so that the
``unistore`` command and the URL openers never ask which provider they hold."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from helpers import UTC, Factory
from unistore import StorageError, StorageProvider, StorageQuery, ValidationError, index
from unistore.providers import LmdbStorageProvider, MemoryStorageProvider, RedisStorageProvider
from unistore.providers.maintenance import CheckReport, Namespace, Usage

MAINTENANCE = (
    "check",
    "purge_expired",
    "usage",
    "namespaces",
    "namespace_exists",
    "drop_namespace",
    "explain",
    "backup",
)


@pytest.mark.parametrize("provider_class", [MemoryStorageProvider, LmdbStorageProvider, RedisStorageProvider])
def test_every_provider_has_the_maintenance_methods_with_the_contract_s_signatures(provider_class: type) -> None:
    for name in MAINTENANCE:
        ours, contract = getattr(provider_class, name), getattr(StorageProvider, name)
        assert inspect.iscoroutinefunction(ours), name
        assert inspect.signature(ours, eval_str=True) == inspect.signature(contract, eval_str=True), name


async def test_the_maintenance_methods_return_the_contract_s_types(provider_factory: Factory, tmp_path: Path) -> None:
    provider = provider_factory()
    await provider.save("k", {"n": 1}, "doc", tags={"team": "a"})
    report = await provider.check()
    assert isinstance(report, CheckReport) and report.ok and report.records == 1
    usage = await provider.usage()
    assert list(usage) == ["doc"] and isinstance(usage["doc"], Usage) and usage["doc"].items == 1
    assert await provider.purge_expired() == 0
    found = await provider.namespaces()
    assert all(isinstance(namespace, Namespace) for namespace in found)
    assert getattr(provider, "namespace", None) in [namespace.name for namespace in found] or isinstance(
        provider, LmdbStorageProvider
    )
    assert await provider.namespace_exists() is True
    plan = await provider.explain(StorageQuery(tags={"team": "a"}))
    assert isinstance(plan, index.Plan) and plan.path in (index.POSTINGS, index.KEYS)
    with pytest.raises(ValidationError):
        await provider.explain(StorageQuery(limit=-1))
    if isinstance(provider, LmdbStorageProvider):
        await provider.backup(tmp_path / "copy")
        assert (tmp_path / "copy" / "data.mdb").exists()
    else:
        with pytest.raises(StorageError, match="backup"):
            await provider.backup(tmp_path / "copy")
        assert not (tmp_path / "copy").exists()


async def test_an_lmdb_provider_names_its_own_namespace_among_its_store_s(tmp_path: Path) -> None:
    async with LmdbStorageProvider(tmp_path / "s", namespace="mine") as provider:
        await provider.save("k", 1, "doc")
        assert Namespace("mine") in await provider.namespaces()


class _Minimal(StorageProvider[Any]):
    """A provider written before maintenance was part of the contract: the operations only."""

    async def save(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def load(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def search(self, query: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        yield None

    async def save_many(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def load_many(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def delete_many(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def delete_matching(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def cleanup(self) -> None:
        pass


async def test_a_provider_without_maintenance_still_loads_and_says_what_it_lacks(tmp_path: Path) -> None:
    provider = _Minimal()
    calls = {
        "check": provider.check(),
        "purge_expired": provider.purge_expired(),
        "usage": provider.usage(),
        "namespaces": provider.namespaces(),
        "namespace_exists": provider.namespace_exists(),
        "drop_namespace": provider.drop_namespace(),
        "explain": provider.explain(StorageQuery()),
        "backup": provider.backup(tmp_path / "copy"),
    }
    assert sorted(calls) == sorted(MAINTENANCE)
    for name, call in calls.items():
        with pytest.raises(StorageError, match=f"_Minimal has no {name}$"):
            await call


async def test_a_memory_check_names_a_record_that_does_not_decode_and_repair_drops_it() -> None:
    provider = MemoryStorageProvider()
    await provider.save_many({"a": 1, "b": 2}, "doc")
    provider.engine._records["b"] = b"\x01 not a record"
    report = await provider.check()
    assert report.records == 2 and len(report.problems) == 1 and "'b'" in report.problems[0]
    assert (await provider.check(repair=True)).problems == report.problems
    assert (await provider.check()).ok and [key async for key in _keys(provider)] == ["a"]


async def _keys(provider: StorageProvider[Any]) -> AsyncIterator[str]:
    async for result in provider.search(StorageQuery()):
        yield result.item.metadata.key


async def test_dropping_a_namespace_removes_its_items_and_the_provider_goes_on(provider_factory: Factory) -> None:
    provider = provider_factory()
    await provider.save_many({f"k{n}": n for n in range(30)}, "doc", tags={"team": "a"})
    await provider.save("brief", 1, "doc", expires_at=datetime.now(UTC) + timedelta(hours=1))
    assert await provider.drop_namespace() == 31
    if not isinstance(provider, MemoryStorageProvider):  # (a memory namespace is its provider)
        assert not await provider.namespace_exists()
    assert [r async for r in provider.search(StorageQuery())] == []  # (LMDB: its next use makes it anew)
    assert await provider.load_many([f"k{n}" for n in range(30)]) == {}
    await provider.save("k1", "again", "doc", tags={"team": "b"})  # the namespace made anew, empty
    assert (await provider.load("k1")).data == "again"
    assert [r.item.metadata.key async for r in provider.search(StorageQuery(tags={"team": "a"}))] == []
    report = await provider.check()
    assert report.ok and report.records == 1, report.problems


async def test_dropping_an_lmdb_namespace_leaves_the_store_s_others_whole(tmp_path: Path) -> None:
    async with (
        LmdbStorageProvider(tmp_path / "s", namespace="gone") as gone,
        LmdbStorageProvider(tmp_path / "s", namespace="kept") as kept,
    ):
        for provider in (gone, kept):
            await provider.save_many({f"k{n}": n for n in range(50)}, "doc", tags={"team": "a"})
        assert await gone.drop_namespace() == 50
        assert [namespace.name for namespace in await kept.namespaces()] == ["kept"]
        assert len(await kept.load_many([f"k{n}" for n in range(50)])) == 50
        assert (await kept.check()).ok
        await gone.save("new", 1, "doc")  # numbered anew: after "kept"
        assert [namespace.name for namespace in await kept.namespaces()] == ["kept", "gone"]
