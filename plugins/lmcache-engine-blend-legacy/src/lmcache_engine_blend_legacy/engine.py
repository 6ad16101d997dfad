"""The ``blend_legacy`` engine: the ``default`` engine plus the original CacheBlend operations.

Upstream's server of that era composed its first CacheBlend module beside the
ordinary ones, so a request stored with ``cb_store_final`` is reachable by an
ordinary ``lookup``, and paged workers keep working. This engine does the same:
it is the :class:`~lmcache_engine_default.engine.DefaultEngine` (every default
operation, same flags) with the six legacy operations of
:mod:`lmcache_engine_blend_legacy.legacy_ops` added, served by name only.

A registered CB buffer also tells the engine the object size of its model, so
ordinary lookups of chunks a CB store wrote prefetch them from L2 (upstream
shared one layout registry the same way).
"""

from __future__ import annotations

from typing import Any

from lmcache_engine_default.engine import DefaultEngine
from lmcache_engine_default.store_completion import StoreCompletion

from lmcache_core.engine import EngineContext, Handler
from lmcache_core.engine.chunk_keys import ChunkKeys
from lmcache_engine_blend_legacy.buffers import BufferTable
from lmcache_engine_blend_legacy.events import LegacyEvents
from lmcache_engine_blend_legacy.fingerprints import FingerprintIndex
from lmcache_engine_blend_legacy.legacy_ops import LegacyBlendOps


class BlendLegacyEngine(DefaultEngine):
    """The default engine's operations plus the legacy CacheBlend ones.

    Args:
        context: What the core provides (configuration, L1, L2, token hashes, bus).
    """

    def __init__(self, context: EngineContext) -> None:
        # Before the base builds its lookup service: its object-size callback reads them.
        self.cb_buffers = BufferTable()
        super().__init__(context)
        self.fingerprints = FingerprintIndex(self.chunk_size)
        self.legacy = LegacyBlendOps(
            l1=self.l1,
            l2=self.l2,
            chunk_keys=ChunkKeys(self.tokens),
            lookups=self.lookups,
            completion=StoreCompletion(self.l1, self.l2, self.request_events),
            buffers=self.cb_buffers,
            index=self.fingerprints,
            events=LegacyEvents(context.events, self.chunk_size),
        )

    def handlers(self) -> dict[str, Handler]:
        """The default engine's operations and the six legacy ones."""
        return {**super().handlers(), **self.legacy.handlers()}

    def status(self) -> dict[str, Any]:
        """The default engine's status with a ``blend_legacy`` part."""
        return {**super().status(), "blend_legacy": self.legacy.status()}

    def close(self) -> None:
        """Unmap the CB buffers and every worker."""
        super().close()
        self.cb_buffers.close()

    def _object_nbytes(self, model_name: str, world_size: int) -> int | None:
        buffer = self.cb_buffers.for_model(model_name, world_size)
        if buffer is not None:
            return buffer.object_nbytes(self.chunk_size)
        return super()._object_nbytes(model_name, world_size)


def build_engine(context: EngineContext) -> BlendLegacyEngine:
    """The ``blend_legacy`` engine's factory."""
    return BlendLegacyEngine(context)
