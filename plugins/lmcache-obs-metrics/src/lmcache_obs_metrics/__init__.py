"""lmcache-obs-metrics: the observability subscriber ``metrics``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_obs_metrics.plugin` is registered under the ``lmcache.plugins`` entry
point ``obs_metrics``.
"""

from __future__ import annotations

__version__ = "0.1.0"
