"""What every store does once its objects are committed to L1 (both transfer modes)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from lmcache_core.engine.request_events import RequestEvents
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager, Reservation
from lmcache_core.storage.l2.tier import L2Tier

VISIBILITY_WAIT_SECONDS = 5.0
"""How long a store waits for chunks a concurrent store of the same prefix is writing
(cut at the store's own deadline when that comes first)."""


class StoreCompletion:
    """Publishes a commit, queues it for L2, and waits for chunks others write.

    Args:
        l1: The L1 tier.
        l2: The L2 tier, or None.
        request_events: Where the ``l1.write.finished`` event goes.
    """

    def __init__(self, l1: L1Manager, l2: L2Tier | None, request_events: RequestEvents) -> None:
        self.l1 = l1
        self.l2 = l2
        self.request_events = request_events

    def committed(self, staged: Sequence[Reservation], nbytes: int) -> None:
        """After a store committed ``staged`` to L1: publish it, queue it for L2."""
        keys = [r.key for r in staged]
        self.request_events.l1_write_finished(keys, nbytes)
        if self.l2 is not None:
            self.l2.submit_store(keys, nbytes)

    def visible(self, others: Sequence[ObjectKey], deadline: float = math.inf) -> bool:
        """Wait (bounded) until keys another writer is storing are resident.

        A store is acknowledged only once every chunk is visible to the next
        lookup; a chunk being written by a concurrent store of the same prefix is
        not, until that store commits. L1 wakes the wait on each commit (no poll);
        a chunk nobody writes any more fails it at once. The wait ends at
        ``deadline`` (``time.monotonic()``, the request's) if that comes first.
        """
        if not others:  # the common case: skip taking the L1 lock
            return True
        wait = min(VISIBILITY_WAIT_SECONDS, deadline - time.monotonic())
        return self.l1.wait_resident(others, max(0.0, wait))
