"""lmcache-l2-nixl-store-dynamic: the L2 adapter ``nixl_store_dynamic``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_l2_nixl_store_dynamic.plugin` is registered under the ``lmcache.plugins``
entry point ``l2_nixl_store_dynamic``.
"""

from __future__ import annotations

__version__ = "0.1.0"
