"""The threads that run L2 prefetches after a lookup was acknowledged, as a component.

A lookup that misses part of its prefix in L1 answers at once and prefetches the
rest from L2 in the background. At most ``max_in_flight`` prefetches run at a
time (``--l2-prefetch-max-in-flight``); more wait in the pool's queue, which is
bounded (:data:`MAX_QUEUED`: a lookup finding it full answers its L1 hits). The
threads exist between :meth:`PrefetchPool.start` and :meth:`PrefetchPool.stop`,
so the server's lifecycle starts, probes and stops them like any other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lmcache_core.lifecycle import Health

MAX_QUEUED = 1024
"""Prefetches waiting for a thread; more are refused (their lookups answer L1 hits only)."""


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
        self.refused = 0
        self._pending = 0
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

    def submit(self, job: Callable[..., Any], *args: Any) -> bool:
        """Run ``job(*args)`` on a pool thread; False (not queued) when the queue is full.

        Raises:
            RuntimeError: The pool is not running (before :meth:`start`, after :meth:`stop`).
        """
        executor = self._executor
        if executor is None or self._stopped:
            raise RuntimeError("the prefetch pool is not running")
        with self._lock:
            if self._pending >= self.max_in_flight + MAX_QUEUED:
                self.refused += 1
                return False
            self._pending += 1
        executor.submit(self._run, job, args)
        return True

    def _run(self, job: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            job(*args)
        finally:
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
