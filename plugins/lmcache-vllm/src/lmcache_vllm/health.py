"""Server health as the connector sees it, kept current by a heartbeat.

The heartbeat pings every ``heartbeat_interval`` seconds with the interval as the ping's
timeout. A failed ping, or a transfer call that timed out (:meth:`Health.mark_down`),
puts the connector in **degraded mode**: lookups answer "miss" at once, loads are reported
failed (vLLM recomputes), stores are dropped. A worker's ping carries its instance id; a
server that answers False does not know the instance (it restarted, perhaps between two
pings, or reaped it); a worker re-registers then, and after every outage, before it counts
as healthy again. The
heartbeat starts right after registration, so an idle worker is never reaped (upstream
started it lazily at the first transfer: LMCache #4715).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lmcache_vllm.rpc import BackgroundClient

logger = logging.getLogger(__name__)


@dataclass
class HealthStats:
    """Counters for metrics and the docs' figures.

    Attributes:
        pings: Pings sent.
        failed_pings: Pings that failed or timed out.
        went_down: Healthy → degraded transitions.
        recovered: Degraded → healthy transitions.
        reregistrations: Successful re-registrations.
        last_down_at: ``time.monotonic()`` of the last transition to degraded (0: never).
        last_up_at: ``time.monotonic()`` of the last recovery (0: never).
        degraded_seconds: Seconds spent in degraded mode by the outages that ended.
    """

    pings: int = 0
    failed_pings: int = 0
    went_down: int = 0
    recovered: int = 0
    reregistrations: int = 0
    last_down_at: float = 0.0
    last_up_at: float = 0.0
    degraded_seconds: float = 0.0


@dataclass
class Health:
    """Whether the server is usable now. Thread-safe.

    Attributes:
        healthy: False in degraded mode.
        stats: Counters.
    """

    healthy: bool = True
    stats: HealthStats = field(default_factory=HealthStats)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mark_down(self, reason: str) -> None:
        """Enter degraded mode (no-op if already degraded)."""
        with self._lock:
            if not self.healthy:
                return
            self.healthy = False
            self.stats.went_down += 1
            self.stats.last_down_at = time.monotonic()
        logger.warning("LMCache server unusable (%s): degraded mode, requests recompute", reason)

    def mark_up(self) -> None:
        """Leave degraded mode (no-op if healthy)."""
        with self._lock:
            if self.healthy:
                return
            self.healthy = True
            self.stats.recovered += 1
            self.stats.last_up_at = time.monotonic()
            self.stats.degraded_seconds += self.stats.last_up_at - self.stats.last_down_at
        logger.warning("LMCache server healthy again: KV caching resumes")

    def degraded_seconds(self, now: float | None = None) -> float:
        """Seconds spent in degraded mode so far, the current outage included."""
        with self._lock:
            total = self.stats.degraded_seconds
            if not self.healthy:
                current = (time.monotonic() if now is None else now) - self.stats.last_down_at
                total += max(0.0, current)
            return total


class Heartbeat:
    """Pings the server on the client's loop; keeps a :class:`Health` current.

    Args:
        client: The background client.
        health: The health to update.
        interval: Seconds between pings (and each ping's timeout).
        instance_id: The worker's instance id, or None for the scheduler.
        reregister: Called (on a worker thread) when the server does not know
            ``instance_id``; it must re-register and raise on failure. The connector counts
            as healthy only once it succeeded.
    """

    def __init__(
        self,
        client: BackgroundClient,
        health: Health,
        interval: float,
        *,
        instance_id: int | None = None,
        reregister: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.health = health
        self.interval = interval
        self.instance_id = instance_id
        self.reregister = reregister
        self._stop = asyncio.Event()
        self._task = client.submit(self._run())

    async def _run(self) -> None:
        while True:
            await self.beat()
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
                return
            except TimeoutError:
                continue

    async def beat(self) -> None:
        """One ping, and what follows from its answer."""
        self.health.stats.pings += 1
        bound = self.client.call("ping", self.instance_id, timeout=self.interval)
        try:
            known = await asyncio.wrap_future(bound)
        except Exception as exc:  # noqa: BLE001 - any failure of the ping means "down"
            self.health.stats.failed_pings += 1
            self.health.mark_down(f"ping failed: {type(exc).__name__}: {exc}")
            return
        # Re-register when the server does not know us, and also after any outage: the
        # one False a restarted server answers may have been the reply of a ping that
        # timed out here (a loaded server), and registering again is harmless.
        if self.reregister is not None and (known is False or not self.health.healthy):
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.reregister)
            except Exception as exc:  # noqa: BLE001 - retried at the next beat
                self.health.mark_down(f"re-registration failed: {type(exc).__name__}: {exc}")
                return
            self.health.stats.reregistrations += 1
            logger.warning("re-registered KV caches with the LMCache server")
        self.health.mark_up()

    def stop(self) -> None:
        """Stop pinging (waits for the current beat, at most one interval)."""

        async def set_stop() -> None:
            self._stop.set()

        try:
            self.client.run_sync(set_stop(), timeout=5.0)
            self._task.result(self.interval + 5.0)
        except Exception:
            logger.debug("heartbeat stop", exc_info=True)
