"""lmcache-obs-tracing: the observability subscriber ``tracing``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_obs_tracing.plugin` is registered under the ``lmcache.plugins`` entry
point ``obs_tracing``.
"""

from __future__ import annotations

__version__ = "0.1.0"
