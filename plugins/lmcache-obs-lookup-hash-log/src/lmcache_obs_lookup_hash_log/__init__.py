"""lmcache-obs-lookup-hash-log: the observability subscriber ``lookup_hash_log``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_obs_lookup_hash_log.plugin` is registered under the ``lmcache.plugins``
entry point ``obs_lookup_hash_log``.
"""

from __future__ import annotations

__version__ = "0.1.0"
