"""The L1 controller thread, and the manager under concurrent use."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.storage.errors import L1FullError, ReservationExpired
from lmcache_core.storage.eviction import EvictionSettings
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import L1Controller, L1Manager
from tests.storage.doubles import KIB, MIB, FifoPolicyDouble, check_l1, chunks, key, make_l1

OBJ = 64 * KIB


def wait_for(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return False


def fill(l1: L1Manager, keys: list[ObjectKey]) -> None:
    reservations = [r for r in l1.reserve(keys, OBJ) if r is not None]
    l1.commit(reservations)


def test_controller_evicts_above_the_watermark_and_stops_promptly() -> None:
    l1 = make_l1(clock=time.monotonic, watermark=0.5, ratio=0.25)
    fill(l1, chunks("a", 14))
    controller = L1Controller(l1, interval_s=0.01)
    controller.start()
    try:
        assert wait_for(lambda: l1.usage().used_bytes <= 0.5 * MIB)
        assert controller.evicted_bytes >= 6 * OBJ
        assert controller.running
        with pytest.raises(RuntimeError):
            controller.start()
    finally:
        started = time.monotonic()
        assert controller.stop(timeout=2)
        assert time.monotonic() - started < 1
    assert not controller.running


def test_controller_expires_locks_and_reservations() -> None:
    l1 = make_l1(clock=time.monotonic, read_ttl=0.05, write_ttl=0.05)
    fill(l1, [key("a")])
    l1.lock_for_read([key("a")])
    l1.reserve([key("s")], OBJ)
    controller = L1Controller(l1, interval_s=0.01)
    controller.start()
    try:
        assert wait_for(lambda: l1.usage().staged_objects == 0 and not l1.usage().locked_objects)
    finally:
        assert controller.stop()


class ExplodingPolicy(FifoPolicyDouble):
    def candidates(self) -> Iterator[ObjectKey]:
        raise RuntimeError("policy bug")


def test_controller_survives_a_failing_policy() -> None:
    l1 = make_l1(clock=time.monotonic, policy=ExplodingPolicy(), watermark=0.1)
    fill(l1, chunks("a", 4))
    controller = L1Controller(l1, interval_s=0.005)
    controller.start()
    try:
        assert wait_for(lambda: controller.errors >= 3)
        assert controller.running
    finally:
        assert controller.stop()


def test_controller_ends_when_the_manager_closes() -> None:
    l1 = make_l1()
    controller = L1Controller(l1, interval_s=0.005)
    controller.start()
    l1.close()
    assert wait_for(lambda: not controller.running)
    assert controller.stop()
    assert L1Controller(make_l1()).stop()  # never started
    with pytest.raises(ValueError):
        L1Controller(l1, interval_s=0)


def pattern(k: ObjectKey) -> int:
    return (hash(k) % 250) + 1


def test_concurrent_use_keeps_every_invariant() -> None:
    settings = EvictionSettings(trigger_watermark=0.7, eviction_ratio=0.1, capacity_bytes=MIB)
    policy = PluginRegistry(strict=True).build(PluginKind.EVICTION_POLICY, "LRU", settings)
    l1 = make_l1(clock=time.monotonic, policy=policy, init=MIB // 4, watermark=0.7, ratio=0.1)
    universe = [key(f"k{i}") for i in range(64)]
    errors: list[BaseException] = []
    stop = threading.Event()
    counts = {"stored": 0, "read": 0, "full": 0}

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            batch = rng.sample(universe, rng.randint(1, 6))
            size = rng.choice([OBJ, OBJ // 2, 3 * OBJ // 2])
            try:
                reservations = [r for r in l1.reserve(batch, size) if r is not None]
            except L1FullError:
                counts["full"] += 1
                continue
            for reservation in reservations:  # the copy happens outside the lock
                l1.buffer(reservation).fill_(pattern(reservation.key))
            if rng.random() < 0.1:
                l1.abort(reservations)
                continue
            l1.commit(reservations)
            counts["stored"] += len(reservations)

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            batch = rng.sample(universe, rng.randint(1, 8))
            readers = rng.randint(1, 2)
            found = l1.lock_for_read(batch, readers=readers)
            for k, hit in zip(batch, found, strict=True):
                if hit:
                    view = l1.read_view(k)  # locked: it cannot be freed or reused
                    assert int(view.min()) == int(view.max()) == pattern(k)
                    counts["read"] += 1
            hits = [k for k, hit in zip(batch, found, strict=True) if hit]
            for k, view in zip(hits, l1.read_views(hits), strict=True):
                assert int(view[0]) == int(view[-1]) == pattern(k)
            l1.unlock([k for k, hit in zip(batch, found, strict=True) if hit], readers=readers)

    def janitor(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            action = rng.random()
            if action < 0.5:
                l1.delete(rng.sample(universe, 3))
            elif action < 0.7:
                l1.mark_temporary(rng.sample(universe, 2))
            elif action < 0.9:
                l1.maybe_evict()
            else:
                l1.touch(rng.sample(universe, 5))
            used = l1.usage().used_bytes
            assert used <= l1.capacity_bytes

    def guarded(target: object, seed: int) -> None:
        try:
            target(seed)  # type: ignore[operator]
        except (AssertionError, ReservationExpired, Exception) as exc:  # noqa: BLE001
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=guarded, args=(fn, seed))
        for seed, fn in enumerate([writer, writer, writer, reader, reader, reader, janitor])
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not errors, errors
    assert counts["stored"] > 100 and counts["read"] > 100
    check_l1(l1)
    usage = l1.usage()
    assert usage.locked_objects == 0  # every reader released what it took
    assert usage.staged_objects == 0
