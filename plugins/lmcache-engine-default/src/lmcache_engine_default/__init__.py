"""lmcache-engine-default: the engine ``default``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_engine_default.plugin` is registered under the ``lmcache.plugins`` entry
point ``engine_default``.
"""

from __future__ import annotations

__version__ = "0.1.0"
