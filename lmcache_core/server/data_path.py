"""Build the data path: L1, the L2 tier, the engine plugin and the request server.

Each builder takes exactly what it needs (configuration, registry, the resolved
selection, the bus) and returns finished objects; :func:`build_data_path` returns
them as one frozen :class:`DataPath`. Everything opened along the way is registered
on the caller's :class:`~contextlib.ExitStack` and closed if a later step fails,
so a plugin factory that raises leaks no arena, adapter or engine.
"""

from __future__ import annotations

import logging
import mmap
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch

from lmcache_core.config.resolution import Selection
from lmcache_core.config.server import ServerConfig
from lmcache_core.engine import Engine, EngineContext
from lmcache_core.engine.contract import Handler, RequestContext
from lmcache_core.engine.lookup import refuse_hash_lookups
from lmcache_core.engine.miss_explainer import MissExplainer
from lmcache_core.engine.sessions import SessionTable
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.errors import StartupError
from lmcache_core.hashing import make_hasher
from lmcache_core.kv_events.log import KVEventLog
from lmcache_core.kv_events.recorder import KVEventRecorder
from lmcache_core.kv_events.service import KVEventService
from lmcache_core.lifecycle import Component
from lmcache_core.observability.bus import EventBus
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.protocol.hash_lookup import hash_lookup_capability
from lmcache_core.protocol.kv_event_records import KV_EVENT_CAPABILITY
from lmcache_core.security.keyring import ApiKeyRing
from lmcache_core.server.data_path_components import EngineComponent, L1Component
from lmcache_core.server.devdax_l1 import DevdaxPlan, plan_devdax_l1, without_lender
from lmcache_core.server.l2_assembly import build_l2
from lmcache_core.server.request_server import RequestServer
from lmcache_core.storage.arena import Arena, ArenaError, ArenaKind
from lmcache_core.storage.eviction import EvictionSettings, IsolatedEvictionPolicy
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.l2.tier import L2Tier
from lmcache_core.storage.pinning import CudaHostRegistrar, HostRegistrar, LazyPinner, PinningError
from lmcache_core.storage.quota import QuotaManager
from lmcache_core.storage.quota_state import QuotaStateFile
from lmcache_core.storage.removal_history import L1_TIER

logger = logging.getLogger("lmcache.server")

GIB = 1 << 30


def arena_plan(shm_name: str | None, cuda: bool) -> tuple[ArenaKind, str | None]:
    """Which memory backs L1, from ``--shm-name`` and whether CUDA is present.

    Unset: a shared-memory pool that CPU workers map (private memory on a CUDA host,
    pinned by :func:`build_pinning`); ``""``: no shared pool (bytes travel inline); a
    name: that shared segment (on a CUDA host it is pinned too, so engine_driven and
    lmcache_driven workers share one L1).
    """
    if shm_name:
        return "shm", shm_name
    if cuda or shm_name == "":
        return "anonymous", None
    return "shm", None


LAZY_DOWNGRADED = (
    "--l1-use-lazy: lazy allocation relies on CUDA host pinning and torch sees no CUDA "
    "device; downgraded to eager allocation (the whole --l1-size-gb is allocatable from "
    "the start, unpinned; the kernel commits pages on first touch)"
)


@dataclass(frozen=True)
class DataPath:
    """The built data path.

    Attributes:
        l1: The L1 tier.
        l2: The L2 tier, or ``None`` without ``--l2-adapter``.
        sessions: The engine's session table, or ``None`` if it keeps none.
        engine: The engine plugin's object.
        quotas: Per-salt limits (the HTTP quota API), enforced by tiers whose
            policy is isolated.
        request_server: The ZeroMQ server dispatching to the engine.
        kv_events: The KV event stream's service, or ``None`` when disabled
            (``--kv-event-log-size 0`` or ``--disable-observability``).
        components: In start order (L1, L2, the engine's own, the engine, the
            request server).
        explainer: The miss explanations' memories and the ring of recent
            lookups (``GET /lookups``), shared by L1, L2 and the engine.
    """

    l1: L1Manager
    l2: L2Tier | None
    sessions: SessionTable | None
    engine: Engine
    quotas: QuotaManager
    request_server: RequestServer
    components: tuple[Component, ...]
    explainer: MissExplainer | None = None
    kv_events: KVEventService | None = None

    def status(self) -> dict[str, Any]:
        """L1 usage, engine state and request counters, for ``/status``."""
        segment = self.l1.arena
        return {
            "endpoint": self.request_server.endpoint,
            "l1": {
                "kind": segment.kind,
                "shm_name": segment.shm_name,
                **(
                    {"devdax_path": str(segment.devdax_path), "dram_bytes": segment.dram_bytes}
                    if segment.devdax_path is not None
                    else {}
                ),
                **self.l1.usage().as_dict(),
                "pinning": self.l1.pinning_status(),
            },
            "engine": self.engine.status(),
            "requests": self.request_server.requests_status(),
            "streams": self.request_server.streams_status(),
            "kv_events": (
                self.kv_events.status() if self.kv_events is not None else {"enabled": False}
            ),
        }


