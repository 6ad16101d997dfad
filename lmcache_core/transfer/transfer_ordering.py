"""The ordering of a server-driven device transfer, independent of the device.

A ``lmcache_driven`` store or retrieve on a GPU runs on a stream, asynchronously:

1. the server stream waits on the worker's interprocess event (its forward pass wrote or
   will read the blocks);
2. the copies are enqueued on the stream;
3. an event is recorded after them; its IPC handle goes back in the reply, so the worker's
   stream waits for our copies before it touches the blocks.

What must hold whatever the timing, and what :class:`OrderedTransfers` enforces:

* a store's L1 objects are committed only **after** the copy completed, never before;
  a failed or unfinished copy aborts them (never visible);
* a retrieve's read locks are released only **after** the copy completed (an evicted object
  must not be overwritten while the DMA still reads it);
* the reply carries ``ok=True`` only when the copy completed without error by the deadline.
  When the deadline passes first, the reply says ``ok=False`` but still carries the event:
  the worker's stream waits on it, so our late writes can never land after the worker
  recomputed those blocks; the commit-or-abort and the lock release then happen on a
  background thread once the copy really completed (:class:`DeferredCompletions`);
* a failure answers ``ok=False``, is logged with its reason and reported through
  ``on_failure`` (the engine publishes it on the event bus).

The device is behind :class:`TransferStream`/:class:`CompletionEvent`: CUDA streams and events
on a GPU host (:mod:`~lmcache_core.transfer.cuda_stream`), a real thread in the CPU tests.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

__all__ = [
    "CompletionEvent",
    "DeferredCompletions",
    "DeviceTransferResult",
    "OrderedTransfers",
    "TransferSteps",
    "TransferStream",
]

logger = logging.getLogger("lmcache.transfer")


class CompletionEvent(Protocol):
    """An event recorded on a :class:`TransferStream` after some work."""

    def ipc_handle(self) -> bytes:
        """The handle another process imports to wait on this event."""
        ...

    def wait(self, timeout: float | None) -> bool:
        """Block until the work before the event completed (True) or ``timeout`` passed."""
        ...

    def error(self) -> BaseException | None:
        """After completion: the error the work before the event raised, if any."""
        ...


class TransferStream(Protocol):
    """An in-order queue of device work (a CUDA stream, or a thread in the CPU tests)."""

    def wait_worker_event(self, handle: bytes) -> None:
        """Make the work enqueued from now on wait for the worker's event ``handle``."""
        ...

    def submit(self, work: Callable[[], None]) -> None:
        """Enqueue ``work`` (it enqueues the copies; on a thread stream it does them)."""
        ...

    def record(self) -> CompletionEvent:
        """Record an event after everything enqueued so far."""
        ...


class DeviceTransferResult(NamedTuple):
    """The reply of a device store or retrieve: ``(event IPC handle, ok)`` on the wire."""

    event: bytes
    ok: bool


@dataclass(frozen=True)
class TransferSteps:
    """What one transfer does, in the order :class:`OrderedTransfers` calls it.

    Attributes:
        op: ``"store"`` or ``"retrieve"`` (for logs and failure reports).
        copy: Enqueues the copies on the current stream (called inside ``submit``).
        commit: After a completed, error-free copy (a store commits its L1 objects).
        abort: After a failed or unfinished copy (a store aborts its reservations).
        release: After the copy completed, whatever the outcome (a retrieve's read locks).
    """

    op: str
    copy: Callable[[], None]
    commit: Callable[[], None]
    abort: Callable[[], None]
    release: Callable[[], None]


def _finish(steps: TransferSteps, ok: bool) -> None:
    try:
        if ok:
            steps.commit()
        else:
            steps.abort()
    finally:
        steps.release()


