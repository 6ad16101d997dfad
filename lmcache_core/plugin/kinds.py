"""One table of facts per plugin kind: its spec type, its hook, its label.

The registry, the hookspec module, the docs test and messages all read
:data:`KINDS`, so adding a kind is one row here (plus its hookspec and spec type).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

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
    SubscriberSpec,
)


@dataclass(frozen=True)
class KindInfo:
    """What the core knows about one plugin kind.

    Attributes:
        kind: The kind.
        spec_type: The spec record its hook returns.
        hook: The name of its registration hook in :mod:`~lmcache_core.plugin.hookspecs`.
        label: How messages name it (``"L2 adapter type"``).
    """

    kind: PluginKind
    spec_type: type[PluginSpec]
    hook: str
    label: str


KINDS: Mapping[PluginKind, KindInfo] = MappingProxyType(
    {
        info.kind: info
        for info in (
            KindInfo(PluginKind.ENGINE, EngineSpec, "lmcache_register_engines", "engine"),
            KindInfo(
                PluginKind.EVICTION_POLICY,
                EvictionPolicySpec,
                "lmcache_register_eviction_policies",
                "eviction policy",
            ),
            KindInfo(
                PluginKind.STORE_POLICY,
                StorePolicySpec,
                "lmcache_register_store_policies",
                "L2 store policy",
            ),
            KindInfo(
                PluginKind.PREFETCH_POLICY,
                PrefetchPolicySpec,
                "lmcache_register_prefetch_policies",
                "L2 prefetch policy",
            ),
            KindInfo(
                PluginKind.L2_ADAPTER,
                L2AdapterSpec,
                "lmcache_register_l2_adapters",
                "L2 adapter type",
            ),
            KindInfo(
                PluginKind.SUBSCRIBER,
                SubscriberSpec,
                "lmcache_register_subscribers",
                "observability subscriber",
            ),
            KindInfo(
                PluginKind.HTTP_ROUTER,
                HttpRouterSpec,
                "lmcache_register_http_routers",
                "HTTP router",
            ),
            KindInfo(
                PluginKind.CLI_COMMAND,
                CliCommandSpec,
                "lmcache_register_cli_commands",
                "CLI command",
            ),
        )
    }
)
"""Every kind, in :class:`PluginKind` order."""


def label(kind: PluginKind) -> str:
    """How messages name ``kind``."""
    return KINDS[kind].label
