"""lmcache-l2-native-plugin: the L2 adapter ``native_plugin``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_l2_native_plugin.plugin` is registered under the ``lmcache.plugins`` entry
point ``l2_native_plugin``.
"""

from __future__ import annotations

__version__ = "0.1.0"
