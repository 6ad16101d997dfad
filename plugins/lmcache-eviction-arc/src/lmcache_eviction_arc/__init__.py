"""lmcache-eviction-arc: the eviction policy ``ARC``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_eviction_arc.plugin` is registered under the ``lmcache.plugins`` entry
point ``eviction_arc``.
"""

from __future__ import annotations

__version__ = "0.1.0"
