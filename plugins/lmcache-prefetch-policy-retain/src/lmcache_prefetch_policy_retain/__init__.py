"""lmcache-prefetch-policy-retain: the L2 prefetch policy ``retain``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_prefetch_policy_retain.plugin` is registered under the ``lmcache.plugins``
entry point ``prefetch_policy_retain``.
"""

from __future__ import annotations

__version__ = "0.1.0"
