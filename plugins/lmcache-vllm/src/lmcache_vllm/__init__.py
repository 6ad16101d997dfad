"""A vLLM KV connector for the LMCache MP server, on ``lmcache_core.client``.

vLLM loads :class:`lmcache_vllm.connector.LMCacheMPConnector` (the only module that
imports vLLM); the logic lives in :mod:`lmcache_vllm.scheduler` and
:mod:`lmcache_vllm.worker`.
"""

from __future__ import annotations

CONNECTOR_CLASS = "LMCacheMPConnector"
CONNECTOR_MODULE = "lmcache_vllm.connector"

__all__ = ["CONNECTOR_CLASS", "CONNECTOR_MODULE"]