class DeferredCompletions:
    """Finishes transfers whose reply went out before their copy completed.

    One background thread sweeps the deferred transfers, so one copy that never completes
    (a stream stuck on a dead worker's event) cannot hold up the others. A transfer is
    finished (aborted, released) only once its copy completed: its objects stay reserved and
    its locks held until then, because a late DMA into memory handed out again would corrupt
    it. One still waiting after :data:`STUCK_WARNING_S` is logged once. Bounded by the
    transfers in flight (every entry is a copy already enqueued on a stream).

    Args:
        on_failure: Called with ``(op, reason)`` for each copy that failed.
    """

    STUCK_WARNING_S = 60.0
    _SWEEP_S = 0.002

    def __init__(self, on_failure: Callable[[str, str], None]) -> None:
        self._on_failure = on_failure
        self._queue: queue.SimpleQueue[tuple[CompletionEvent, TransferSteps] | None] = (
            queue.SimpleQueue()
        )
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(
            target=self._run, name="lmcache-deferred-copies", daemon=True
        )
        self._thread.start()

    def defer(self, event: CompletionEvent, steps: TransferSteps) -> None:
        """Finish ``steps`` once ``event`` completed."""
        with self._lock:
            self._pending += 1
        self._queue.put((event, steps))

    @property
    def pending(self) -> int:
        """Transfers still waiting for their copy."""
        with self._lock:
            return self._pending

    def drain(self, timeout: float) -> bool:
        """Wait until nothing is pending (True) or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is pending (up to ``timeout``), then stop the thread."""
        self.drain(timeout)
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        waiting: list[tuple[CompletionEvent, TransferSteps, float, bool]] = []
        while True:
            try:
                # Block only when nothing is waiting; else pick up new entries between sweeps.
                item = self._queue.get(timeout=None if not waiting else self._SWEEP_S)
            except queue.Empty:
                pass
            else:
                if item is None:
                    return
                waiting.append((item[0], item[1], time.monotonic(), False))
            still: list[tuple[CompletionEvent, TransferSteps, float, bool]] = []
            for event, steps, since, warned in waiting:
                if event.wait(0):
                    self._finish_deferred(event, steps)
                    continue
                stuck = time.monotonic() - since > self.STUCK_WARNING_S
                if stuck and not warned:
                    logger.error(
                        "a %s copy has not completed after %.0f s; its L1 objects stay "
                        "reserved or locked until it does",
                        steps.op,
                        self.STUCK_WARNING_S,
                    )
                still.append((event, steps, since, warned or stuck))
            waiting = still

    def _finish_deferred(self, event: CompletionEvent, steps: TransferSteps) -> None:
        try:
            error = event.error()
            if error is not None:
                self._on_failure(steps.op, f"copy failed after the reply: {error}")
                logger.warning("%s copy failed after its reply: %s", steps.op, error)
            # The reply already said ok=False: never commit what the worker was told
            # failed, even when the copy did complete.
            _finish(steps, ok=False)
        except Exception:
            logger.exception("finishing a deferred %s failed", steps.op)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()


class OrderedTransfers:
    """Runs transfers on streams with the ordering rules of this module.

    Args:
        deferred: Where transfers go whose deadline passed before their copy completed.
        on_failure: Called with ``(op, reason)`` for each failed transfer.
    """

    def __init__(
        self, deferred: DeferredCompletions, on_failure: Callable[[str, str], None]
    ) -> None:
        self._deferred = deferred
        self._on_failure = on_failure

    def run(
        self,
        stream: TransferStream,
        worker_event: bytes,
        steps: TransferSteps,
        deadline: float | None,
    ) -> DeviceTransferResult:
        """Run one transfer and answer it.

        Args:
            stream: The client's stream.
            worker_event: The worker's event IPC handle (empty: nothing to wait for).
            steps: What to copy and what to do after.
            deadline: ``time.monotonic()`` by which the reply is due (None: no deadline).

        Returns:
            The completion event's handle (empty when nothing was enqueued) and ``ok``.
        """
        try:
            if worker_event:
                stream.wait_worker_event(worker_event)
            stream.submit(steps.copy)
        except Exception as exc:  # noqa: BLE001 - any error of the device layer fails the op
            self._fail(steps.op, f"could not enqueue the copy: {exc}")
            return self._after_enqueue_failure(stream, steps)
        try:
            event = stream.record()
        except Exception as exc:  # noqa: BLE001 - as above
            self._fail(steps.op, f"could not record the completion event: {exc}")
            _finish(steps, ok=False)
            return DeviceTransferResult(b"", False)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        handle = event.ipc_handle()
        if not event.wait(timeout):
            # The copy is still running: the reply goes now with ok=False and the event, the
            # objects stay reserved and the locks held until it completed.
            self._fail(steps.op, "its deadline passed while copying")
            self._deferred.defer(event, steps)
            return DeviceTransferResult(handle, False)
        error = event.error()
        if error is not None:
            self._fail(steps.op, f"the copy failed: {error}")
        _finish(steps, error is None)
        return DeviceTransferResult(handle, error is None)

    def _after_enqueue_failure(
        self, stream: TransferStream, steps: TransferSteps
    ) -> DeviceTransferResult:
        """Some copies may already be enqueued: abort and release only once they are done."""
        try:
            event = stream.record()
        except Exception:  # noqa: BLE001 - the stream is unusable: nothing more will run
            _finish(steps, ok=False)
            return DeviceTransferResult(b"", False)
        self._deferred.defer(event, steps)
        return DeviceTransferResult(event.ipc_handle(), False)

    def _fail(self, op: str, reason: str) -> None:
        logger.warning("%s answered ok=False: %s", op, reason)
        self._on_failure(op, reason)
