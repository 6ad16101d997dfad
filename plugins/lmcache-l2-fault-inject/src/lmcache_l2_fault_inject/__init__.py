"""lmcache-l2-fault-inject: the L2 adapter ``fault_inject``.

A plugin distribution of the LMCache server. The module :mod:`lmcache_l2_fault_inject.plugin`
is registered under the ``lmcache.plugins`` entry point ``l2_fault_inject``.
"""

from __future__ import annotations

__version__ = "0.1.0"
