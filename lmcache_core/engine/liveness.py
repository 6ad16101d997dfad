"""Worker liveness: heartbeats, the reaper, and telling a lost worker to re-register.

Upstream reaped quiet workers into a dead state: pings kept succeeding while
stores failed, and a restarted server answered True to workers it had never
heard of. Here the next ping of an instance the server does not know (reaped, or
registered with an earlier incarnation of this server that was restarted)
answers False once, which makes upstream's vLLM adapter treat the server as
unhealthy, and its recovery on the following successful ping re-registers the
KV caches. Callers of our own client do the same: a False ping means "register
again". Only the ids already told are remembered (at most
``MAX_REMEMBERED_UNKNOWN``), so a worker that never re-registers costs one
entry, not a reply of False forever.
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

MAX_REMEMBERED_UNKNOWN = 4096
"""Instance ids remembered as reaped or told to re-register (oldest forgotten first)."""


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
        # Instances not registered here: id -> whether a ping already answered False.
        self._unknown: OrderedDict[int, bool] = OrderedDict()
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
            self._unknown.pop(instance_id, None)
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
        """A heartbeat. False (once) tells an unknown or reaped worker to re-register."""
        if instance_id is None:
            return True
        with self._lock:
            state = self._workers.get(instance_id)
            if state is not None:
                state.last_seen = self.clock()
                state.pinged = True
                return True
            if self._unknown.get(instance_id):
                return True
            self._remember(instance_id, told=True)
            return False

    def _remember(self, instance_id: int, *, told: bool) -> None:
        """Record an unregistered instance (under the lock), within the bound."""
        self._unknown[instance_id] = told
        self._unknown.move_to_end(instance_id)
        while len(self._unknown) > MAX_REMEMBERED_UNKNOWN:
            self._unknown.popitem(last=False)

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
                self._remember(iid, told=False)
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
