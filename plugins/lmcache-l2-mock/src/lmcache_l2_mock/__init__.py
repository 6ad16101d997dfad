"""lmcache-l2-mock: the L2 adapter ``mock``.

A plugin distribution of the LMCache server. The module :mod:`lmcache_l2_mock.plugin` is
registered under the ``lmcache.plugins`` entry point ``l2_mock``.
"""

from __future__ import annotations

__version__ = "0.1.0"
