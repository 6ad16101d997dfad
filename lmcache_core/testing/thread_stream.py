"""FAKE device stream for CPU tests: a real thread that runs work in order.

:class:`ThreadStream` stands in for a CUDA stream (named a fake on purpose: no GPU runs
here). Like a stream it runs what is enqueued in order and asynchronously to the caller;
``wait_worker_event`` makes the following work wait for a "worker event" the test fires,
``record`` returns an event that completes when the thread reaches it, carrying the error
of any work enqueued since the previous record (CUDA reports failed work at the next sync).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable

__all__ = ["ThreadEvent", "ThreadStream", "WorkerEvents"]

_ids = itertools.count(1)


class ThreadEvent:
    """A completion event of a :class:`ThreadStream`."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._handle = f"thread-event-{next(_ids)}".encode()

    def ipc_handle(self) -> bytes:
        """A unique handle (bytes, like a CUDA event's)."""
        return self._handle

    def wait(self, timeout: float | None) -> bool:
        """Block until the stream reached the event (True) or ``timeout`` passed."""
        return self._done.wait(timeout)

    def error(self) -> BaseException | None:
        """The error of the work before the event, if any."""
        return self._error

    def complete(self, error: BaseException | None) -> None:
        """Called by the stream's thread when it reaches the event."""
        self._error = error
        self._done.set()


class WorkerEvents:
    """The "worker side" events a test fires (by handle)."""

    def __init__(self) -> None:
        self._events: dict[bytes, threading.Event] = {}

    def make(self, fired: bool = False) -> bytes:
        """A new worker event's handle (already fired with ``fired``)."""
        handle = f"worker-event-{next(_ids)}".encode()
        self._events[handle] = threading.Event()
        if fired:
            self._events[handle].set()
        return handle

    def fire(self, handle: bytes) -> None:
        """The worker's work before the event is done."""
        self._events[handle].set()

    def get(self, handle: bytes) -> threading.Event:
        """The event of ``handle``; ``ValueError`` for an unknown one (as CUDA refuses it)."""
        try:
            return self._events[handle]
        except KeyError:
            raise ValueError(f"unknown worker event handle {handle!r}") from None


class ThreadStream:
    """FAKE stream: work runs in order on one real thread (see the module docstring)."""

    def __init__(self, worker_events: WorkerEvents) -> None:
        self._worker_events = worker_events
        self._queue: queue.SimpleQueue[
            tuple[str, threading.Event | Callable[[], None] | ThreadEvent] | None
        ] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self.broken = False
        """Set to make ``submit`` raise (a stream that cannot take work)."""
        self._thread = threading.Thread(target=self._run, name="fake-thread-stream", daemon=True)
        self._thread.start()

    def wait_worker_event(self, handle: bytes) -> None:
        """Following work waits for the worker event ``handle``."""
        self._queue.put(("wait", self._worker_events.get(handle)))

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the thread, after what is queued."""
        if self.broken:
            raise RuntimeError("fake stream is broken")
        self._queue.put(("work", work))

    def record(self) -> ThreadEvent:
        """An event reached after what is queued."""
        event = ThreadEvent()
        self._queue.put(("record", event))
        return event

    def close(self) -> None:
        """Stop the thread after what is queued."""
        self._queue.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            _, value = item
            if isinstance(value, threading.Event):
                value.wait()
            elif isinstance(value, ThreadEvent):
                value.complete(self._error)
                self._error = None
            else:
                try:
                    value()
                except Exception as exc:  # noqa: BLE001 - reported at the next record
                    self._error = exc
