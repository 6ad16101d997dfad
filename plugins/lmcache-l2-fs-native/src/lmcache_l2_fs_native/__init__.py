"""lmcache-l2-fs-native: the L2 adapter ``fs_native``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_l2_fs_native.plugin` is registered under the ``lmcache.plugins`` entry
point ``l2_fs_native``.
"""

from __future__ import annotations

__version__ = "0.1.0"