def build_l1(
    config: ServerConfig,
    registry: PluginRegistry,
    selection: Selection,
    quotas: QuotaManager,
    bus: EventBus,
    cleanup: ExitStack,
    devdax: DevdaxPlan | None = None,
) -> L1Manager:
    """The L1 arena, its eviction policy and manager; registered as quota tier ``l1``.

    With ``--l1-devdax-path`` the arena is the DAX mapping (behind ``--l1-size-gb``
    of DRAM when a ``dax`` adapter lends the device; see :mod:`.devdax_l1`), and L1's
    capacity is the whole arena.

    Raises:
        StartupError: The arena's memory cannot be had.
    """
    l1_config = config.l1
    capacity = int(l1_config.l1_size_gb * GIB)
    cuda = torch.cuda.is_available()
    lazy = l1_config.l1_use_lazy
    if lazy and not cuda:
        logger.warning(LAZY_DOWNGRADED)
    if devdax is None:
        devdax = plan_devdax_l1(config, selection)
    try:
        if devdax is not None:
            # Lazy is refused with a DAX L1: every page is committed now.
            arena = Arena(
                devdax.total_bytes,
                kind="devdax",
                path=devdax.path,
                dram_bytes=devdax.dram_bytes,
                populate=True,
            )
            capacity = arena.size_bytes - l1_config.l1_align_bytes
        else:
            kind, name = arena_plan(config.mp.shm_name, cuda)
            # Lazy on a CUDA host: pages are committed as they are pinned, not all at start.
            arena = Arena(
                capacity + l1_config.l1_align_bytes, kind=kind, name=name, populate=not lazy
            )
    except (ArenaError, OSError) as exc:
        flag = "--l1-devdax-path" if devdax is not None else "--l1-size-gb"
        raise StartupError(f"{flag}: cannot allocate the L1 arena: {exc}") from None
    cleanup.callback(arena.close)  # L1Manager.close closes it too; closing is idempotent
    policy = registry.builder.eviction_policy(
        selection.eviction_policy, EvictionSettings.from_config(config.eviction, capacity, quotas)
    )
    # A DAX arena is not host-registered: registering a DAX mapping with CUDA has not been
    # tried on any machine (no Device-DAX device with a GPU), so it is not claimed.
    pinned = cuda and devdax is None
    l1 = L1Manager(
        arena=arena,
        capacity_bytes=capacity,
        init_bytes=0 if pinned else capacity,  # when pinned, the pinner raises the limit
        align_bytes=l1_config.l1_align_bytes,
        write_ttl_s=config.l1_ttl.l1_write_ttl_seconds,
        read_ttl_s=config.l1_ttl.l1_read_ttl_seconds,
        policy=policy,
        trigger_watermark=config.eviction.eviction_trigger_watermark,
        eviction_ratio=config.eviction.eviction_ratio,
    )
    if pinned:
        init = min(int(l1_config.l1_init_size_gb * GIB), capacity) if lazy else capacity
        l1.pinning = build_pinning(l1, init, CudaHostRegistrar(), cleanup)
    l1.events = bus
    quotas.add_tier("l1", l1.bytes_by_salt, enforcing=isinstance(policy, IsolatedEvictionPolicy))
    return l1


def build_pinning(
    l1: L1Manager, init_bytes: int, registrar: HostRegistrar, cleanup: ExitStack
) -> LazyPinner:
    """Pin ``init_bytes`` of L1 now; the rest grows when :class:`L1Component` starts.

    The L1's limit follows what is pinned (nothing is allocated in unpinned memory).

    Raises:
        StartupError: The first registration failed.
    """
    l1.hand_growth_to_pinning()
    pinner = LazyPinner(
        l1.arena.data_ptr() + l1.objects_base,
        l1.capacity_bytes,
        init_bytes=init_bytes,
        registrar=registrar,
        on_grow=l1.extend_limit,
        unit=max(l1.align_bytes, mmap.PAGESIZE),
    )
    cleanup.callback(pinner.close)  # runs before arena.close (LIFO): unregister, then unmap
    try:
        pinner.pin_initial()
    except PinningError as exc:
        raise StartupError(
            f"--l1-init-size-gb: cannot pin {pinner.init_bytes} bytes of L1: {exc} "
            "(check the locked-memory limit, ulimit -l)"
        ) from None
    return pinner


def build_quotas(config: ServerConfig) -> QuotaManager:
    """One quota table for every tier, restored from ``--quota-state-file`` when given.

    Raises:
        StartupError: The state file cannot be read or holds an invalid table.
    """
    path = config.eviction.quota_state_file
    if path is None:
        return QuotaManager()
    store = QuotaStateFile(path)
    quotas = QuotaManager(store=store)
    try:
        quotas.restore(store.load())
    except ValueError as exc:  # QuotaStateError included
        raise StartupError(f"--quota-state-file: {exc}") from None
    logger.info("restored %d quotas from %s", len(quotas.limits()), path)
    return quotas


