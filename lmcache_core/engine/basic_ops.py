"""The small operations every engine answers the same way.

``ping`` (worker liveness), ``noop``, ``get_chunk_size``, ``get_experimental``,
``report_block_allocation`` and ``clear``: none of them depends on how an engine
caches, so a second engine serves them with the same object.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lmcache_core.engine.contract import Handler
from lmcache_core.engine.liveness import Liveness
from lmcache_core.protocol.types import BlockAllocationRecord
from lmcache_core.storage.l1 import L1Manager

if TYPE_CHECKING:
    from lmcache_core.engine.contract import RequestContext

logger = logging.getLogger("lmcache.engine")


class BasicOps:
    """Handlers of the small operations.

    Args:
        l1: The L1 tier (``clear``).
        liveness: Worker liveness (``ping``).
        chunk_size: Tokens per chunk (``get_chunk_size``).
    """

    def __init__(self, l1: L1Manager, liveness: Liveness, chunk_size: int) -> None:
        self.l1 = l1
        self.liveness = liveness
        self.chunk_size = chunk_size
        self.block_reports = 0
        """Block allocation records received (``block_allocation_reports`` in ``/status``)."""

    def handlers(self) -> dict[str, Handler]:
        """Operation name -> handler."""
        return {
            "ping": self.ping,
            "noop": self.noop,
            "get_chunk_size": self.get_chunk_size,
            "get_experimental": self.get_experimental,
            "report_block_allocation": self.report_block_allocation,
            "clear": self.clear,
        }

    def ping(self, _ctx: RequestContext, instance_id: int | None) -> bool:
        """Heartbeat; False tells a reaped worker to re-register."""
        return self.liveness.ping(instance_id)

    def noop(self, _ctx: RequestContext) -> str:
        """Does nothing."""
        return "OK"

    def get_chunk_size(self, _ctx: RequestContext) -> int:
        """``--chunk-size``."""
        return self.chunk_size

    def get_experimental(self, _ctx: RequestContext) -> list[str]:
        """No experimental capabilities."""
        return []

    def report_block_allocation(
        self,
        _ctx: RequestContext,
        _instance_id: int,
        _model: str,
        records: list[BlockAllocationRecord],
    ) -> None:
        """Counted (``block_allocation_reports`` in ``/status``); the records are not used yet."""
        self.block_reports += len(records)

    def clear(self, _ctx: RequestContext, force: bool) -> None:
        """Drop every unlocked L1 object (every object when ``force``)."""
        dropped = self.l1.clear(force)
        logger.info("cleared %d L1 objects (force=%s)", dropped, force)
