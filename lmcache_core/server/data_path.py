"""Build the data path: L1, the engine plugin, and the request server that serves it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lmcache_core.engine import Engine, EngineContext
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.errors import StartupError
from lmcache_core.hashing import make_hasher
from lmcache_core.lifecycle import Component, Health
from lmcache_core.server.context import ServerContext
from lmcache_core.server.request_server import RequestServer
from lmcache_core.storage.arena import Arena, ArenaError, ArenaKind
from lmcache_core.storage.eviction import EvictionSettings, IsolatedEvictionPolicy
from lmcache_core.storage.l1 import L1Controller, L1Manager
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.context import L2AdapterContext
from lmcache_core.storage.l2.tier import AdapterEviction, L2Tier
from lmcache_core.storage.quota import QuotaManager

logger = logging.getLogger("lmcache.server")

GIB = 1 << 30


def arena_plan(shm_name: str | None, cuda: bool) -> tuple[ArenaKind, str | None]:
    """Which memory backs L1, from ``--shm-name`` and whether CUDA is present.

    Unset: a shared-memory pool that CPU workers map (pinned memory on a CUDA host);
    ``""``: no shared pool (bytes travel inline); a name: that shared segment.
    """
    if shm_name:
        return "shm", shm_name
    if cuda:
        return "pinned", None
    return ("anonymous", None) if shm_name == "" else ("shm", None)


class L1Component:
    """L1 as a server component: its upkeep thread, and its memory at stop."""

    name = "l1"

    def __init__(self, manager: L1Manager) -> None:
        self.manager = manager
        self.controller = L1Controller(manager)

    def start(self) -> None:
        """Start expiry and watermark eviction."""
        self.controller.start()

    def stop(self, timeout: float) -> None:
        """Stop upkeep and release the arena (unlinking its shared segment)."""
        self.controller.stop(timeout)
        self.manager.close()

    def health(self) -> Health:
        """Healthy while upkeep runs."""
        usage = self.manager.usage()
        detail = (
            f"{usage.used_bytes}/{usage.capacity_bytes} bytes in {usage.resident_objects} objects"
        )
        return Health(self.controller.running, detail)


class EngineComponent:
    """Closes the engine after the request server has stopped."""

    name = "engine"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self) -> None:
        """Nothing to start: the engine's own components start separately."""

    def stop(self, timeout: float) -> None:
        """Release the engine's registrations and mappings."""
        self.engine.close()

    def health(self) -> Health:
        """Always healthy: the engine has no thread of its own."""
        return Health(True, type(self.engine).__name__)


@dataclass
class DataPath:
    """The built pieces, for ``/status``."""

    l1: L1Manager
    engine: Engine
    request_server: RequestServer
    components: list[Component]
    quotas: QuotaManager = field(default_factory=QuotaManager)
    """Per-salt limits (the HTTP quota API), enforced by tiers whose policy is isolated."""

    def status(self) -> dict[str, Any]:
        """L1 usage, engine state and request counters."""
        usage = self.l1.usage()
        return {
            "endpoint": self.request_server.endpoint,
            "l1": {
                "kind": self.l1.arena.kind,
                "shm_name": self.l1.arena.shm_name,
                "used_bytes": usage.used_bytes,
                "capacity_bytes": usage.capacity_bytes,
                "limit_bytes": usage.limit_bytes,
                "resident_objects": usage.resident_objects,
                "staged_objects": usage.staged_objects,
                "locked_objects": usage.locked_objects,
            },
            "engine": self.engine.status(),
            "requests": vars(self.request_server.stats),
        }


