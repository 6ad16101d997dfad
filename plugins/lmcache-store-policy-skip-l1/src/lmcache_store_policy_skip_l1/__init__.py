"""lmcache-store-policy-skip-l1: the L2 store policy ``skip_l1``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_store_policy_skip_l1.plugin` is registered under the ``lmcache.plugins``
entry point ``store_policy_skip_l1``.
"""

from __future__ import annotations

__version__ = "0.1.0"
