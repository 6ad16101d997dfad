"""The eviction contract: settings and the removal-tolerant candidate iterator."""

from __future__ import annotations

import pytest

from lmcache_core.config.eviction import EvictionConfig
from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings, iter_candidates
from tests.storage.doubles import FifoPolicyDouble, chunks


def test_settings_validate_their_ranges() -> None:
    settings = EvictionSettings(trigger_watermark=0.8, eviction_ratio=0.2, capacity_bytes=10)
    assert settings.capacity_bytes == 10
    with pytest.raises(ValueError, match="trigger_watermark"):
        EvictionSettings(trigger_watermark=1.5, eviction_ratio=0.2, capacity_bytes=1)
    with pytest.raises(ValueError, match="eviction_ratio"):
        EvictionSettings(trigger_watermark=0.5, eviction_ratio=-0.1, capacity_bytes=1)
    with pytest.raises(ValueError, match="capacity_bytes"):
        EvictionSettings(trigger_watermark=0.5, eviction_ratio=0.1, capacity_bytes=-1)


def test_settings_from_the_flag_group() -> None:
    config = EvictionConfig(
        eviction_policy="LRU", eviction_trigger_watermark=0.7, eviction_ratio=0.3
    )
    settings = EvictionSettings.from_config(config, capacity_bytes=1 << 30)
    assert settings == EvictionSettings(0.7, 0.3, 1 << 30)


def test_the_test_double_satisfies_the_protocol() -> None:
    assert isinstance(FifoPolicyDouble(), EvictionPolicy)
    assert not isinstance(object(), EvictionPolicy)


def test_iter_candidates_yields_in_order_lazily() -> None:
    keys = chunks("k", 1000)
    order = dict.fromkeys(keys)
    iterator = iter_candidates(order, chunk=4)
    assert [next(iterator) for _ in range(3)] == keys[:3]
    assert list(iterator) == keys[3:]
    assert list(iter_candidates({})) == []


def test_iter_candidates_tolerates_every_kind_of_change() -> None:
    keys = chunks("k", 300)
    order = dict.fromkeys(keys)
    seen = []
    for index, key in enumerate(iter_candidates(order, chunk=2)):
        seen.append(key)
        if index % 2 == 0:
            del order[key]  # evicted
        if index == 10:
            del order[keys[200]]  # removed before it was reached
            order[keys[0]] = None  # re-added after it was yielded
            order.update(dict.fromkeys(chunks("new", 3)))
    assert len(seen) == len(set(seen))
    assert keys[200] not in seen
    assert seen[:11] == keys[:11]
    assert set(seen) == (set(keys) - {keys[200]}) | set(chunks("new", 3))
