"""lmcache-engine-blend-legacy: the engine ``blend_legacy``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_engine_blend_legacy.plugin` is registered under the ``lmcache.plugins``
entry point ``engine_blend_legacy``.
"""

from __future__ import annotations

__version__ = "0.1.0"
