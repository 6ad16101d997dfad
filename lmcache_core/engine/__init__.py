"""The engine contract and the toolkit that engines share.

* :mod:`lmcache_core.engine.contract`: :class:`Engine`, :class:`EngineContext`,
  :data:`Handler`: what an engine plugin's factory receives and returns.
* :mod:`lmcache_core.engine.sessions`: per-request sessions (lookup jobs, the
  locks a request holds, idle expiry).
* :mod:`lmcache_core.engine.liveness`: worker liveness and the reaper.
* :mod:`lmcache_core.engine.token_cache`: chunk hashes of token lists, by content.

These are public: a second engine (the blend engines) builds on them.
"""

from __future__ import annotations

from lmcache_core.engine.contract import Engine, EngineContext, Handler

__all__ = ["Engine", "EngineContext", "Handler"]
