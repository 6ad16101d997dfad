"""lmcache-l2-plugin: the L2 adapter ``plugin``.

A plugin distribution of the LMCache server. The module :mod:`lmcache_l2_plugin.plugin`
is registered under the ``lmcache.plugins`` entry point ``l2_plugin``.
"""

from __future__ import annotations

__version__ = "0.1.0"
