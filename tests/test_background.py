"""The shared background loop: start/stop, wake-ups, queues, errors and crashes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from lmcache_core.background import BackgroundLoop, StopLoop, Wakeup, WorkQueue


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return False


def test_ticks_periodically_and_stops_within_the_timeout() -> None:
    ticks: list[str] = []
    loop = BackgroundLoop(
        "test round",
        lambda: ticks.append(threading.current_thread().name),
        interval_s=0.005,
        thread_name="lmcache-test-loop",
    )
    assert not loop.health().ok and "not started" in loop.health().detail
    loop.start()
    try:
        assert wait_for(lambda: len(ticks) >= 3)
        assert set(ticks) == {"lmcache-test-loop"}
        assert loop.running and loop.health().ok
        with pytest.raises(RuntimeError):
            loop.start()
    finally:
        started = time.monotonic()
        assert loop.stop(timeout=2)
        assert time.monotonic() - started < 1
    assert not loop.running
    assert loop.health().ok is False and "stopped" in loop.health().detail
    loop.start()  # a stopped loop starts a fresh thread
    assert wait_for(lambda: len(ticks) >= 6)
    assert loop.stop(timeout=2)


def test_stop_without_start_and_a_long_interval_still_stops_at_once() -> None:
    loop = BackgroundLoop("idle", lambda: None, interval_s=3600, thread_name="lmcache-idle")
    assert loop.stop(1)  # never started
    loop.start()
    started = time.monotonic()
    assert loop.stop(timeout=2)
    assert time.monotonic() - started < 1  # the stop wakes the sleeping wait
    assert loop.ticks == 0  # and a stop is no tick
    with pytest.raises(ValueError):
        BackgroundLoop("bad", lambda: None, interval_s=0, thread_name="lmcache-bad")


def test_a_tick_that_blocks_past_the_timeout_is_reported() -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow() -> None:
        entered.set()
        release.wait(5)

    loop = BackgroundLoop("slow", slow, interval_s=0.001, thread_name="lmcache-slow")
    loop.start()
    assert entered.wait(5)
    assert not loop.stop(timeout=0.05)  # still inside its tick
    assert loop.running
    release.set()
    assert wait_for(lambda: not loop.running)


def test_wake_runs_the_next_tick_at_once() -> None:
    ticked = threading.Event()
    wakeup = Wakeup()
    loop = BackgroundLoop(
        "woken", ticked.set, interval_s=3600, thread_name="lmcache-woken", trigger=wakeup
    )
    loop.start()
    try:
        time.sleep(0.02)
        assert not ticked.is_set()
        wakeup.set()  # what a producer calls (the same as loop.wake())
        assert ticked.wait(2)
    finally:
        assert loop.stop(2)


def test_a_raising_tick_is_counted_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    log = logging.getLogger("lmcache.test.background")

    def fail() -> None:
        raise RuntimeError("policy bug")

    loop = BackgroundLoop(
        "test round",
        fail,
        interval_s=0.002,
        thread_name="lmcache-failing",
        error_log_interval_s=10.0,
        log=log,
        clock=lambda: now[0],
    )
    caplog.set_level(logging.ERROR, logger=log.name)
    loop.start()
    try:
        assert wait_for(lambda: loop.errors >= 5)
        assert loop.running and loop.health().ok  # it survives its errors
        assert loop.last_error == "RuntimeError('policy bug')"
        records = [r for r in caplog.records if r.name == log.name]
        assert len(records) == 1  # rate limited
        assert records[0].exc_info is not None  # with the traceback
        assert "test round failed (1 so far" in records[0].getMessage()
        seen = loop.errors
        now[0] += 10.0  # the interval passed: the next failure is logged, with the count
        assert wait_for(lambda: len([r for r in caplog.records if r.name == log.name]) == 2)
        second = [r for r in caplog.records if r.name == log.name][1].getMessage()
        errors = int(second.split("(")[1].split(" ")[0])
        suppressed = int(second.split(", ")[1].split(" ")[0])
        assert errors > seen and suppressed == errors - 2
    finally:
        assert loop.stop(2)


class Crash(BaseException):
    pass


def test_health_after_a_crash_names_the_error(caplog: pytest.LogCaptureFixture) -> None:
    def crash() -> None:
        raise Crash("out of luck")

    caplog.set_level(logging.CRITICAL, logger="lmcache.server")
    loop = BackgroundLoop("crashing", crash, interval_s=0.001, thread_name="lmcache-crash")
    loop.start()
    assert wait_for(lambda: not loop.running)
    health = loop.health()
    assert not health.ok
    assert "lmcache-crash stopped; crashed" in health.detail and "out of luck" in health.detail
    assert loop.crashed and loop.errors == 0
    assert any("lmcache-crash thread died" in r.getMessage() for r in caplog.records)
    assert loop.stop(1)


def test_stop_loop_ends_the_thread_quietly(caplog: pytest.LogCaptureFixture) -> None:
    calls = [0]

    def twice() -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise StopLoop

    loop = BackgroundLoop("finite", twice, interval_s=0.001, thread_name="lmcache-finite")
    loop.start()
    assert wait_for(lambda: not loop.running)
    assert calls == [2] and loop.errors == 0 and not loop.crashed
    assert not loop.health().ok
    assert not caplog.records


def test_a_work_queue_loop_finishes_queued_work_before_it_stops() -> None:
    work: WorkQueue[int] = WorkQueue(8)
    done: list[int] = []
    gate = threading.Event()

    def consume() -> None:
        gate.wait(5)
        item = work.get_nowait()
        if item is not None:
            done.append(item)

    loop = BackgroundLoop(
        "consumer", consume, interval_s=3600, thread_name="lmcache-consumer", trigger=work
    )
    loop.start()
    assert all(work.put_nowait(i) for i in range(8))
    assert not work.put_nowait(99)  # full: refused, never blocking
    stopper = threading.Thread(target=loop.stop, args=(5,))
    stopper.start()
    gate.set()
    stopper.join(5)
    assert done == list(range(8))  # the stop came after them: they were all handled
    assert not loop.running and work.qsize() == 0


def test_a_work_queue_wakes_its_consumer_per_item() -> None:
    work: WorkQueue[str] = WorkQueue(4)
    got: list[str] = []

    def take() -> None:
        item = work.get_nowait()
        if item is not None:
            got.append(item)

    loop = BackgroundLoop("taker", take, interval_s=3600, thread_name="lmcache-taker", trigger=work)
    loop.start()
    try:
        assert work.put_nowait("a")
        assert wait_for(lambda: got == ["a"], timeout=2)  # far sooner than the interval
        assert work.put_nowait("b")
        assert wait_for(lambda: got == ["a", "b"], timeout=2)
    finally:
        assert loop.stop(2)
    with pytest.raises(ValueError):
        WorkQueue(0)
