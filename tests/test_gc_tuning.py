"""The server keeps the cyclic GC off the request path once it has started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from lmcache_core.server.runner import GC_GEN0_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_freezes_the_startup_heap_and_widens_the_young_generation() -> None:
    gc.unfreeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    tune_gc()
    assert gc.get_freeze_count() > 1000  # this process's modules, at least
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, gen1, gen2)
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1  # collection still works for what comes later
