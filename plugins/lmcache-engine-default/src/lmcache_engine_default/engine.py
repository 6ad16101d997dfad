"""The default cache engine: prefix caching of full chunks in L1.

A thin composition of collaborators, each serving a part of the op table:

* :class:`~lmcache_core.engine.basic_ops.BasicOps`: ``ping``, ``noop``, ``clear``...
* :class:`~lmcache_core.engine.lookup.LookupService`: ``lookup`` (with L2
  prefetch), prefetch status, lock release, ``end_session``;
* :class:`~lmcache_engine_default.lmcache_driven.LmcacheDrivenTransfers`: the
  server copies KV (``register_kv_cache``, ``store``, ``retrieve``);
* :class:`~lmcache_engine_default.engine_driven.EngineDrivenTransfers`: the worker
  copies KV (``prepare_*`` / ``commit_*``).

The first two come from the core's engine toolkit (a second engine reuses
them); the transfers are this engine's policy. Handlers run on the request
server's threads (see ``OPS`` for which); each validates its input, turns it into
object keys and works on L1 in batches.
"""

from __future__ import annotations

from typing import Any

from lmcache_core.engine import Engine, EngineContext, Handler
from lmcache_core.engine.basic_ops import BasicOps
from lmcache_core.engine.chunk_keys import ChunkKeys
from lmcache_core.engine.liveness import Liveness
from lmcache_core.engine.lookup import LookupService
from lmcache_core.engine.prefetch_pool import PrefetchPool
from lmcache_core.engine.request_events import RequestEvents
from lmcache_core.engine.sessions import SessionTable
from lmcache_core.lifecycle import Component
from lmcache_engine_default.engine_driven import EngineDrivenTransfers
from lmcache_engine_default.lmcache_driven import LmcacheDrivenTransfers
from lmcache_engine_default.settings import DefaultEngineSettings
from lmcache_engine_default.store_completion import StoreCompletion
from lmcache_engine_default.transfer_parts import TransferParts
from lmcache_engine_default.transport import transport_for
from lmcache_engine_default.workers import WorkerTable


class DefaultEngine(Engine):
    """Lookup, store and retrieve of full chunks, with sessions and worker liveness.

    Args:
        context: What the core provides (configuration, L1, L2, token hashes, bus).
    """

    def __init__(self, context: EngineContext) -> None:
        mp = context.config.mp
        self.chunk_size = mp.chunk_size
        self.mode = mp.supported_transfer_mode
        self.l1 = context.l1
        self.l2 = context.l2
        self.tokens = context.token_cache
        self.workers = WorkerTable()
        self.request_events = RequestEvents(context.events, self.chunk_size)
        self.liveness = Liveness(
            *context.config.plugin_settings(DefaultEngineSettings).reap_budgets(), self._reap
        )
        self.prefetch_pool = PrefetchPool(context.config.l2_policies.l2_prefetch_max_in_flight)
        chunk_keys = ChunkKeys(self.tokens)
        self.basic = BasicOps(self.l1, self.liveness, self.chunk_size)
        self.lookups = LookupService(
            l1=self.l1,
            l2=self.l2,
            chunk_keys=chunk_keys,
            request_events=self.request_events,
            prefetch_pool=self.prefetch_pool,
            object_nbytes=self._object_nbytes,
            session_ttl_s=mp.session_ttl_seconds,
            explainer=context.explainer,
        )
        self.sessions: SessionTable = self.lookups.sessions  # the server reports its size
        completion = StoreCompletion(self.l1, self.l2, self.request_events)
        parts = TransferParts(
            l1=self.l1,
            workers=self.workers,
            liveness=self.liveness,
            chunk_keys=chunk_keys,
            lookups=self.lookups,
            completion=completion,
        )
        self.lmcache_driven = LmcacheDrivenTransfers(parts, self.request_events)
        self.engine_driven = EngineDrivenTransfers(parts, transport_for(self.l1, self.chunk_size))

    # -- engine contract -------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        """Every operation this configuration serves."""
        table = {**self.basic.handlers(), **self.lookups.handlers()}
        if self.mode in ("lmcache_driven", "auto"):
            table.update(self.lmcache_driven.handlers())
        if self.mode in ("engine_driven", "auto"):
            table.update(self.engine_driven.handlers())
        return table

    def components(self) -> list[Component]:
        """Session expiry, the reaper, and the prefetch threads (stopped first)."""
        return [self.lookups.sessions, self.liveness, self.prefetch_pool]

    def status(self) -> dict[str, Any]:
        """Sessions, workers and their liveness."""
        return {
            "chunk_size": self.chunk_size,
            "hash_algorithm": self.tokens.hasher.name,
            "active_sessions": len(self.lookups.sessions),
            "workers": self.workers.summary(),
            "worker_liveness": {str(k): v for k, v in self.liveness.snapshot().items()},
            "reaped_workers": self.liveness.reaped_total,
            "token_hash_cache": {"hits": self.tokens.hits, "misses": self.tokens.misses},
            "block_allocation_reports": self.basic.block_reports,
            "deadlines": {
                "store_retrieve_misses": dict(self.lmcache_driven.deadline_misses),
                "lookups_given_up": self.lookups.given_up,
                "prefetches_refused": self.prefetch_pool.refused,
            },
            "l2": self.l2.status() if self.l2 is not None else None,
            "cuda": self.lmcache_driven.cuda_status(),
        }

    def close(self) -> None:
        """Release pending reservations and locks, unmap every worker."""
        self.engine_driven.close()
        self.workers.close()
        self.lmcache_driven.close()  # after the workers: finishes their CUDA releases

    # -- wiring -----------------------------------------------------------------------

    def _object_nbytes(self, model_name: str, world_size: int) -> int | None:
        return self.workers.object_nbytes(model_name, world_size, self.chunk_size)

    def _reap(self, instance_id: int) -> None:
        """A worker went silent: forget it and release what its transfers hold."""
        self.workers.remove(instance_id)
        self.engine_driven.drop_instance(instance_id)


def build_engine(context: EngineContext) -> DefaultEngine:
    """The ``default`` engine's factory."""
    return DefaultEngine(context)
