"""Worker liveness without a server: who is told to re-register, and how much is remembered."""

from __future__ import annotations

from lmcache_core.engine import liveness as liveness_module
from lmcache_core.engine.liveness import Liveness


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, reaped: list[int]) -> Liveness:
    return Liveness(30.0, 60.0, reaped.append, clock=clock)


def test_unknown_instance_is_told_once_then_registered_one_is_alive() -> None:
    live = make(Clock(), [])
    assert live.ping(None) is True  # the scheduler's probe is never an instance
    # Never registered here (the server restarted since): re-register, said once.
    assert live.ping(7) is False
    assert live.ping(7) is True
    live.registered(7)
    assert live.ping(7) is True
    live.unregistered(7)
    assert live.ping(7) is False  # gone again: told again


def test_reaped_instance_is_told_once_and_recovers() -> None:
    clock, reaped = Clock(), []
    live = make(clock, reaped)
    live.registered(3)
    assert live.ping(3) is True
    clock.now += 31
    assert live.reap() == [3] and reaped == [3]
    assert live.ping(3) is False
    assert live.ping(3) is True
    live.registered(3)
    clock.now += 29
    assert live.reap() == []  # alive while it pings within the timeout
    assert live.ping(3) is True


def test_pinging_idle_worker_is_never_reaped() -> None:
    clock, reaped = Clock(), []
    live = make(clock, reaped)
    live.registered(5)
    for _ in range(20):
        clock.now += 25
        assert live.ping(5) is True
        assert live.reap() == []
    assert reaped == []


def test_remembered_ids_are_bounded() -> None:
    live = make(Clock(), [])
    bound = liveness_module.MAX_REMEMBERED_UNKNOWN
    for instance in range(bound + 10):
        assert live.ping(instance) is False
    assert len(live._unknown) == bound  # the oldest ids are forgotten first
    assert live.ping(bound + 9) is True  # still remembered as told
    assert live.ping(0) is False  # forgotten: told again, which costs one False
