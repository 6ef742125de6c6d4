"""Against the reference model: a property test of search and the stateful machine."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from .. import strategies as kit
from ..machine import check_saved, check_search, perform, run_machine
from ..model import ReferenceModel
from .hooks import (
    ConformanceHooks,
    Factory,
)


class ReferenceTests(ConformanceHooks):
    """Against the reference model: a property test of search and the stateful machine."""

    # -- against the reference model ----------------------------------------------------------

    def test_search_matches_model(self, make_provider: Factory, conformance_settings: settings) -> None:
        """Random stores (saves and ``save_many`` batches) and a random query each: the
        search finds what the reference model finds (or ``min(limit, matches)`` of it)."""

        async def run(writes: list[kit.NewItem | kit.Batch], shape: kit.QueryShape) -> None:
            provider = make_provider()
            try:
                model = ReferenceModel()
                for write in writes:
                    check_saved(model, await perform(provider, write), write)
                await check_search(provider, model, shape.query(model.history))
            finally:
                await provider.cleanup()

        small = st.none() | st.integers(0, 9)  # the data plays no part in a search: the machine varies it
        writes = st.lists(kit.items(small) | kit.batches(max_size=4, values=small), max_size=6)

        @conformance_settings
        @given(writes=writes, shape=kit.query_shapes())
        def check(writes: list[kit.NewItem | kit.Batch], shape: kit.QueryShape) -> None:
            asyncio.run(run(writes, shape))

        check()

    def test_state_machine(self, make_provider: Factory, conformance_settings: settings) -> None:
        """The stateful machine (:class:`~unistore.testing.machine.ProviderMachine`): random
        steps, every answer held against the reference model."""
        run_machine(make_provider, self, conformance_settings)


__all__ = ["ReferenceTests"]
