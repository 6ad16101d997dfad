"""lmcache-prefetch-policy-default: the L2 prefetch policy ``default``.

A plugin distribution of the LMCache server. The module
:mod:`lmcache_prefetch_policy_default.plugin` is registered under the
``lmcache.plugins`` entry point ``prefetch_policy_default``.
"""

from __future__ import annotations

__version__ = "0.1.0"
