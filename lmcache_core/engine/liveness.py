"""Worker liveness: heartbeats, the reaper, and telling a reaped worker to re-register.

Upstream reaped quiet workers into a dead state: pings kept succeeding while
stores failed. Here a reaped worker's next ping answers False once, which makes
upstream's vLLM adapter treat the server as unhealthy, and its recovery on the
following successful ping re-registers the KV caches. Callers of our own client
do the same: a False ping means "register again".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from lmcache_core.background import BackgroundLoop
from lmcache_core.lifecycle import Health

logger = logging.getLogger("lmcache.server")

MAX_REMEMBERED_REAPED = 4096


@dataclass
class WorkerState:
    """What the server knows about one registered worker instance."""

    registered_at: float
    last_seen: float
    pinged: bool = False


class Liveness:
    """Tracks registered instances and reaps silent ones.

    Args:
        reap_timeout: ``--worker-reap-timeout-seconds`` (0 disables reaping).
        registration_grace: ``--worker-registration-grace-seconds``.
        on_reap: Called with an instance id to release everything it holds.
        clock: Monotonic time source.
    """

    name = "liveness"

    def __init__(
        self,
        reap_timeout: float,
        registration_grace: float,
        on_reap: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reap_timeout = reap_timeout
        self.registration_grace = registration_grace
        self.on_reap = on_reap
        self.clock = clock
        self._workers: dict[int, WorkerState] = {}
        self._reaped: OrderedDict[int, bool] = OrderedDict()  # id -> told to re-register
        self._lock = threading.Lock()
        self._reaper = BackgroundLoop(
            "worker reaper",
            self.reap,
            interval_s=min(reap_timeout / 4, 5.0) if reap_timeout > 0 else 5.0,
            thread_name="lmcache-reaper",
            log=logger,
        )
        self.reaped_total = 0

    def registered(self, instance_id: int) -> None:
        """A worker (re-)registered: track it afresh."""
        now = self.clock()
        with self._lock:
            self._reaped.pop(instance_id, None)
            state = self._workers.get(instance_id)
            if state is None:
                self._workers[instance_id] = WorkerState(now, now)
            else:
                state.last_seen = now

    def unregistered(self, instance_id: int) -> None:
        """A worker unregistered itself."""
        with self._lock:
            self._workers.pop(instance_id, None)

    def seen(self, instance_id: int) -> bool:
        """A store or retrieve arrived; False if the instance is not registered."""
        with self._lock:
            state = self._workers.get(instance_id)
            if state is None:
                return False
            state.last_seen = self.clock()
            return True

    def ping(self, instance_id: int | None) -> bool:
        """A heartbeat. False (once) tells a reaped worker to re-register."""
        if instance_id is None:
            return True
        with self._lock:
            state = self._workers.get(instance_id)
            if state is not None:
                state.last_seen = self.clock()
                state.pinged = True
                return True
            if self._reaped.get(instance_id) is False:
                self._reaped[instance_id] = True
                return False
            return True

    def is_reaped(self, instance_id: int) -> bool:
        """Whether the instance was reaped and has not registered since."""
        with self._lock:
            return instance_id in self._reaped

    def snapshot(self) -> dict[int, dict[str, float | bool]]:
        """Per-instance liveness for ``/status``."""
        now = self.clock()
        with self._lock:
            return {
                iid: {"silent_seconds": round(now - s.last_seen, 3), "pinged": s.pinged}
                for iid, s in self._workers.items()
            }

    def reap(self) -> list[int]:
        """Reap every instance silent past its budget; returns their ids."""
        if self.reap_timeout <= 0:
            return []
        now = self.clock()
        with self._lock:
            victims = [
                iid
                for iid, s in self._workers.items()
                if now - s.last_seen > (self.reap_timeout if s.pinged else self.registration_grace)
            ]
            for iid in victims:
                del self._workers[iid]
                self._reaped[iid] = False
                while len(self._reaped) > MAX_REMEMBERED_REAPED:
                    self._reaped.popitem(last=False)
        for iid in victims:
            logger.warning("reaping silent worker instance %d", iid)
            self.reaped_total += 1
            try:
                self.on_reap(iid)
            except Exception:
                logger.exception("releasing reaped instance %d failed", iid)
        return victims

    # -- component ---------------------------------------------------------------------

    def start(self) -> None:
        """Run the reaper every quarter of the reap timeout (at most every 5 s)."""
        if self.reap_timeout > 0:
            self._reaper.start()

    def stop(self, timeout: float) -> None:
        """Stop the reaper."""
        self._reaper.stop(timeout)

    def health(self) -> Health:
        """Healthy while the reaper runs (or reaping is disabled)."""
        detail = f"{len(self._workers)} workers"
        if self.reap_timeout <= 0:
            return Health(True, detail)
        return self._reaper.health(detail, stopped="reaper stopped")
