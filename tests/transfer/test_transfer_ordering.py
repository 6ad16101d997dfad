"""Commit-after-copy, lock release after completion, failures: on a FAKE thread stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from lmcache_core.testing.thread_stream import ThreadStream, WorkerEvents
from lmcache_core.transfer.transfer_ordering import (
    DeferredCompletions,
    OrderedTransfers,
    TransferSteps,
)


@dataclass
class Recorder:
    """What a transfer did, in order, and the failures reported."""

    log: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, what: str) -> None:
        with self.lock:
            self.log.append(what)

    def steps(
        self, op: str, gate: threading.Event | None = None, fail: bool = False
    ) -> TransferSteps:
        def copy() -> None:
            if gate is not None:
                assert gate.wait(10)
            if fail:
                raise RuntimeError("DMA fault")
            self.note("copy")

        return TransferSteps(
            op=op,
            copy=copy,
            commit=lambda: self.note("commit"),
            abort=lambda: self.note("abort"),
            release=lambda: self.note("release"),
        )


@pytest.fixture
def rig() -> Iterator[
    tuple[OrderedTransfers, DeferredCompletions, ThreadStream, WorkerEvents, Recorder]
]:
    recorder = Recorder()

    def on_failure(op: str, reason: str) -> None:
        recorder.failures.append((op, reason))

    deferred = DeferredCompletions(on_failure)
    events = WorkerEvents()
    stream = ThreadStream(events)
    yield OrderedTransfers(deferred, on_failure), deferred, stream, events, recorder
    stream.close()
    deferred.close(5)


def test_store_commits_only_after_the_copy_completed(rig) -> None:  # type: ignore[no-untyped-def]
    transfers, _, stream, events, rec = rig
    worker = events.make()
    result: list[object] = []
    runner = threading.Thread(
        target=lambda: result.append(
            transfers.run(stream, worker, rec.steps("store"), time.monotonic() + 10)
        )
    )
    runner.start()
    time.sleep(0.2)  # the stream waits on the worker's event: nothing may have happened
    assert rec.log == [] and not result
    events.fire(worker)
    runner.join(10)
    (reply,) = result
    assert reply.ok is True and reply.event.startswith(b"thread-event-")  # type: ignore[attr-defined]
    assert rec.log == ["copy", "commit", "release"]
    assert rec.failures == []


def test_deadline_passing_mid_copy_keeps_locks_until_the_copy_completed(rig) -> None:  # type: ignore[no-untyped-def]
    transfers, deferred, stream, events, rec = rig
    gate = threading.Event()
    started = time.monotonic()
    reply = transfers.run(
        stream, events.make(fired=True), rec.steps("retrieve", gate), started + 0.1
    )
    assert time.monotonic() - started < 2
    # Answered ok=False with the event (the worker's stream will wait on it) ...
    assert reply.ok is False and reply.event
    # ... but the copy still runs: nothing released, nothing aborted yet.
    time.sleep(0.2)
    assert rec.log == [] and deferred.pending == 1
    gate.set()
    assert deferred.drain(10)
    assert rec.log == ["copy", "abort", "release"]
    assert rec.failures == [("retrieve", "its deadline passed while copying")]


def test_a_failed_copy_answers_false_and_is_reported(rig) -> None:  # type: ignore[no-untyped-def]
    transfers, _, stream, events, rec = rig
    reply = transfers.run(stream, events.make(fired=True), rec.steps("store", fail=True), None)
    assert reply.ok is False and reply.event
    assert rec.log == ["abort", "release"]
    (failure,) = rec.failures
    assert failure[0] == "store" and "DMA fault" in failure[1]


def test_a_stream_that_refuses_work_fails_once_and_releases(rig) -> None:  # type: ignore[no-untyped-def]
    transfers, deferred, stream, events, rec = rig
    stream.broken = True
    reply = transfers.run(stream, events.make(fired=True), rec.steps("retrieve"), None)
    assert reply.ok is False
    assert deferred.drain(10)
    assert rec.log == ["abort", "release"]
    assert "could not enqueue" in rec.failures[0][1]


def test_an_unknown_worker_event_fails_without_copying(rig) -> None:  # type: ignore[no-untyped-def]
    transfers, deferred, stream, _, rec = rig
    reply = transfers.run(stream, b"never-exported", rec.steps("store"), None)
    assert reply.ok is False
    assert deferred.drain(10)
    assert rec.log == ["abort", "release"]


def test_transfers_on_one_stream_stay_in_order(rig) -> None:  # type: ignore[no-untyped-def]
    transfers, deferred, stream, events, rec = rig
    gate = threading.Event()
    first = transfers.run(
        stream, events.make(fired=True), rec.steps("store", gate), time.monotonic() + 0.05
    )
    assert first.ok is False  # still copying at its deadline
    second_done: list[object] = []
    runner = threading.Thread(
        target=lambda: second_done.append(
            transfers.run(stream, events.make(fired=True), rec.steps("retrieve"), None)
        )
    )
    runner.start()
    time.sleep(0.2)
    assert not second_done  # queued behind the first copy
    gate.set()
    runner.join(10)
    assert deferred.drain(10)
    assert rec.log[0] == "copy" and rec.log.count("copy") == 2
    assert rec.log.index("commit") > rec.log.index("copy")


def test_a_stuck_copy_does_not_hold_up_other_deferred_transfers(rig) -> None:  # type: ignore[no-untyped-def]
    transfers, deferred, stream, events, rec = rig
    other = ThreadStream(events)
    try:
        stuck, late = threading.Event(), threading.Event()
        soon = time.monotonic() + 0.05
        assert not transfers.run(
            stream, events.make(fired=True), rec.steps("store", stuck), soon
        ).ok
        assert not transfers.run(
            other, events.make(fired=True), rec.steps("retrieve", late), soon
        ).ok
        assert deferred.pending == 2
        late.set()
        deadline = time.monotonic() + 10
        while deferred.pending != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert deferred.pending == 1  # the retrieve finished while the store is still stuck
        assert rec.log == ["copy", "abort", "release"]
        stuck.set()
        assert deferred.drain(10)
        assert rec.log.count("release") == 2
    finally:
        other.close()
