"""lmcache-store-policy-default: the L2 store policy ``default``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_store_policy_default.plugin` is registered under the ``lmcache.plugins``
entry point ``store_policy_default``.
"""

from __future__ import annotations

__version__ = "0.1.0"
