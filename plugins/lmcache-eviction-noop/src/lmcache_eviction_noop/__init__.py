"""lmcache-eviction-noop: the eviction policy ``noop``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_eviction_noop.plugin` is registered under the ``lmcache.plugins`` entry
point ``eviction_noop``.
"""

from __future__ import annotations

__version__ = "0.1.0"