def build_l2(
    context: ServerContext, l1: L1Manager, quotas: QuotaManager | None = None
) -> L2Tier | None:
    """The adapters of every ``--l2-adapter`` (started, cascade order) and their policies.

    Each adapter is registered with ``quotas`` (when given) as the tier
    ``l2[<index>]:<type>``, enforcing when its eviction policy is isolated.
    """
    selection, registry = context.selection, context.registry
    if not selection.adapters:
        return None
    adapters: list[L2AdapterV1] = []
    try:
        for resolved in selection.adapters:
            adapter = registry.builder.l2_adapter(
                resolved.spec,
                resolved.config,
                L2AdapterContext.from_config(context.config, resolved.index),
            )
            adapter.start()
            adapters.append(adapter)
    except Exception as exc:
        for adapter in adapters:
            adapter.close()
        raise StartupError(f"--l2-adapter #{len(adapters) + 1}: cannot start: {exc}") from exc
    evictions: list[AdapterEviction | None] = []
    for resolved, adapter in zip(selection.adapters, adapters, strict=True):
        block = getattr(resolved.config, "eviction", None)
        if block is None:
            evictions.append(None)
            if quotas is not None:
                quotas.add_tier(
                    _tier_name(resolved.index, adapter), _usage_of(adapter), enforcing=False
                )
            continue
        settings = EvictionSettings(
            block.trigger_watermark, block.eviction_ratio, adapter.capacity_bytes, quotas
        )
        try:
            assert resolved.eviction_policy is not None  # resolved with its block
            policy = registry.builder.eviction_policy(resolved.eviction_policy, settings)
        except Exception:
            for opened in adapters:
                opened.close()
            raise
        isolated = isinstance(policy, IsolatedEvictionPolicy)
        # Quotas work without a capacity; a global policy has nothing to enforce without one.
        if not adapter.capacity_bytes and not isolated:
            for opened in adapters:
                opened.close()
            raise StartupError(
                f"--l2-adapter #{resolved.index} ({resolved.spec.name}): an eviction block "
                f"with the global policy {block.eviction_policy!r} needs a capacity "
                "(max_capacity_gb > 0); only IsolatedLRU works without one"
            )
        if quotas is not None:
            quotas.add_tier(
                _tier_name(resolved.index, adapter), _usage_of(adapter), enforcing=isolated
            )
        evictions.append(AdapterEviction(policy, block.trigger_watermark, block.eviction_ratio))
    return L2Tier(
        adapters,
        l1,
        registry.builder.store_policy(selection.store_policy),
        registry.builder.prefetch_policy(selection.prefetch_policy),
        max_in_flight=context.config.l2_policies.l2_prefetch_max_in_flight,
        evictions=evictions,
    )


def _tier_name(index: int, adapter: L2AdapterV1) -> str:
    """How the quota API names an L2 adapter: ``l2[<1-based --l2-adapter index>]:<type>``."""
    return f"l2[{index}]:{adapter.name}"


def _usage_of(adapter: L2AdapterV1) -> Callable[[], dict[str, int]]:
    """The adapter's bytes per salt, as a quota tier's usage function."""
    return lambda: adapter.usage().by_salt


def build_data_path(context: ServerContext) -> DataPath:
    """Create L1, the eviction policy, the engine and the request server.

    Raises:
        StartupError: Memory for L1 cannot be had, or a plugin fails to build.
    """
    config, registry = context.config, context.registry
    capacity = int(config.l1.l1_size_gb * GIB)
    init = (
        min(int(config.l1.l1_init_size_gb * GIB), capacity) if config.l1.l1_use_lazy else capacity
    )
    kind, name = arena_plan(config.mp.shm_name, torch.cuda.is_available())
    try:
        arena = Arena(
            capacity + config.l1.l1_align_bytes,
            kind=kind,
            name=name,
            populate=not config.l1.l1_use_lazy,
        )
    except (ArenaError, OSError) as exc:
        raise StartupError(f"--l1-size-gb: cannot allocate the L1 arena: {exc}") from None
    # One quota table for every tier; in memory only (lost on restart), like upstream's.
    quotas = QuotaManager()
    policy = registry.builder.eviction_policy(
        context.selection.eviction_policy,
        EvictionSettings.from_config(config.eviction, capacity, quotas),
    )
    l1 = L1Manager(
        arena=arena,
        capacity_bytes=capacity,
        init_bytes=init,
        align_bytes=config.l1.l1_align_bytes,
        write_ttl_s=config.l1_ttl.l1_write_ttl_seconds,
        read_ttl_s=config.l1_ttl.l1_read_ttl_seconds,
        policy=policy,
        trigger_watermark=config.eviction.eviction_trigger_watermark,
        eviction_ratio=config.eviction.eviction_ratio,
    )
    l1.events = context.bus
    token_cache = TokenHashCache(make_hasher(config.mp.hash_algorithm), config.mp.chunk_size)
    quotas.add_tier("l1", l1.bytes_by_salt, enforcing=isinstance(policy, IsolatedEvictionPolicy))
    l2 = build_l2(context, l1, quotas)
    if l2 is not None:
        l2.events = context.bus
    engine = registry.builder.engine(
        context.selection.engine,
        EngineContext(config, registry, context.selection, l1, token_cache, l2, context.bus),
    )
    server = RequestServer(
        config.mp.host,
        config.mp.port,
        engine.handlers(),
        affinity_workers=config.mp.max_gpu_workers,
        cpu_workers=config.mp.max_cpu_workers,
    )
    components: list[Component] = [
        L1Component(l1),
        *([l2] if l2 is not None else []),
        *engine.components(),
        EngineComponent(engine),
        server,
    ]
    return DataPath(l1, engine, server, components, quotas)
