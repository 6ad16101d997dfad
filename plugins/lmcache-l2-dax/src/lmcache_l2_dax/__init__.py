"""lmcache-l2-dax: the L2 adapter ``dax``.

A plugin distribution of the LMCache server. The module :mod:`lmcache_l2_dax.plugin` is
registered under the ``lmcache.plugins`` entry point ``l2_dax``.
"""

from __future__ import annotations

__version__ = "0.1.0"
