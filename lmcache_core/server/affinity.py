"""Thread pools of the request server: per-client affinity threads and a CPU pool.

A worker's transfers (store, retrieve, register) run on one thread in arrival
order, so they never race each other; different workers get different threads
while there are enough. Every queue is bounded: when one is full the request is
refused at once with an "overloaded" error instead of piling up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("lmcache.server")

Task = Callable[[], None]
IDLE_BINDING_SECONDS = 300.0


class PoolFull(Exception):
    """The queue that should take the task is full."""


class _Worker:
    def __init__(self, name: str, depth: int) -> None:
        self.queue: queue.Queue[Task | None] = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.clients = 0

    def _run(self) -> None:
        while True:
            task = self.queue.get()
            if task is None:
                return
            try:
                task()
            except Exception:  # tasks report their own errors; this is a last resort
                logger.exception("unhandled error in %s", self.thread.name)


class WorkerPool:
    """``size`` threads, each with its own bounded FIFO queue.

    Args:
        name: Thread name prefix.
        size: Number of threads.
        depth: Queue depth per thread.
    """

    def __init__(self, name: str, size: int, depth: int) -> None:
        self._workers = [_Worker(f"{name}-{i}", depth) for i in range(size)]
        self._next = 0
        self._lock = threading.Lock()
        for worker in self._workers:
            worker.thread.start()

    def submit(self, task: Task, slot: int | None = None) -> None:
        """Queue ``task`` on thread ``slot`` (round-robin when None).

        Raises:
            PoolFull: That thread's queue is full.
        """
        if slot is None:
            with self._lock:
                slot = self._next
                self._next = (self._next + 1) % len(self._workers)
        try:
            self._workers[slot].queue.put_nowait(task)
        except queue.Full:
            raise PoolFull from None

    def __len__(self) -> int:
        return len(self._workers)

    def stop(self, timeout: float) -> None:
        """Let queued tasks finish, then stop every thread (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            try:
                worker.queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                logger.warning("%s did not drain before shutdown", worker.thread.name)
        for worker in self._workers:
            worker.thread.join(max(0.0, deadline - time.monotonic()))


class AffinityPool(WorkerPool):
    """A :class:`WorkerPool` that pins each client identity to one thread.

    A new client goes to the thread with the fewest clients. Bindings idle for
    longer than :data:`IDLE_BINDING_SECONDS` are forgotten, so reconnect churn
    cannot grow the map or unbalance the threads (upstream kept them forever).
    """

    def __init__(self, name: str, size: int, depth: int) -> None:
        super().__init__(name, size, depth)
        self._bindings: dict[bytes, tuple[int, float]] = {}

    def submit_for(self, client: bytes, task: Task) -> None:
        """Queue ``task`` on ``client``'s thread.

        Raises:
            PoolFull: That thread's queue is full.
        """
        now = time.monotonic()
        with self._lock:
            binding = self._bindings.get(client)
            if binding is None:
                if len(self._bindings) >= 4 * len(self._workers):
                    self._forget_idle(now)
                slot = min(range(len(self._workers)), key=lambda i: self._workers[i].clients)
                self._workers[slot].clients += 1
            else:
                slot = binding[0]
            self._bindings[client] = (slot, now)
        self.submit(task, slot)

    def _forget_idle(self, now: float) -> None:
        for client, (slot, last) in list(self._bindings.items()):
            if now - last > IDLE_BINDING_SECONDS:
                del self._bindings[client]
                self._workers[slot].clients -= 1
