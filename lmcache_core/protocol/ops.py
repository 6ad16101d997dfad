"""The operation table: legacy ids, argument and result types, where each op runs."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec

from lmcache_core.protocol.kv_event_records import KVEventBatch
from lmcache_core.protocol.types import (
    BlockAllocationRecord,
    CacheKey,
    CBMatchResult,
    CBUnifiedLookupResult,
    EngineDrivenRegistration,
    EngineDrivenRegistrationReply,
    EngineGroupInfo,
    HashLookupKey,
    PrepareRetrieveReply,
    PrepareStoreReply,
    WireCacheKey,
)


class Execution(enum.Enum):
    """Where the server runs a handler.

    INLINE handlers are trivial and run on the ZeroMQ loop (so ``ping`` is never
    starved by other work); AFFINITY handlers run on the calling client's own
    thread of the transfer pool (one worker's transfers stay FIFO); POOL handlers
    run on the CPU pool. A STREAM handler runs on the loop too and returns a
    stream source whose batches a sender thread pushes, one per client credit.
    """

    INLINE = "inline"
    AFFINITY = "affinity"
    POOL = "pool"
    STREAM = "stream"


@dataclass(frozen=True)
class OpSpec:
    """One operation of the protocol.

    Attributes:
        name: The snake_case name (the string form of the op frame).
        legacy_id: Upstream's frozen numeric id, or None when sent by name.
        server_args: Types the server decodes each argument frame as.
        client_args: Types the client encodes them from (None: same).
        result: The result type (None: the reply has no result frame).
        execution: Where the server runs it.
    """

    name: str
    legacy_id: int | None
    server_args: tuple[Any, ...]
    result: Any
    execution: Execution
    client_args: tuple[Any, ...] | None = None


KEY_ARGS = (WireCacheKey, int)
KEY_CLIENT_ARGS = (CacheKey, int)

OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec(
            "register_kv_cache",
            1,
            (int, list[msgspec.msgpack.Ext], str, int, str, dict[str, Any], list[EngineGroupInfo]),
            None,
            Execution.AFFINITY,
        ),
        OpSpec("unregister_kv_cache", 2, (int,), None, Execution.AFFINITY),
        OpSpec(
            "store",
            6,
            (WireCacheKey, int, list[list[int]], bytes),
            tuple[bytes, bool],
            Execution.AFFINITY,
            client_args=(CacheKey, int, list[list[int]], bytes),
        ),
        OpSpec(
            "retrieve",
            7,
            (WireCacheKey, int, list[list[int]], bytes, int),
            tuple[bytes, bool],
            Execution.AFFINITY,
            client_args=(CacheKey, int, list[list[int]], bytes, int),
        ),
        OpSpec("lookup", 8, KEY_ARGS, None, Execution.POOL, client_args=KEY_CLIENT_ARGS),
        # Ours, sent by name (no upstream id): a lookup whose key carries chunk hashes.
        OpSpec("lookup_hashes", None, (HashLookupKey, int), None, Execution.POOL),
        OpSpec("query_prefetch_status", 9, (str,), int | None, Execution.INLINE),
        OpSpec("wait_prefetch_status", 10, (str, float), int | None, Execution.POOL),
        OpSpec(
            "free_lookup_locks", 12, KEY_ARGS, None, Execution.POOL, client_args=KEY_CLIENT_ARGS
        ),
        OpSpec("end_session", 13, (str,), None, Execution.POOL),
        OpSpec(
            "register_kv_cache_engine_driven_context",
            14,
            (EngineDrivenRegistration,),
            EngineDrivenRegistrationReply,
            Execution.AFFINITY,
        ),
        OpSpec("unregister_kv_cache_engine_driven_context", 15, (int,), None, Execution.AFFINITY),
        OpSpec(
            "prepare_store",
            16,
            KEY_ARGS,
            PrepareStoreReply,
            Execution.AFFINITY,
            client_args=KEY_CLIENT_ARGS,
        ),
        OpSpec(
            "commit_store",
            17,
            (WireCacheKey, int, bytes),
            bool,
            Execution.AFFINITY,
            client_args=(CacheKey, int, bytes),
        ),
        OpSpec(
            "prepare_retrieve",
            18,
            KEY_ARGS,
            PrepareRetrieveReply,
            Execution.AFFINITY,
            client_args=KEY_CLIENT_ARGS,
        ),
        OpSpec(
            "commit_retrieve", 19, KEY_ARGS, bool, Execution.AFFINITY, client_args=KEY_CLIENT_ARGS
        ),
        OpSpec("clear", 20, (bool,), None, Execution.POOL),
        OpSpec("get_chunk_size", 21, (), int, Execution.INLINE),
        OpSpec("ping", 22, (int | None,), bool, Execution.INLINE),
        OpSpec(
            "report_block_allocation",
            23,
            (int, str, list[BlockAllocationRecord]),
            None,
            Execution.POOL,
        ),
        OpSpec("noop", 24, (), str, Execution.INLINE),
        OpSpec("get_experimental", 32, (), list[str], Execution.INLINE),
        OpSpec("subscribe_kv_events", None, (int, str, int, int), KVEventBatch, Execution.STREAM),
        # CacheBlend V3 (served by the ``blend`` engine; the others answer "not supported").
        # Rope registration runs on the worker's affinity thread, after its register_kv_cache.
        OpSpec(
            "cb_register_rope",
            25,
            (
                int,
                list[msgspec.msgpack.Ext],
                int,
                bool,
                list[int],
                list[list[int]],
                list[int],
                str,
            ),
            None,
            Execution.AFFINITY,
        ),
        OpSpec("cb_unregister_rope", 26, (int,), None, Execution.AFFINITY),
        OpSpec(
            "cb_retrieve_pre_computed",
            27,
            (WireCacheKey, list[CBMatchResult], list[list[int]], int, bytes),
            tuple[bytes, bool],
            Execution.AFFINITY,
            client_args=(CacheKey, list[CBMatchResult], list[list[int]], int, bytes),
        ),
        OpSpec(
            "cb_unified_lookup",
            28,
            KEY_ARGS,
            CBUnifiedLookupResult | None,
            Execution.POOL,
            client_args=KEY_CLIENT_ARGS,
        ),
        OpSpec("cb_protocol_handshake", 33, (int,), tuple[int, bool], Execution.INLINE),
        OpSpec(
            "cb_reorder_plan",
            None,
            (WireCacheKey, int, int),
            list[int],
            Execution.POOL,
            client_args=(CacheKey, int, int),
        ),
    )
}
"""The operations this server implements."""

LEGACY_BLEND_OPS: tuple[OpSpec, ...] = (
    OpSpec(
        "cb_register_kv_cache",
        None,
        (int, list[msgspec.msgpack.Ext], str, int),
        None,
        Execution.AFFINITY,
    ),
    OpSpec("cb_unregister_kv_cache", None, (int,), None, Execution.AFFINITY),
    OpSpec(
        "cb_store_pre_computed",
        None,
        (WireCacheKey, int, int, bytes),
        tuple[bytes, bool],
        Execution.AFFINITY,
        client_args=(CacheKey, int, int, bytes),
    ),
    OpSpec(
        "cb_lookup_pre_computed_v2",
        None,
        (WireCacheKey,),
        list[CBMatchResult],
        Execution.POOL,
        client_args=(CacheKey,),
    ),
    OpSpec(
        "cb_retrieve_pre_computed_v2",
        None,
        (WireCacheKey, list[CBMatchResult], int, int, bytes),
        tuple[bytes, bool],
        Execution.AFFINITY,
        client_args=(CacheKey, list[CBMatchResult], int, int, bytes),
    ),
    OpSpec(
        "cb_store_final",
        None,
        (WireCacheKey, int, int, bytes),
        tuple[bytes, bool],
        Execution.AFFINITY,
        client_args=(CacheKey, int, int, bytes),
    ),
)
"""The original CacheBlend's operations (engine ``blend_legacy``), by name only.

Their numeric ids of that era collide with upstream 0.5.6's frozen table (25-28
and 33 are CacheBlend V3 operations there), so a frame carrying one of those
numbers means the V3 operation; the legacy ones are accepted only as names.
"""

OPS.update({spec.name: spec for spec in LEGACY_BLEND_OPS})

KNOWN_UNSUPPORTED: dict[str, int | None] = {
    "register_q_cache": 3,
    "unregister_q_cache": 4,
    "store_q": 5,
    "p2p_lookup_and_lock": 29,
    "p2p_query_lookup_results": 30,
    "p2p_unlock_objects": 31,
    "server_module_call": None,
}
"""Upstream operations this server knows by name but does not serve (an error reply)."""

LEGACY_IDS: dict[int, str] = {
    **{spec.legacy_id: name for name, spec in OPS.items() if spec.legacy_id is not None},
    **{op_id: name for name, op_id in KNOWN_UNSUPPORTED.items() if op_id is not None},
}
