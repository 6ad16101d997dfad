"""lmcache-l2-raw-block: the L2 adapter ``raw_block``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_l2_raw_block.plugin` is registered under the ``lmcache.plugins`` entry
point ``l2_raw_block``.
"""

from __future__ import annotations

__version__ = "0.1.0"