def build_data_path(
    config: ServerConfig,
    registry: PluginRegistry,
    selection: Selection,
    bus: EventBus,
    cleanup: ExitStack,
    api_keys: ApiKeyRing | None = None,
) -> DataPath:
    """Create L1, L2, the engine and the request server from the resolved selection.

    Everything opened is registered on ``cleanup``, which the caller unwinds if
    assembly fails later and pops once the lifecycle owns the components.
    ``api_keys`` are the keys every request must carry (none: no key needed).

    Raises:
        StartupError: Memory for L1 cannot be had, or a plugin fails to build.
    """
    quotas = build_quotas(config)
    devdax = plan_devdax_l1(config, selection)
    if devdax is not None and devdax.lender is not None:
        logger.info(
            "--l1-devdax-path: --l2-adapter #%d (dax) lends %d bytes of %s to L1 as overflow "
            "and is not built",
            devdax.lender.index,
            devdax.dax_bytes,
            devdax.path,
        )
    selection = without_lender(selection, devdax)
    l1 = build_l1(config, registry, selection, quotas, bus, cleanup, devdax)
    l2 = build_l2(config, registry, selection, l1, quotas, bus, cleanup)
    if quotas.enforced_by and not quotas.persistent:
        logger.warning(
            "quotas live in memory only: after a restart the IsolatedLRU tiers (%s) evict "
            "every cache_salt until its quota is set again; pass --quota-state-file to keep them",
            ", ".join(quotas.enforced_by),
        )
    explainer = attach_explainer(selection, l1, l2)
    token_cache = TokenHashCache(make_hasher(config.mp.hash_algorithm), config.mp.chunk_size)
    kv_events = build_kv_events(config, bus, token_cache)
    engine = registry.builder.engine(
        selection.engine,
        EngineContext(config, registry, selection, l1, token_cache, l2, bus, explainer),
    )
    cleanup.callback(engine.close)
    handlers = dict(engine.handlers())
    if kv_events is not None:
        handlers.update(kv_events.handlers())
        handlers["get_experimental"] = with_capability(handlers["get_experimental"])
    if "lookup_hashes" in handlers:
        if engine.needs_tokens:
            handlers["lookup_hashes"] = refuse_hash_lookups
        elif "get_experimental" in handlers:
            capability = hash_lookup_capability(config.mp.hash_algorithm, config.mp.chunk_size)
            handlers["get_experimental"] = with_capability(handlers["get_experimental"], capability)
    server = RequestServer(
        config.mp.host,
        config.mp.port,
        handlers,
        affinity_workers=config.mp.max_gpu_workers,
        cpu_workers=config.mp.max_cpu_workers,
        api_keys=api_keys,
        deadline_s=config.mp.request_deadline_seconds,
    )
    components: tuple[Component, ...] = (
        L1Component(l1),
        *([l2] if l2 is not None else []),
        *engine.components(),
        EngineComponent(engine),
        server,
    )
    return DataPath(
        l1, l2, engine.sessions, engine, quotas, server, components, explainer, kv_events
    )


def attach_explainer(selection: Selection, l1: L1Manager, l2: L2Tier | None) -> MissExplainer:
    """One miss explainer whose memories L1 and every L2 adapter record into.

    Each tier is named (``l1``, ``l2[<index>]:<type>``) with its eviction
    policy, so an explanation says which policy evicted a chunk.
    """
    explainer = MissExplainer()
    removals = explainer.removals
    removals.name_tier(L1_TIER, "l1", selection.eviction_policy.name)
    l1.removals, l1.namespaces = removals, explainer.namespaces
    if l2 is not None:
        l2.removals, l2.namespaces = removals, explainer.namespaces
        for resolved, adapter in zip(selection.adapters, l2.adapters, strict=True):
            policy = resolved.eviction_policy
            removals.name_tier(
                resolved.index,
                f"l2[{resolved.index}]:{adapter.name}",
                policy.name if policy is not None else None,
            )
    return explainer


def build_kv_events(
    config: ServerConfig, bus: EventBus, token_cache: TokenHashCache
) -> KVEventService | None:
    """The KV event stream: its log fed from the bus, tokens bound as they are hashed.

    ``None`` when ``--kv-event-log-size`` is 0 or the bus is off
    (``--disable-observability``): the log's records come from the bus.
    """
    if config.mp.kv_event_log_size == 0 or not bus.enabled:
        return None
    log = KVEventLog(config.mp.kv_event_log_size)
    bus.subscribe(KVEventRecorder(log, bus))
    token_cache.binder = log
    return KVEventService(log)


def with_capability(handler: Handler, capability: str = KV_EVENT_CAPABILITY) -> Handler:
    """``get_experimental`` that also lists ``capability``.

    By default the KV event stream (upstream's clients check it); also the
    hash-carrying lookup (:func:`hash_lookup_capability`, our client checks it).
    """

    def get_experimental(ctx: RequestContext) -> list[str]:
        listed = list(handler(ctx))
        return listed if capability in listed else [*listed, capability]

    return get_experimental
