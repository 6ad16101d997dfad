"""The engine contract and the toolkit that engines share.

* :mod:`lmcache_core.engine.contract`: :class:`Engine`, :class:`EngineContext`,
  :data:`Handler`: what an engine plugin's factory receives and returns.
* :mod:`lmcache_core.engine.sessions`: per-request sessions (lookup jobs, the
  locks a request holds, idle expiry).
* :mod:`lmcache_core.engine.liveness`: worker liveness and the reaper.
* :mod:`lmcache_core.engine.token_cache`: chunk hashes of token lists, by content.
* :mod:`lmcache_core.engine.chunk_keys`: from a wire key to the object keys of its chunks.
* :mod:`lmcache_core.engine.lookup`: the lookup service (lookup with L2 prefetch,
  prefetch status, the read locks a request holds).
* :mod:`lmcache_core.engine.prefetch_pool`: the prefetch threads, as a component.
* :mod:`lmcache_core.engine.miss_explainer`: why each lookup missed (the cause of
  every chunk that is not a hit), from the bounded removal and namespace memories.
* :mod:`lmcache_core.engine.recent_lookups`: the ring of recent explanations that
  ``GET /lookups/{request_id}`` reads.
* :mod:`lmcache_core.engine.basic_ops`: ``ping``, ``noop``, ``clear`` and the other
  small operations.
* :mod:`lmcache_core.engine.request_events`: the ``mp.*`` events an engine publishes.

These are public: a second engine (the blend engines) builds on them.
"""

from __future__ import annotations

from lmcache_core.engine.contract import Engine, EngineContext, Handler, RequestContext

__all__ = ["Engine", "EngineContext", "Handler", "RequestContext"]
