"""Build the L2 tier: every ``--l2-adapter`` (started, in cascade order) and its policies."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

from lmcache_core.config.resolution import ResolvedAdapter, Selection
from lmcache_core.config.server import ServerConfig
from lmcache_core.errors import StartupError
from lmcache_core.observability.bus import EventBus
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.storage.eviction import EvictionSettings, IsolatedEvictionPolicy
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.context import L2AdapterContext
from lmcache_core.storage.l2.tier import AdapterEviction, L2Tier
from lmcache_core.storage.quota import QuotaManager


def build_l2(
    config: ServerConfig,
    registry: PluginRegistry,
    selection: Selection,
    l1: L1Manager,
    quotas: QuotaManager,
    bus: EventBus,
    cleanup: ExitStack,
) -> L2Tier | None:
    """The L2 tier of the selection, or ``None`` when no ``--l2-adapter`` is configured.

    Each adapter is registered with ``quotas`` as the tier ``l2[<index>]:<type>``,
    enforcing when its eviction policy is isolated. Every adapter started here is
    closed through ``cleanup`` if anything later in the assembly fails; the caller
    pops ``cleanup`` once the server owns the tier.

    Raises:
        StartupError: An adapter cannot start, or an eviction block is unusable.
    """
    if not selection.adapters:
        return None
    l1_region = (l1.arena.data_ptr(), l1.arena.size_bytes)
    adapters = [
        _start_adapter(
            resolved,
            registry,
            L2AdapterContext.from_config(config, resolved.index, registry, l1_region),
            cleanup,
        )
        for resolved in selection.adapters
    ]
    evictions = [
        _eviction_of(resolved, adapter, registry, quotas)
        for resolved, adapter in zip(selection.adapters, adapters, strict=True)
    ]
    tier = L2Tier(
        adapters,
        l1,
        registry.builder.store_policy(selection.store_policy),
        registry.builder.prefetch_policy(selection.prefetch_policy),
        max_in_flight=config.l2_policies.l2_prefetch_max_in_flight,
        evictions=evictions,
    )
    tier.events = bus
    return tier


def _start_adapter(
    resolved: ResolvedAdapter,
    registry: PluginRegistry,
    context: L2AdapterContext,
    cleanup: ExitStack,
) -> L2AdapterV1:
    try:
        adapter = registry.builder.l2_adapter(resolved.spec, resolved.config, context)
        adapter.start()
    except Exception as exc:
        raise StartupError(f"--l2-adapter #{resolved.index}: cannot start: {exc}") from exc
    cleanup.callback(adapter.close)
    return adapter


def _eviction_of(
    resolved: ResolvedAdapter, adapter: L2AdapterV1, registry: PluginRegistry, quotas: QuotaManager
) -> AdapterEviction | None:
    """The adapter's ``eviction`` block built into a controller entry, and its quota tier."""
    tier_name = f"l2[{resolved.index}]:{adapter.name}"
    block = getattr(resolved.config, "eviction", None)
    if block is None or resolved.eviction_policy is None:
        quotas.add_tier(tier_name, _usage_of(adapter), enforcing=False)
        return None
    settings = EvictionSettings(
        block.trigger_watermark, block.eviction_ratio, adapter.capacity_bytes, quotas
    )
    policy = registry.builder.eviction_policy(resolved.eviction_policy, settings)
    isolated = isinstance(policy, IsolatedEvictionPolicy)
    # Quotas work without a capacity; a global policy has nothing to enforce without one.
    if not adapter.capacity_bytes and not isolated:
        raise StartupError(
            f"--l2-adapter #{resolved.index} ({resolved.spec.name}): an eviction block "
            f"with the global policy {block.eviction_policy!r} needs a capacity "
            "(max_capacity_gb > 0); only IsolatedLRU works without one"
        )
    quotas.add_tier(tier_name, _usage_of(adapter), enforcing=isolated)
    return AdapterEviction(policy, block.trigger_watermark, block.eviction_ratio)


def _usage_of(adapter: L2AdapterV1) -> Callable[[], dict[str, int]]:
    """The adapter's bytes per salt, as a quota tier's usage function."""
    return lambda: adapter.usage().by_salt
