"""lmcache-l2-s3: the L2 adapter ``s3``.

A plugin distribution of the LMCache server. The module :mod:`lmcache_l2_s3.plugin` is
registered under the ``lmcache.plugins`` entry point ``l2_s3``.
"""

from __future__ import annotations

__version__ = "0.1.0"
