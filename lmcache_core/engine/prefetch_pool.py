"""The threads that run L2 prefetches after a lookup was acknowledged, as a component.

A lookup that misses part of its prefix in L1 answers at once and prefetches the
rest from L2 in the background. At most ``max_in_flight`` prefetches run at a
time (``--l2-prefetch-max-in-flight``); up to :data:`QUEUE_FACTOR` times as many
more wait in the pool's queue (FIFO), and :meth:`PrefetchPool.try_submit` refuses
beyond that, so a stalled L2 cannot pile up lookups without bound (the lookup then
answers its L1 hit, and its miss cause is ``prefetch_limit``). The
threads exist between :meth:`PrefetchPool.start` and :meth:`PrefetchPool.stop`,
so the server's lifecycle starts, probes and stops them like any other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lmcache_core.lifecycle import Health

QUEUE_FACTOR = 4
"""Prefetches that may wait per running one before :meth:`PrefetchPool.try_submit` refuses."""


class PrefetchPool:
    """A bounded thread pool for prefetch jobs.

    Args:
        max_in_flight: Prefetches that run at once.

    Raises:
        ValueError: ``max_in_flight`` < 1.
    """

    name = "prefetch"

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.max_pending = max_in_flight * (1 + QUEUE_FACTOR)
        self._pending = 0  # submitted through try_submit and not finished
        self.refused = 0
        self._executor: ThreadPoolExecutor | None = None
        self._stopped = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Create the pool (its threads start on the first jobs).

        Raises:
            RuntimeError: Started twice, or after :meth:`stop`.
        """
        with self._lock:
            if self._executor is not None or self._stopped:
                raise RuntimeError("the prefetch pool can be started once")
            self._executor = ThreadPoolExecutor(
                self.max_in_flight, thread_name_prefix="lmcache-prefetch"
            )

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        """Run ``job(*args)`` on a pool thread.

        Raises:
            RuntimeError: The pool is not running (before :meth:`start`, after :meth:`stop`).
        """
        executor = self._executor
        if executor is None or self._stopped:
            raise RuntimeError("the prefetch pool is not running")
        executor.submit(job, *args)

    def try_submit(self, job: Callable[..., Any], *args: Any) -> bool:
        """Like :meth:`submit`, unless :attr:`max_pending` jobs are running or waiting.

        Returns:
            Whether the job was queued (False: refused, and counted in :attr:`refused`).

        Raises:
            RuntimeError: The pool is not running.
        """
        with self._lock:
            if self._pending >= self.max_pending:
                self.refused += 1
                return False
            self._pending += 1
        try:
            self.submit(self._counted, job, *args)
        except BaseException:
            self._finished()
            raise
        return True

    def _counted(self, job: Callable[..., Any], *args: Any) -> None:
        try:
            job(*args)
        finally:
            self._finished()

    def _finished(self) -> None:
        with self._lock:
            self._pending -= 1

    def stop(self, timeout: float) -> None:
        """Drop queued jobs and wait for the running ones.

        A running prefetch is bounded by the L2 adapter timeout, so this is not
        cut short at ``timeout`` (a job cut short would leave its L1 reservations
        to their TTL).
        """
        del timeout
        with self._lock:
            self._stopped = True
            executor = self._executor
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def health(self) -> Health:
        """Healthy while running."""
        running = self._executor is not None and not self._stopped
        return Health(running, f"up to {self.max_in_flight} in flight" if running else "stopped")
