"""The six operations of the original CacheBlend, over a contiguous CB buffer.

Served by name only (their old numeric ids collide with upstream 0.5.6's
table). A worker registers one ``[2, L, T, D]`` buffer (``cpu_shm``) per
instance; then:

* ``cb_store_pre_computed(key, offset, instance_id, event)``: ``key.token_ids``
  is one document (no separators). Its full chunks, hashed from the document's
  own start (the chain restarts at the document, so its KV is keyed by content
  wherever it will be reused), are copied from buffer tokens
  ``[offset + i*C, +C)`` into L1 (and queued for L2), and fingerprinted at
  ``old_st = i*C``.
* ``cb_store_final(key, offset, instance_id, event)``: the same for a whole
  request, so its chunks are reachable by ordinary prefix lookups too.
* ``cb_lookup_pre_computed_v2(key)``: every fingerprinted chunk found in the
  request (any offset), sorted by position; overlapping matches are dropped
  greedily (leftmost first); runs of consecutive matches are groups. Per group,
  the chunks are read-locked in L1 or loaded from L2 (for every rank), and the
  leading run that every rank has is kept; the group's chunks shown to be gone
  are removed from the index. The locks are recorded in the request's session.
* ``cb_retrieve_pre_computed_v2(key, matches, offset, instance_id, event)``:
  each matched chunk's object is copied to buffer tokens
  ``[offset + cur_st, +C)``, all or nothing; no RoPE correction (the legacy
  engine fixes positions and recomputes). One of the lookup's locks per key is
  given back, whether or not the copy happened.

Differences from upstream, on purpose: every error is a typed error reply
(upstream raised, and the client waited for its timeout); the lookup never
busy-polls (L2 loads are bounded by the tier's timeouts); its locks are released
by the retrieve or at ``end_session`` (upstream: the read TTL only); a chunk is
removed from the index only on evidence that it is gone (not found in L1 or
L2, or its load failed), not just for following a gap; and the index is
namespaced per model, world size and cache salt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
from lmcache_engine_default.store_completion import StoreCompletion

from lmcache_core.engine.chunk_keys import ChunkKeys
from lmcache_core.engine.contract import Handler
from lmcache_core.engine.lookup import LookupService
from lmcache_core.engine.sessions import Session
from lmcache_core.protocol.codec import ProtocolError, decode_device_handles
from lmcache_core.protocol.errors import BadRequestError, NotRegisteredError
from lmcache_core.protocol.types import CBMatchResult, WireCacheKey
from lmcache_core.storage.errors import L1FullError
from lmcache_core.storage.keys import ObjectKey, pack_kv_rank
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.l2.tier import L2Tier
from lmcache_engine_blend_legacy.buffers import BufferTable, CBBuffer, map_cb_buffer
from lmcache_engine_blend_legacy.events import LegacyEvents
from lmcache_engine_blend_legacy.fingerprints import FingerprintIndex, Match, as_tokens

if TYPE_CHECKING:
    from lmcache_core.engine.contract import RequestContext

logger = logging.getLogger("lmcache.engine.blend_legacy")

_tokens_decoder = msgspec.msgpack.Decoder(list[int])


class LegacyResult(NamedTuple):
    """``(completion event handle, ok)`` on the wire; the handle is empty (the copy is done)."""

    event: bytes
    ok: bool


_DONE = LegacyResult(b"", True)
_FAILED = LegacyResult(b"", False)


class LegacyBlendOps:
    """Handlers of the legacy CacheBlend operations.

    Args:
        l1: The L1 tier.
        l2: The L2 tier, or None.
        chunk_keys: Hashes and object keys of requests.
        lookups: The engine's lookup service (sessions and their read locks).
        completion: Publishes stores and queues them for L2.
        buffers: The registered CB buffers.
        index: The fingerprint index.
        events: Publishes the ``cb.*`` events.
    """

    def __init__(
        self,
        *,
        l1: L1Manager,
        l2: L2Tier | None,
        chunk_keys: ChunkKeys,
        lookups: LookupService,
        completion: StoreCompletion,
        buffers: BufferTable,
        index: FingerprintIndex,
        events: LegacyEvents,
    ) -> None:
        self.l1 = l1
        self.l2 = l2
        self.chunk_keys = chunk_keys
        self.chunk_size = chunk_keys.chunk_size
        self.lookups = lookups
        self.completion = completion
        self.buffers = buffers
        self.index = index
        self.events = events
        self.stats = {"stores": 0, "stored_chunks": 0, "lookups": 0, "matches": 0, "retrieves": 0}

    def handlers(self) -> dict[str, Handler]:
        """Operation name -> handler."""
        return {
            "cb_register_kv_cache": self.cb_register_kv_cache,
            "cb_unregister_kv_cache": self.cb_unregister_kv_cache,
            "cb_store_pre_computed": self.cb_store_pre_computed,
            "cb_store_final": self.cb_store_final,
            "cb_lookup_pre_computed_v2": self.cb_lookup_pre_computed_v2,
            "cb_retrieve_pre_computed_v2": self.cb_retrieve_pre_computed_v2,
        }

    # -- registration ---------------------------------------------------------------

    def cb_register_kv_cache(
        self,
        _ctx: RequestContext,
        instance_id: int,
        kv_caches: list[msgspec.msgpack.Ext],
        model_name: str,
        world_size: int,
    ) -> None:
        """Map the instance's ``[2, L, T, D]`` buffer; registering again replaces it."""
        if not model_name or "@" in model_name or not 1 <= world_size <= 0xFF:
            raise BadRequestError("cb_register_kv_cache: bad model_name or world_size")
        try:
            handles = decode_device_handles(kv_caches)
        except ProtocolError as exc:
            raise BadRequestError(str(exc)) from None
        buffer = map_cb_buffer(instance_id, handles, model_name, world_size)
        if buffer.num_tokens < self.chunk_size:
            buffer.close()
            raise BadRequestError(
                f"the CB buffer holds {buffer.num_tokens} tokens, less than one chunk "
                f"({self.chunk_size})"
            )
        self.buffers.add(buffer)
        logger.info(
            "registered CB buffer of instance %d: %s, world size %d, %s",
            instance_id,
            model_name,
            world_size,
            buffer.status()["shape"],
        )

    def cb_unregister_kv_cache(self, _ctx: RequestContext, instance_id: int) -> None:
        """Unmap the instance's buffer (an unknown instance is only logged, as upstream)."""
        if not self.buffers.remove(instance_id):
            logger.warning("cb_unregister_kv_cache: instance %d has no CB buffer", instance_id)

    # -- store ---------------------------------------------------------------------

    def cb_store_pre_computed(
        self, _ctx: RequestContext, key: WireCacheKey, offset: int, instance_id: int, _event: bytes
    ) -> LegacyResult:
        """Store one document's full chunks from the buffer at ``offset``; fingerprint them."""
        return self._store("cb_store_pre_computed", key, offset, instance_id)

    def cb_store_final(
        self, _ctx: RequestContext, key: WireCacheKey, offset: int, instance_id: int, _event: bytes
    ) -> LegacyResult:
        """Store a whole request's full chunks (reachable by prefix lookups); fingerprint them."""
        return self._store("cb_store_final", key, offset, instance_id)

    def _store(self, op: str, key: WireCacheKey, offset: int, instance_id: int) -> LegacyResult:
        """Copy ``key``'s full chunks from buffer tokens ``offset + i*C`` into L1.

        ``ok`` is true only if every chunk is in L1 afterwards (stored now or
        already there). Checks run before any byte moves.
        """
        buffer = self._buffer(op, key, instance_id)
        if key.start != 0:
            raise BadRequestError(f"{op} stores whole sequences: start must be 0, not {key.start}")
        size = self.chunk_size
        count = key.end // size
        if not count:
            return _DONE
        if offset < 0 or offset + count * size > buffer.num_tokens:
            raise BadRequestError(
                f"{op}: tokens [{offset}, {offset + count * size}) are outside the CB buffer "
                f"of {buffer.num_tokens} tokens"
            )
        session = self.lookups.sessions.get(key.request_id)
        hashes = self.chunk_keys.hashes(key, session, count)
        rank = key.worker_id if key.worker_id is not None else 0
        keys = self.chunk_keys.keys(key, hashes, rank)
        nbytes = buffer.object_nbytes(size)
        try:
            reservations = self.l1.reserve(keys, nbytes)
        except L1FullError as exc:
            logger.warning("%s of %d chunks refused: %s", op, count, exc)
            return _FAILED
        staged = [(i, r) for i, r in enumerate(reservations) if r is not None]
        others = [keys[i] for i, r in enumerate(reservations) if r is None]
        try:
            for index, reservation in staged:
                target = buffer.as_object(self.l1.buffer(reservation), size)
                target.copy_(buffer.chunk(offset + index * size, size))
        except BaseException:
            self.l1.abort([r for _, r in staged])
            raise
        if staged:
            self.l1.commit([r for _, r in staged])
            self.completion.committed([r for _, r in staged], nbytes)
        ok = self.completion.visible(others)
        self.stats["stores"] += 1
        self.stats["stored_chunks"] += len(staged)
        if ok and key.worker_id in (0, None):  # one index for every rank: rank 0 registers
            tokens = self._tokens(key)[: count * size]
            self.events.registered(self.index.register(_space(key), tokens, hashes))
        return LegacyResult(b"", ok)

    # -- lookup --------------------------------------------------------------------

    def cb_lookup_pre_computed_v2(
        self, ctx: RequestContext, key: WireCacheKey
    ) -> list[CBMatchResult]:
        """The stored chunks found in the request and now held for it (see the module)."""
        started = time.time()
        self.stats["lookups"] += 1
        space = _space(key)
        every = self.index.match(space, self._tokens(key))
        matches = _non_overlapping(every, self.chunk_size)
        self.events.lookup_started(key)
        outcome = {"matches": len(every), "fingerprint_hits": len(matches), "stale": 0}
        if not matches:
            self.events.lookup_ended(
                key, [], **outcome, removed=0, no_context=False, duration_s=time.time() - started
            )
            return []
        buffer = self.buffers.for_model(key.model_name, key.world_size)
        if buffer is None:  # the object size is only known from a registered buffer
            logger.warning(
                "cb_lookup_pre_computed_v2: no CB buffer registered for %s (world size %d)",
                key.model_name,
                key.world_size,
            )
            self.events.lookup_ended(
                key, [], **outcome, removed=0, no_context=True, duration_s=time.time() - started
            )
            return []
        nbytes = buffer.object_nbytes(self.chunk_size)
        readers = max(1, key.num_kv_readers)
        ranks = [key.worker_id] if key.worker_id is not None else list(range(key.world_size))
        session = self.lookups.sessions.get(key.request_id)
        found: list[Match] = []
        stale: list[bytes] = []
        for group in _groups(matches, self.chunk_size):
            rows = [
                [
                    ObjectKey(
                        m.hash, key.model_name, pack_kv_rank(key.world_size, r), 0, key.cache_salt
                    )
                    for r in ranks
                ]
                for m in group
            ]
            kept, evidence = self._hold_group(rows, nbytes, readers, session, ctx.deadline)
            found.extend(group[:kept])
            stale.extend(
                m.hash for m, there in zip(group[kept:], evidence, strict=True) if not there
            )
        removed = self.index.remove(space, stale) if stale else 0
        self.stats["matches"] += len(found)
        size = self.chunk_size
        result = [
            CBMatchResult(m.old_st, m.old_st + size, m.cur_st, m.cur_st + size, m.hash)
            for m in found
        ]
        outcome["stale"] = len(stale)
        self.events.lookup_ended(
            key,
            result,
            **outcome,
            removed=removed,
            no_context=False,
            duration_s=time.time() - started,
        )
        return result

    def _hold_group(
        self,
        rows: list[list[ObjectKey]],
        nbytes: int,
        readers: int,
        session: Session,
        request_deadline: float,
    ) -> tuple[int, list[bool]]:
        """Read-lock the group's leading run (L1, then L2); record the locks in the session.

        The L2 loads end at ``request_deadline`` (``time.monotonic()``), so the
        lookup is answered within the request's deadline.

        Returns:
            How many leading chunks are held, and for each later chunk whether it
            may still be there (some rank in L1, or L2 not known to lack it): False
            is the evidence that makes it stale.
        """
        width = len(rows[0])
        flat = [k for row in rows for k in row]
        clock = self.lookups.sessions.clock
        deadline = clock() + self.l1.read_ttl_s
        hit = self.l1.lock_prefix(flat, width, readers)
        with session.mutex:
            session.take_locks(flat[: hit * width], readers, deadline)
        rest = rows[hit:]
        if not rest:
            return hit, []
        present = self.l1.contains([k for row in rest for k in row])
        # A chunk some rank still has in L1 is not stale: the other ranks' stores may
        # simply not have arrived yet (each rank stores its own shard).
        in_l1 = [any(present[i * width : (i + 1) * width]) for i in range(len(rest))]
        if self.l2 is None:
            return hit, in_l1
        result = self.l2.prefetch(rest, nbytes, readers, request_deadline)
        lead = result.chunks
        with session.mutex:
            session.take_locks([k for row in rest[:lead] for k in row], readers, deadline)
        # Past the leading run a chunk is gone only if L2 says it does not hold it (no
        # miss cause: every adapter answered) and no rank of it is in L1 either; a failed
        # load, a timeout or a gap before it is no evidence.
        gone = [
            not there and bool(result.misses) and result.misses[lead + i] is None
            for i, there in enumerate(in_l1[lead:])
        ]
        return hit + lead, [not g for g in gone]

    # -- retrieve ------------------------------------------------------------------

    def cb_retrieve_pre_computed_v2(
        self,
        _ctx: RequestContext,
        key: WireCacheKey,
        matches: list[CBMatchResult],
        offset: int,
        instance_id: int,
        _event: bytes,
    ) -> LegacyResult:
        """Copy each matched chunk into buffer tokens ``[offset + cur_st, +C)``, all or nothing."""
        op = "cb_retrieve_pre_computed_v2"
        buffer = self._buffer(op, key, instance_id)
        size = self.chunk_size
        for match in matches:
            if match.cur_ed - match.cur_st != size:
                raise BadRequestError(f"{op}: a match must cover one chunk of {size} tokens")
            start = offset + match.cur_st
            if start < 0 or start + size > buffer.num_tokens:
                raise BadRequestError(
                    f"{op}: tokens [{start}, {start + size}) are outside the CB buffer of "
                    f"{buffer.num_tokens} tokens"
                )
        if not matches:
            return _DONE
        rank = key.worker_id if key.worker_id is not None else 0
        kv_rank = pack_kv_rank(key.world_size, rank)
        keys = [ObjectKey(m.hash, key.model_name, kv_rank, 0, key.cache_salt) for m in matches]
        session = self.lookups.sessions.get(key.request_id)
        started = time.time()
        try:
            ok = self._copy_in(buffer, matches, keys, offset)
        finally:
            self.lookups.consume_locks(session, keys)
        self.stats["retrieves"] += 1
        self.events.retrieve_ended(key, matches, success=ok, duration_s=time.time() - started)
        return LegacyResult(b"", ok)

    def _copy_in(
        self, buffer: CBBuffer, matches: Sequence[CBMatchResult], keys: list[ObjectKey], offset: int
    ) -> bool:
        present = self.l1.lock_for_read(keys, 1)  # held only for the copy
        held = [k for k, ok in zip(keys, present, strict=True) if ok]
        try:
            if len(held) != len(keys):
                return False
            size = self.chunk_size
            for match, view in zip(matches, self.l1.read_views(keys), strict=True):
                buffer.chunk(offset + match.cur_st, size).copy_(buffer.as_object(view, size))
            return True
        finally:
            self.l1.unlock(held, 1)

    # -- checks --------------------------------------------------------------------

    def _buffer(self, op: str, key: WireCacheKey, instance_id: int) -> CBBuffer:
        buffer = self.buffers.get(instance_id)
        if buffer is None:
            raise NotRegisteredError(f"{op}: instance {instance_id} has no CB buffer registered")
        if (key.model_name, key.world_size) != (buffer.model_name, buffer.world_size):
            raise BadRequestError(
                f"{op}: the key is for {key.model_name!r} (world size {key.world_size}), the "
                f"buffer of instance {instance_id} for {buffer.model_name!r} "
                f"(world size {buffer.world_size})"
            )
        return buffer

    @staticmethod
    def _tokens(key: WireCacheKey) -> npt.NDArray[np.uint64]:
        try:
            return as_tokens(_tokens_decoder.decode(bytes(key.token_ids)))
        except (msgspec.DecodeError, msgspec.ValidationError, OverflowError) as exc:
            raise BadRequestError(f"token_ids: {exc}") from None

    def status(self) -> dict[str, object]:
        """Buffers, index and counters for ``/status``."""
        return {
            "cb_buffers": self.buffers.status(),
            "fingerprints": self.index.status(),
            "stats": dict(self.stats),
        }


def _space(key: WireCacheKey) -> tuple[str, int, str]:
    return (key.model_name, key.world_size, key.cache_salt)


def _non_overlapping(matches: list[Match], size: int) -> list[Match]:
    """Leftmost first, drop every match that overlaps one already kept (sorted by position)."""
    kept: list[Match] = []
    end = -1
    for match in sorted(matches, key=lambda m: m.cur_st):
        if match.cur_st >= end:
            kept.append(match)
            end = match.cur_st + size
    return kept


def _groups(matches: list[Match], size: int) -> list[list[Match]]:
    """Runs of matches that follow each other without a gap."""
    groups: list[list[Match]] = []
    for match in matches:
        if groups and groups[-1][-1].cur_st + size == match.cur_st:
            groups[-1].append(match)
        else:
            groups.append([match])
    return groups
