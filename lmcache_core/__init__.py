"""lmcache_core: the small core of the LMCache multiprocess KV-cache server.

The core declares contracts (hookspecs, spec records, base classes, configuration
models) and the machinery around them (plugin registry, CLI, HTTP frontend, server
lifecycle). It imports no plugin: every engine, policy, adapter and subscriber is
found through the ``lmcache.plugins`` entry-point group.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
