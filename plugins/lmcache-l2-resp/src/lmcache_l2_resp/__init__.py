"""lmcache-l2-resp: the L2 adapter ``resp``.

A plugin distribution of the LMCache server. The module :mod:`lmcache_l2_resp.plugin` is
registered under the ``lmcache.plugins`` entry point ``l2_resp``.
"""

from __future__ import annotations

__version__ = "0.1.0"
