"""Lazy pinning of L1: the growth state machine and the L1 it feeds, with a FAKE registrar.

The FAKE (:class:`lmcache_core.testing.fake_registrar.FakeHostRegistrar`) records the
register calls a CUDA host would make; the real ``cudaHostRegister`` path is checked in
``tests/gpu/test_lazy_pinning.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack

import pytest
import torch

from lmcache_core.errors import StartupError
from lmcache_core.server.data_path import arena_plan, build_pinning
from lmcache_core.server.data_path_components import L1Component
from lmcache_core.storage.allocator import Allocator
from lmcache_core.storage.arena import Arena
from lmcache_core.storage.errors import L1FullError
from lmcache_core.storage.eviction import EvictionPolicy
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.pinning import CudaHostRegistrar, LazyPinner, PinnedRange, PinningError
from lmcache_core.testing.fake_registrar import FakeHostRegistrar
from tests.storage.doubles import NeverEvictDouble, key

KIB = 1 << 10
MIB = 1 << 20
BASE = 0x7F00_0000_0000


def pinner(
    registrar: FakeHostRegistrar,
    grown: list[int],
    target: int = 10 * MIB,
    init: int = 3 * MIB,
    step: int = 2 * MIB,
) -> LazyPinner:
    return LazyPinner(
        BASE, target, init_bytes=init, step_bytes=step, registrar=registrar, on_grow=grown.append
    )


def test_initial_range_then_bounded_steps_to_the_target() -> None:
    registrar, grown = FakeHostRegistrar(), []
    lazy = pinner(registrar, grown)
    assert lazy.state == "idle" and lazy.pinned_bytes == 0
    assert lazy.pin_initial() == 3 * MIB
    assert registrar.registered == [(BASE, 3 * MIB)] and grown == [3 * MIB]
    assert lazy.state == "growing"
    steps = 0
    while lazy.step():
        steps += 1
    assert lazy.state == "done" and lazy.pinned_bytes == 10 * MIB
    # 3 MiB, then 2 + 2 + 2 + the 1 MiB tail: every registration within the bound.
    assert [n for _, n in registrar.registered] == [3 * MIB, 2 * MIB, 2 * MIB, 2 * MIB, MIB]
    assert [p - BASE for p, _ in registrar.registered] == [0, 3 * MIB, 5 * MIB, 7 * MIB, 9 * MIB]
    assert grown == [3 * MIB, 5 * MIB, 7 * MIB, 9 * MIB, 10 * MIB]
    assert steps == 3  # the fourth step() pinned the tail and returned False
    assert lazy.ranges[-1] == PinnedRange(9 * MIB, MIB)
    assert not lazy.step() and registrar.calls == 5  # done: nothing more registered
    status = lazy.status()
    assert status["pinned_bytes"] == status["target_bytes"] == 10 * MIB
    assert status["registrar"] == "fake" and status["registrations"] == 5
    assert status["error"] is None


def test_eager_pins_everything_in_one_call_and_never_steps() -> None:
    registrar, grown = FakeHostRegistrar(), []
    lazy = pinner(registrar, grown, init=64 * MIB)  # init >= target: eager
    assert lazy.pin_initial() == 10 * MIB
    assert lazy.state == "done" and registrar.registered == [(BASE, 10 * MIB)]
    assert not lazy.step()


def test_sizes_round_up_to_the_unit() -> None:
    registrar, grown = FakeHostRegistrar(), []
    lazy = LazyPinner(
        BASE,
        10 * MIB,
        init_bytes=MIB + 1,
        step_bytes=3 * KIB,
        registrar=registrar,
        on_grow=grown.append,
        unit=64 * KIB,
    )
    lazy.pin_initial()
    lazy.step()
    assert registrar.registered == [(BASE, MIB + 64 * KIB), (BASE + MIB + 64 * KIB, 64 * KIB)]


def test_a_failed_step_stays_at_what_is_pinned_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registrar, grown = FakeHostRegistrar(fail_at=2), []
    lazy = pinner(registrar, grown)
    lazy.pin_initial()
    with caplog.at_level(logging.WARNING, logger="lmcache.storage"):
        assert lazy.step() is True  # call 1 succeeds
        assert lazy.step() is False  # call 2 fails
        assert lazy.step() is False  # and growth is over: no retry, no second warning
    assert lazy.state == "failed" and lazy.pinned_bytes == 5 * MIB
    assert registrar.calls == 3 and grown == [3 * MIB, 5 * MIB]
    warnings = [r for r in caplog.records if "lazy L1 pinning stopped" in r.getMessage()]
    assert len(warnings) == 1 and "5242880 of 10485760" in warnings[0].getMessage()
    assert "FAKE registration 2 refused" in str(lazy.status()["error"])
    lazy.close()
    assert registrar.unregistered == [BASE + 3 * MIB, BASE]  # what was pinned, in reverse
    assert registrar.pinned_bytes == 0 and lazy.state == "closed"


def test_a_failed_initial_registration_raises() -> None:
    registrar = FakeHostRegistrar(fail_at=0)
    lazy = pinner(registrar, [])
    with pytest.raises(RuntimeError, match="FAKE registration 0 refused"):
        lazy.pin_initial()
    assert lazy.pinned_bytes == 0


def test_background_thread_grows_to_the_target() -> None:
    registrar, grown = FakeHostRegistrar(), []
    lazy = pinner(registrar, grown, target=64 * MIB, init=MIB, step=MIB)
    lazy.pin_initial()
    lazy.start()
    deadline = time.monotonic() + 10
    while lazy.state == "growing" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lazy.state == "done" and lazy.pinned_bytes == 64 * MIB
    assert len(registrar.registered) == 64 and grown[-1] == 64 * MIB
    lazy.close()
    lazy.close()  # idempotent
    assert len(registrar.unregistered) == 64


def test_close_waits_for_the_step_in_flight_then_unregisters_everything() -> None:
    gate = threading.Event()
    registrar, grown = FakeHostRegistrar(gate=gate), []
    lazy = pinner(registrar, grown)
    gate.set()
    lazy.pin_initial()
    gate.clear()  # the background step now blocks inside register()
    registrar.entered.clear()
    lazy.start()
    assert registrar.entered.wait(5)
    closer = threading.Thread(target=lazy.close)
    closer.start()
    time.sleep(0.05)
    assert closer.is_alive()  # close() waits for the registration in flight
    gate.set()
    closer.join(5)
    assert not closer.is_alive()
    # The step that was in flight completed and was unregistered with the rest; no more.
    assert registrar.calls == 2 and registrar.pinned_bytes == 0
    assert lazy.state == "closed" and not lazy.step()


# -- the L1 fed by the pinner --------------------------------------------------------------


def pinned_l1(
    registrar: FakeHostRegistrar, cleanup: ExitStack, capacity: int = 8 * MIB
) -> L1Manager:
    arena = cleanup.enter_context(Arena(capacity + 4 * KIB, kind="anonymous"))
    policy: EvictionPolicy = NeverEvictDouble()
    l1 = L1Manager(
        arena=arena,
        capacity_bytes=capacity,
        init_bytes=0,
        align_bytes=4 * KIB,
        write_ttl_s=60,
        read_ttl_s=60,
        policy=policy,
        trigger_watermark=1.0,
        eviction_ratio=0.0,
    )
    cleanup.callback(l1.close)
    return l1


def test_l1_allocates_only_what_is_pinned_and_never_across_a_boundary() -> None:
    registrar = FakeHostRegistrar()
    with ExitStack() as cleanup:
        l1 = pinned_l1(registrar, cleanup)
        lazy = build_pinning(l1, 2 * MIB, registrar, cleanup)
        lazy.step_bytes = 2 * MIB
        assert l1.usage().limit_bytes == 2 * MIB
        # 1.5 MiB objects: one fits the first range; a second does not, and the limit
        # does not grow into unpinned memory on demand.
        first = l1.reserve([key("a")], 3 * MIB // 2)
        assert first[0] is not None
        with pytest.raises(L1FullError):
            l1.reserve([key("b")], 3 * MIB // 2)
        assert l1.usage().limit_bytes == 2 * MIB
        while lazy.step():
            pass
        assert lazy.state == "done" and l1.usage().limit_bytes == 8 * MIB
        placed = [first[0]]
        for name in ("b", "c", "d"):
            reservation = l1.reserve([key(name)], 3 * MIB // 2)[0]
            assert reservation is not None
            placed.append(reservation)
        with pytest.raises(L1FullError):  # about 2 MiB free, but in four pieces of 0.5 MiB
            l1.reserve([key("e")], 3 * MIB // 2)
        base = l1.arena.data_ptr() + l1.objects_base
        ranges = [(p - base, p - base + n) for p, n in registrar.registered]
        assert ranges == [(0, 2 * MIB), (2 * MIB, 4 * MIB), (4 * MIB, 6 * MIB), (6 * MIB, 8 * MIB)]
        # Four ranges of 2 MiB, one guard unit at each of three boundaries: four 1.5 MiB
        # objects fit, one per range, and none spans two registrations.
        assert len(placed) == 4
        for reservation in placed:
            start = reservation.offset - l1.objects_base
            end = start + reservation.nbytes
            assert any(lo <= start and end <= hi for lo, hi in ranges), (start, end)


def test_a_failed_initial_pin_is_a_startup_error() -> None:
    registrar = FakeHostRegistrar(fail_at=0)
    with ExitStack() as cleanup:
        l1 = pinned_l1(registrar, cleanup)
        with pytest.raises(StartupError, match=r"cannot pin 2097152 bytes of L1.*ulimit -l"):
            build_pinning(l1, 2 * MIB, registrar, cleanup)


def test_allocator_guard_keeps_the_boundary_unit_out_of_use() -> None:
    allocator = Allocator(8 * KIB * 4, init_size=8 * KIB, align_bytes=4 * KIB)
    assert allocator.allocate(4 * KIB) == 0
    allocator.grow_to(16 * KIB, guard=True)
    assert allocator.reserved_bytes == 4 * KIB
    assert allocator.free_bytes == 16 * KIB - 4 * KIB - 4 * KIB
    assert allocator.free_extents() == [(4 * KIB, 4 * KIB), (12 * KIB, 4 * KIB)]
    allocator.free(0)
    # Frees coalesce up to the guard, never across it.
    assert allocator.free_extents() == [(0, 8 * KIB), (12 * KIB, 4 * KIB)]
    assert allocator.allocate(12 * KIB) is None
    assert allocator.allocate_batch([4 * KIB] * 3) == [0, 4 * KIB, 12 * KIB]


def test_l1_component_grows_in_the_background_and_unpins_at_stop() -> None:
    registrar = FakeHostRegistrar()
    with ExitStack() as cleanup:
        l1 = pinned_l1(registrar, cleanup, capacity=64 * MIB)
        lazy = build_pinning(l1, 4 * MIB, registrar, cleanup)
        lazy.step_bytes = 4 * MIB
        l1.pinning = lazy
        component = L1Component(l1)
        assert l1.pinning_status()["pinned_bytes"] == 4 * MIB
        component.start()
        try:
            deadline = time.monotonic() + 10
            while lazy.state == "growing" and time.monotonic() < deadline:
                time.sleep(0.01)
            status = l1.pinning_status()
            assert status["state"] == "done" and status["pinned_bytes"] == 64 * MIB
            assert status["registrations"] == 16 and l1.usage().limit_bytes == 64 * MIB
        finally:
            component.stop(5.0)
        assert registrar.pinned_bytes == 0 and len(registrar.unregistered) == 16
        assert l1.closed and lazy.state == "closed"


def test_a_failure_on_the_background_thread_leaves_l1_serving_the_pinned_part(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registrar = FakeHostRegistrar(fail_at=3)
    with ExitStack() as cleanup, caplog.at_level(logging.WARNING, logger="lmcache.storage"):
        l1 = pinned_l1(registrar, cleanup)
        lazy = build_pinning(l1, MIB, registrar, cleanup)
        lazy.step_bytes = MIB
        lazy.start()
        thread = lazy._thread
        assert thread is not None
        thread.join(10)
        assert not thread.is_alive() and lazy.state == "failed"
        assert lazy.pinned_bytes == 3 * MIB and l1.usage().limit_bytes == 3 * MIB
        assert l1.reserve([key("x")], MIB // 2)[0] is not None  # still serving
        lazy.close()
    assert registrar.calls == 4  # no retry after the failure
    assert sum("lazy L1 pinning stopped" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("shm_name", "cuda", "plan"),
    [
        (None, False, ("shm", None)),
        ("", False, ("anonymous", None)),
        ("pool", False, ("shm", "pool")),
        (None, True, ("anonymous", None)),  # pinned by the pinner, no shared pool
        ("", True, ("anonymous", None)),
        ("pool", True, ("shm", "pool")),  # the shared pool, pinned too
    ],
)
def test_arena_plan(shm_name: str | None, cuda: bool, plan: tuple[str, str | None]) -> None:
    assert arena_plan(shm_name, cuda) == plan


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only refusal")
def test_the_cuda_registrar_refuses_without_cuda() -> None:
    with pytest.raises(PinningError, match="torch sees no CUDA device"):
        CudaHostRegistrar()
