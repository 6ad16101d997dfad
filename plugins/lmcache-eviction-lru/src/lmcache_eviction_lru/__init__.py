"""lmcache-eviction-lru: the eviction policy ``LRU``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_eviction_lru.plugin` is registered under the ``lmcache.plugins`` entry
point ``eviction_lru``.
"""

from __future__ import annotations

__version__ = "0.1.0"
