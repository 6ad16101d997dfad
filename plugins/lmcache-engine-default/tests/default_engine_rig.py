"""An in-process default engine over a real L1, for the collaborators' unit tests.

No server and no sockets: the tests call the engine's handlers directly, the
way the request server's threads do, and look at L1 afterwards. Everything is
built from the core (no other plugin is needed). The fixtures are in
``conftest.py``; this module holds what the tests import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from lmcache_engine_default.engine import DefaultEngine, build_engine

from lmcache_core.config.loading import load_config
from lmcache_core.config.resolution import Selection
from lmcache_core.engine import EngineContext
from lmcache_core.engine.contract import RequestContext
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.hashing import make_hasher
from lmcache_core.observability.bus import EventBus
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.plugin.specs import (
    EngineSpec,
    EvictionPolicySpec,
    PrefetchPolicySpec,
    StorePolicySpec,
)
from lmcache_core.protocol.types import EngineDrivenRegistration, WireCacheKey
from lmcache_core.storage.arena import Arena
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.tier import L2Tier
from lmcache_core.testing.engine_fakes import FifoPolicy

CHUNK = 16
MIB = 1 << 20
CTX = RequestContext(b"client", "op")
"""What the request server passes every handler (the engine ignores it)."""


@dataclass
class Rig:
    """An engine, its L1 and its eviction policy double."""

    engine: DefaultEngine
    l1: L1Manager
    policy: FifoPolicy

    def call(self, op: str, *args: Any) -> Any:
        """Call a handler as the request server does."""
        return self.engine.handlers()[op](CTX, *args)


def _selection() -> Selection:
    def unused(*_args: Any) -> Any:
        raise AssertionError("the engine builds no other plugin")

    return Selection(
        engine=EngineSpec(name="default", factory=build_engine),
        eviction_policy=EvictionPolicySpec(name="fifo", factory=unused),
        store_policy=StorePolicySpec(name="default", factory=unused),
        prefetch_policy=PrefetchPolicySpec(name="default", factory=unused),
    )


class StoreEverywhere:
    """Store policy double: every adapter, and keep the objects in L1."""

    keep_in_l1 = True

    def targets(self, count: int) -> range:
        return range(count)


class FirstHolder:
    """Prefetch policy double: load from the first adapter that holds a key; keep it."""

    temporary = False

    def choose(self, holders: Sequence[int]) -> int:
        return holders[0]


def make_rig(
    *, shared: bool = True, mode: str = "auto", l2_adapters: Sequence[L2AdapterV1] = ()
) -> Rig:
    """An engine (its components started) over a 4 MiB L1, shared-memory or private.

    With ``l2_adapters``, an L2 tier of them (started) sits behind L1.
    """
    policy = FifoPolicy()
    l1 = L1Manager(
        arena=Arena(4 * MIB + 4096, kind="shm" if shared else "anonymous"),
        capacity_bytes=4 * MIB,
        init_bytes=4 * MIB,
        align_bytes=4096,
        write_ttl_s=60,
        read_ttl_s=60,
        policy=policy,
        trigger_watermark=0.8,
        eviction_ratio=0.2,
    )
    l2 = None
    if l2_adapters:
        l2 = L2Tier(l2_adapters, l1, StoreEverywhere(), FirstHolder(), max_in_flight=2)
        l2.start()
    config = load_config(
        {
            "l1_size_gb": 0.01,
            "eviction_policy": "fifo",
            "chunk_size": CHUNK,
            "supported_transfer_mode": mode,
        }
    )
    context = EngineContext(
        config=config,
        registry=PluginRegistry(strict=True),
        selection=_selection(),
        l1=l1,
        token_cache=TokenHashCache(make_hasher("blake3"), CHUNK),
        l2=l2,
        events=EventBus(enabled=False),
    )
    engine = build_engine(context)
    for component in engine.components():
        component.start()
    return Rig(engine, l1, policy)


def close_rig(rig: Rig) -> None:
    """Close the engine, stop its components in reverse order, then L2 and L1."""
    rig.engine.close()
    for component in reversed(rig.engine.components()):
        component.stop(5.0)
    if rig.engine.l2 is not None:
        rig.engine.l2.stop(5.0)
    rig.l1.close()


def tokens(chunks: int, seed: int = 0) -> list[int]:
    """Token ids of ``chunks`` full chunks (distinct per seed)."""
    return [seed * 1_000_000 + i for i in range(chunks * CHUNK)]


def wire_key(
    token_ids: list[int],
    start: int,
    end: int,
    request_id: str,
    *,
    worker_id: int | None = 0,
    world_size: int = 1,
) -> WireCacheKey:
    """A key as the server decodes it (tokens kept as raw msgpack)."""
    return WireCacheKey(
        model_name="model",
        world_size=world_size,
        worker_id=worker_id,
        token_ids=msgspec.Raw(msgspec.msgpack.encode(token_ids)),
        start=start,
        end=end,
        request_id=request_id,
    )


def registration(instance_id: int, *, world_size: int = 1) -> EngineDrivenRegistration:
    """An engine_driven registration of a small layout (2 layers, 2 heads of 16, fp16)."""
    return EngineDrivenRegistration(
        instance_id=instance_id,
        model_name="model",
        world_size=world_size,
        block_size=4,
        num_layers=2,
        hidden_dim_size=32,
        dtype_str="float16",
        use_mla=False,
        num_physical_slots=CHUNK,
    )
