"""Background upkeep of one L1 manager: expiry, then quota and watermark eviction."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lmcache_core.background import BackgroundLoop, StopLoop
from lmcache_core.lifecycle import Health
from lmcache_core.storage.errors import L1ClosedError

if TYPE_CHECKING:
    from lmcache_core.storage.l1 import L1Manager

logger = logging.getLogger("lmcache.storage")


class L1Controller:
    """Calls :meth:`L1Manager.expire` and the evictions every ``interval_s``.

    Runs in a :class:`~lmcache_core.background.BackgroundLoop` named
    ``lmcache-l1-controller``. Each round is bounded (one eviction round frees
    about ``eviction_ratio`` of the capacity); an error is logged (at most one
    traceback per 10 s) and counted and never kills the thread (upstream's
    died); the thread ends when the manager closes; :meth:`stop` returns
    within one round.

    Args:
        manager: The L1 manager to keep.
        interval_s: Pause between rounds.

    Raises:
        ValueError: ``interval_s`` is not positive.
    """

    def __init__(self, manager: L1Manager, interval_s: float = 0.1) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s}")
        self.manager = manager
        self.interval_s = interval_s
        self.rounds = 0
        self.evicted_bytes = 0
        self._loop = BackgroundLoop(
            "L1 controller round",
            self._round,
            interval_s=interval_s,
            thread_name="lmcache-l1-controller",
            log=logger,
        )

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._loop.running

    @property
    def errors(self) -> int:
        """Rounds that raised."""
        return self._loop.errors

    def start(self) -> None:
        """Start the thread.

        Raises:
            RuntimeError: It runs already.
        """
        self._loop.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the thread to stop and wait for it.

        Returns:
            Whether it stopped within ``timeout`` (also true if never started).
        """
        return self._loop.stop(timeout)

    def health(self, detail: str = "") -> Health:
        """Healthy while the thread runs (a crash names its error)."""
        return self._loop.health(detail)

    def run_once(self) -> int:
        """One round: expire, evict over quotas, then above the watermark; returns bytes evicted."""
        self.manager.expire()
        freed = self.manager.evict_over_quota() + self.manager.maybe_evict()
        self.evicted_bytes += freed
        self.rounds += 1
        return freed

    def _round(self) -> None:
        if self.manager.closed:
            raise StopLoop
        try:
            self.run_once()
        except L1ClosedError:
            raise StopLoop from None
