"""lmcache-l2-fs: the L2 adapter ``fs``.

A plugin distribution of the LMCache server. The module :mod:`lmcache_l2_fs.plugin` is
registered under the ``lmcache.plugins`` entry point ``l2_fs``.
"""

from __future__ import annotations

__version__ = "0.1.0"
