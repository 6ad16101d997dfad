"""lmcache-l2-aerospike: the L2 adapter ``aerospike``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_l2_aerospike.plugin` is registered under the ``lmcache.plugins`` entry
point ``l2_aerospike``.
"""

from __future__ import annotations

__version__ = "0.1.0"
