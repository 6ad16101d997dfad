"""One background thread per job: start, stop in time, health, rate-limited errors.

Every periodic or queue-driven job of the server (L1 upkeep, session expiry,
the worker reaper, the L2 store controller, the event bus drain) runs in a
:class:`BackgroundLoop`. The loop waits on a *trigger* (a timer a producer can
cut short, or a queue of work), then runs one *tick*. A tick that raises is
counted and logged, at most once per ``error_log_interval_s`` (with the count),
and the loop goes on: a bad plugin must not stop expiry. Anything that still
ends the thread (a tick raising :class:`StopLoop`, or a ``BaseException``) is
recorded and shown by :meth:`BackgroundLoop.health`; nothing dies silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from lmcache_core.lifecycle import Health

logger = logging.getLogger("lmcache.server")

T = TypeVar("T")


class StopLoop(Exception):
    """Raised by a tick to end its loop normally (what it keeps is gone)."""


class Trigger(Protocol):
    """What a loop waits on between ticks."""

    def wait_for_work(self, timeout: float) -> None:
        """Return when there is work, when woken, or after ``timeout`` seconds."""

    def wake(self) -> None:
        """Make a current or the next :meth:`wait_for_work` return at once."""

    def pending(self) -> bool:
        """Whether work is waiting (a stopping loop first finishes it)."""


class Wakeup(threading.Event):
    """A timer trigger that producers cut short with :meth:`wake` (or ``set``).

    It is a :class:`threading.Event`, so a producer's wake-up costs exactly one
    ``Event.set`` (the event bus calls it on its publish path).
    """

    wake = threading.Event.set

    def wait_for_work(self, timeout: float) -> None:
        """Sleep until woken or for ``timeout`` seconds, then re-arm."""
        self.wait(timeout)
        self.clear()

    def pending(self) -> bool:
        """Never: a timer holds no work of its own."""
        return False


class WorkQueue(Generic[T]):
    """A bounded FIFO of work items that one loop consumes, one per tick.

    Producers never block: :meth:`put_nowait` refuses an item when full.

    Args:
        maxsize: Items held at most.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, not {maxsize}")
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._woken = False

    def put_nowait(self, item: T) -> bool:
        """Queue ``item``; returns False (and drops it) when the queue is full."""
        with self._ready:
            if len(self._items) >= self.maxsize:
                return False
            self._items.append(item)
            self._ready.notify()
        return True

    def get_nowait(self) -> T | None:
        """The oldest item, or None when the queue is empty."""
        with self._ready:
            return self._items.popleft() if self._items else None

    def qsize(self) -> int:
        """Items waiting."""
        return len(self._items)

    def wait_for_work(self, timeout: float) -> None:
        """Return once an item waits, when woken, or after ``timeout`` seconds."""
        with self._ready:
            if not self._items and not self._woken:
                self._ready.wait(timeout)
            self._woken = False

    def wake(self) -> None:
        """Interrupt the consumer's wait (used by a stop)."""
        with self._ready:
            self._woken = True
            self._ready.notify_all()

    def pending(self) -> bool:
        """Whether items wait."""
        return bool(self._items)


class BackgroundLoop:
    """A daemon thread that runs ``tick`` after each wait on its trigger.

    Args:
        name: What the loop does, in log lines and health ("L1 controller round").
        tick: One round of work. It may raise: the error is counted and logged
            (rate limited) and the loop goes on; :class:`StopLoop` ends the loop.
        interval_s: The longest wait between ticks.
        thread_name: The thread's name (``lmcache-...``; tests and operators see it).
        trigger: What to wait on; by default a :class:`Wakeup` timer. A stopping
            loop keeps ticking while the trigger has :meth:`Trigger.pending` work.
        error_log_interval_s: At most one error log per this many seconds.
        log: Where errors are logged.
        clock: Monotonic seconds, for the rate limit (tests fake it).

    Raises:
        ValueError: ``interval_s`` or ``error_log_interval_s`` is not positive.
    """

    def __init__(
        self,
        name: str,
        tick: Callable[[], object],
        *,
        interval_s: float,
        thread_name: str,
        trigger: Trigger | None = None,
        error_log_interval_s: float = 10.0,
        log: logging.Logger = logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0 or error_log_interval_s <= 0:
            raise ValueError(
                f"interval_s and error_log_interval_s must be > 0, not {interval_s}, "
                f"{error_log_interval_s}"
            )
        self.name = name
        self.interval_s = interval_s
        self.thread_name = thread_name
        self.trigger: Trigger = trigger if trigger is not None else Wakeup()
        self.error_log_interval_s = error_log_interval_s
        self.ticks = 0
        self.errors = 0
        self.last_error: str | None = None
        """``repr`` of the latest exception a tick raised, or of what ended the thread."""
        self.crashed = False
        """Whether a ``BaseException`` (not an :class:`Exception`) ended the thread."""
        self._tick = tick
        self._log = log
        self._clock = clock
        self._last_log = -float("inf")
        self._unlogged = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifetime --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called and :meth:`stop` not since."""
        return self._thread is not None and not self._stopping.is_set()

    def start(self) -> None:
        """Start the thread; after a :meth:`stop`, a fresh one.

        Raises:
            RuntimeError: It runs already (or an earlier thread has not ended yet).
        """
        if self.started or self.running:
            raise RuntimeError(f"{self.thread_name} was already started")
        # A fresh event per thread: a thread that outlived its stop's timeout
        # still sees its own stop, never the next start's "go on".
        self._stopping = stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(stopping,), name=self.thread_name, daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        """Run the next tick now instead of after the interval."""
        self.trigger.wake()

    def stop(self, timeout: float) -> bool:
        """Ask the thread to stop (after the trigger's pending work) and wait for it.

        Returns:
            Whether it ended within ``timeout`` seconds (also true if never started).
        """
        self._stopping.set()
        thread = self._thread
        if thread is None:
            return True
        self.trigger.wake()
        if thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def health(self, detail: str = "", stopped: str = "") -> Health:
        """Healthy while the thread runs; otherwise why not (a crash names its error).

        Args:
            detail: The owner's own words for a running loop.
            stopped: The owner's own words for a loop that does not run.
        """
        if self.running:
            return Health(True, detail or f"{self.ticks} ticks, {self.errors} errors")
        why = stopped or f"{self.thread_name} {'stopped' if self._thread else 'not started'}"
        if self.crashed:
            why = f"{why}; crashed: {self.last_error}"
        return Health(False, why)

    # -- the thread -------------------------------------------------------------------

    def _run(self, stopping: threading.Event) -> None:
        trigger = self.trigger
        try:
            while not (stopping.is_set() and not trigger.pending()):
                trigger.wait_for_work(self.interval_s)
                if stopping.is_set() and not trigger.pending():
                    return
                try:
                    self._tick()
                except StopLoop:
                    return
                except Exception as exc:  # noqa: BLE001 - the thread must survive a bad plugin
                    self._failed(exc)
                self.ticks += 1
        except BaseException as exc:  # noqa: BLE001 - a dying thread says so, loudly
            self.crashed = True
            self.last_error = repr(exc)
            self._log.critical("%s thread died", self.thread_name, exc_info=True)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = repr(exc)
        now = self._clock()
        if now - self._last_log < self.error_log_interval_s:
            self._unlogged += 1
            return
        self._log.exception(
            "%s failed (%d so far, %d not logged since the last report)",
            self.name,
            self.errors,
            self._unlogged,
        )
        self._last_log = now
        self._unlogged = 0
