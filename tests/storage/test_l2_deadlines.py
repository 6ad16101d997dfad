"""The L2 prefetch ends at its request's deadline, and a late adapter answer leaves nothing held.

An in-memory adapter whose lookups wait on a gate stands in for a backend that
hangs: the prefetch must return at the deadline (long before the tier's
per-call timeout), and once the gate opens, the pins the late lookup took must be
released. A second prefetch that finds no in-flight slot before its deadline is
a counted miss, not a wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.tier import L2Tier
from tests.storage.doubles import make_l1

WAIT_S = 10.0
TIER_TIMEOUT_S = 5.0
"""The tier's per-call bound: the deadlines below are far shorter."""


class GatedLookupAdapter(L2AdapterV1):
    """Objects in a dict; every existence check waits until :attr:`gate` opens."""

    def __init__(self) -> None:
        super().__init__("gated", num_workers=4)
        self.objects: dict[ObjectKey, bytes] = {}
        self.gate = threading.Event()

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        self.objects[key] = b"".join(parts)

    def _exists(self, key: ObjectKey) -> bool:
        self.gate.wait(WAIT_S)
        return key in self.objects

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        return self.objects.get(key)

    def _remove(self, key: ObjectKey) -> bool:
        return self.objects.pop(key, None) is not None


class StoreEverywhere:
    keep_in_l1 = True

    def targets(self, adapter_count: int) -> Sequence[int]:
        return range(adapter_count)


class FirstHolder:
    temporary = True

    def choose(self, holders: Sequence[int]) -> int:
        return holders[0]


def _keys(count: int, seed: int = 0) -> list[ObjectKey]:
    return [ObjectKey(bytes([seed, i]) * 16, "m", 0) for i in range(count)]


@pytest.fixture
def rig() -> Iterator[tuple[GatedLookupAdapter, L2Tier, L1Manager]]:
    l1 = make_l1()
    adapter = GatedLookupAdapter()
    adapter.start()
    tier = L2Tier(
        [adapter], l1, StoreEverywhere(), FirstHolder(), max_in_flight=1, timeout_s=TIER_TIMEOUT_S
    )
    try:
        yield adapter, tier, l1
    finally:
        adapter.gate.set()
        adapter.close()
        l1.close()


def _pins(adapter: L2AdapterV1) -> int:
    return int(adapter.status()["pinned_keys"])


def test_a_hung_lookup_ends_at_the_deadline_and_its_late_pins_are_released(
    rig: tuple[GatedLookupAdapter, L2Tier, L1Manager],
) -> None:
    adapter, tier, l1 = rig
    stored = _keys(2)
    adapter.gate.set()
    assert adapter.submit_store(stored, [b"k" * 4096] * 2).result(WAIT_S) == [True, True]
    adapter.gate.clear()

    started = time.monotonic()
    result = tier.prefetch([[k] for k in stored], 4096, 1, deadline=started + 0.3)
    took = time.monotonic() - started
    assert result.chunks == 0
    assert 0.25 <= took < 2.0 < TIER_TIMEOUT_S
    assert tier.stats.adapter_timeouts == 1
    assert l1.usage().staged_objects == 0  # nothing was reserved for a lookup that never came

    adapter.gate.set()  # the backend answers late: it pins both keys, then they are released
    deadline = time.monotonic() + WAIT_S
    while _pins(adapter) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _pins(adapter) == 0
    assert adapter.delete(stored) == 2  # unpinned: deletable


def test_no_in_flight_slot_before_the_deadline_is_a_counted_miss(
    rig: tuple[GatedLookupAdapter, L2Tier, L1Manager],
) -> None:
    adapter, tier, _ = rig
    stored = _keys(1, seed=1)
    adapter.gate.set()
    assert adapter.submit_store(stored, [b"k" * 4096]).result(WAIT_S) == [True]
    adapter.gate.clear()
    # The only slot is taken by a prefetch stuck in its lookup (no deadline: the tier's bound).
    holder = threading.Thread(target=lambda: tier.prefetch([stored], 4096, 1))
    holder.start()
    while tier.prefetches_in_flight() == 0:
        time.sleep(0.01)
    started = time.monotonic()
    assert tier.prefetch([stored], 4096, 1, deadline=started + 0.2).chunks == 0
    assert time.monotonic() - started < 2.0
    assert tier.stats.prefetch_deadline_misses == 1
    adapter.gate.set()
    holder.join(WAIT_S)
    # With the slot free again, a prefetch within its deadline loads the chunk.
    assert tier.prefetch([stored], 4096, 1, deadline=time.monotonic() + 5).chunks == 1
