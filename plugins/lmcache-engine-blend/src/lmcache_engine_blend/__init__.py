"""lmcache-engine-blend: the engine ``blend``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_engine_blend.plugin` is registered under the ``lmcache.plugins`` entry
point ``engine_blend``.
"""

from __future__ import annotations

__version__ = "0.1.0"
