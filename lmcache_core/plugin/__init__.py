"""Plugin contracts: hook markers and the typed spec records plugins return.

Plugin authors import everything they need from here::

    from lmcache_core.plugin import EvictionPolicySpec, hookimpl
"""

from __future__ import annotations

from lmcache_core.plugin.hookspecs import hookimpl
from lmcache_core.plugin.names import normalize_name
from lmcache_core.plugin.specs import (
    CliCommandSpec,
    EngineSpec,
    EvictionPolicySpec,
    HttpRouterSpec,
    L2AdapterSpec,
    PluginKind,
    PluginSpec,
    PrefetchPolicySpec,
    StorePolicySpec,
    SubscriberCategory,
    SubscriberSpec,
    pending_factory,
)

__all__ = [
    "CliCommandSpec",
    "EngineSpec",
    "EvictionPolicySpec",
    "HttpRouterSpec",
    "L2AdapterSpec",
    "PluginKind",
    "PluginSpec",
    "PrefetchPolicySpec",
    "StorePolicySpec",
    "SubscriberCategory",
    "SubscriberSpec",
    "hookimpl",
    "normalize_name",
    "pending_factory",
]
