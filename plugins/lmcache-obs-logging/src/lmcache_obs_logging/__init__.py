"""lmcache-obs-logging: the observability subscriber ``logging``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_obs_logging.plugin` is registered under the ``lmcache.plugins`` entry
point ``obs_logging``.
"""

from __future__ import annotations

__version__ = "0.1.0"
