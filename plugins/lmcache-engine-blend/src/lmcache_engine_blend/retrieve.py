"""``cb_retrieve_pre_computed``: reused chunks' KV written into the paged cache.

This module holds the gates, the plan and the CPU (``cpu_shm``) write; a CUDA
worker's write is :mod:`~lmcache_engine_blend.device_retrieve`'s, from the same plan.

For every matched token position ``p`` of ``[cur_st, cur_ed)`` the stored row of
``old_st + (p - cur_st)`` goes to slot ``block_table[p // bs] * bs + p % bs`` of
every layer, K re-rotated from its old position to ``p`` (chunks whose position
did not change are copied as stored), V bit for bit. It is one batch: the
chunks' rows are staged (and rotated) together, then each layer takes one
indexed write per plane; there is no Python loop over tokens or blocks.

The gates follow upstream's order (§7.1 of the reference), with every request
answered: an unregistered worker or one without RoPE state gets ``(b"", False)``
at once (upstream sent no reply). Everything is checked before the first byte is
written, so a failure leaves every slot as it was (all or nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from lmcache_engine_default.cuda_workers import CudaWorker
from lmcache_engine_default.lmcache_driven import TransferResult
from lmcache_engine_default.workers import MappedWorker, WorkerTable

from lmcache_core.engine.contract import RequestContext
from lmcache_core.engine.lookup import LookupService
from lmcache_core.protocol.errors import BadRequestError
from lmcache_core.protocol.types import CBMatchResult, WireCacheKey
from lmcache_core.storage.keys import ObjectKey, pack_kv_rank
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.transfer.layout import KVLayout
from lmcache_engine_blend.device_retrieve import DeviceRetrieves, fresh_event
from lmcache_engine_blend.events import BlendEvents
from lmcache_engine_blend.registration import RopeRegistry
from lmcache_engine_blend.rerope import RequestRotation
from lmcache_engine_blend.rope import GroupRotation, RopeState
from lmcache_engine_blend.scatter import scatter_rows
from lmcache_engine_blend.unified_lookup import UnifiedLookups

logger = logging.getLogger("lmcache.engine.blend")

APPLIED_PER_WORKER = 4096
"""Applied ranges remembered per ``(request, worker)`` (upstream's cap)."""
APPLIED_REQUESTS = 65536
"""``(request, worker)`` pairs remembered, the oldest forgotten first."""

_DONE = TransferResult(b"", True)
_FAILED = TransferResult(b"", False)


@dataclass(frozen=True)
class Plan:
    """A checked retrieve: what to read, where to write it, how to rotate it."""

    matches: list[CBMatchResult]
    keys: list[ObjectKey]
    slots_block: torch.Tensor
    slots_offset: torch.Tensor
    rotation: GroupRotation | None


class BlendRetrieves:
    """Serves ``cb_retrieve_pre_computed``.

    Args:
        workers: Registered workers (their mapped paged caches).
        ropes: RoPE states.
        lookups: The prefix lookup service (sessions, lock release).
        unified: The unified lookups (their stashes).
        l1: The L1 tier.
        chunk_size: Tokens per chunk.
        events: Blend events.
    """

    def __init__(
        self,
        *,
        workers: WorkerTable,
        ropes: RopeRegistry,
        lookups: LookupService,
        unified: UnifiedLookups,
        l1: L1Manager,
        chunk_size: int,
        events: BlendEvents,
    ) -> None:
        self.workers = workers
        self.ropes = ropes
        self.lookups = lookups
        self.unified = unified
        self.l1 = l1
        self.chunk_size = chunk_size
        self.events = events
        self._applied: OrderedDict[tuple[str, int], OrderedDict[tuple[object, ...], None]] = (
            OrderedDict()
        )
        self._applied_lock = threading.Lock()
        self.written_chunks = 0
        self.device = DeviceRetrieves(l1, chunk_size)

    def cb_retrieve_pre_computed(
        self,
        ctx: RequestContext,
        key: WireCacheKey,
        match_results: list[CBMatchResult],
        block_ids: list[list[int]],
        instance_id: int,
        event: bytes,
    ) -> TransferResult:
        """Write the matched chunks' KV into the worker's blocks; ``ok`` = every row is backed.

        A CPU (``cpu_shm``) worker is written here, synchronously (``event`` is ignored, as
        upstream's CPU backend does); a CUDA worker on its stream after ``event``
        (:mod:`~lmcache_engine_blend.device_retrieve`), every reply then carrying a freshly
        recorded server event.
        """
        started = time.time()
        if key.worker_id is None:
            raise BadRequestError("cb_retrieve_pre_computed needs a key with worker_id set")
        _check_matches(match_results, self.chunk_size)
        worker: MappedWorker | CudaWorker | None = self.workers.mapped.get(instance_id)
        if worker is None:
            worker = self.workers.cuda.get(instance_id)
        rope = self.ropes.get(instance_id)
        if worker is None or rope is None:
            logger.warning(
                "cb_retrieve_pre_computed: worker %d is %s",
                instance_id,
                "not registered" if worker is None else "without rope state",
            )
            return _FAILED
        table = block_ids[0] if block_ids else []
        gate = self._gate(key, worker, sorted(match_results, key=lambda m: m.cur_st), table)
        if isinstance(gate, TransferResult):
            return _answer(worker, gate.ok)
        fresh, signatures = gate
        keys = self._keys(key, fresh)
        try:
            plan = self._plan(worker, rope, fresh, keys, table)
        except ValueError as exc:
            logger.warning("cb_retrieve_pre_computed: %s", exc)
            self._ended(key, False, str(exc), fresh, 0, started)
            return _answer(worker, False)
        if ctx.expired():  # the worker may have given up and reused its blocks: write nothing
            self._ended(key, False, "deadline", fresh, 0, started)
            return _answer(worker, False)
        reply = _DONE
        if isinstance(worker, CudaWorker):
            done = self.device.write(ctx, worker, plan, rope, event)
            reply = TransferResult(done.event, done.ok)
            outcome, rotated = done.reason, done.rotated
        else:
            outcome, rotated = self._locked_write(worker, plan, rope)
        if outcome:
            self._ended(key, False, outcome, fresh, 0, started)
            return TransferResult(reply.event, False)
        self.lookups.consume_locks(self.lookups.sessions.get(key.request_id), keys)
        self._record((key.request_id, key.worker_id), signatures)
        self.written_chunks += len(fresh)
        self._ended(key, True, "", fresh, rotated, started)
        return reply

    def _gate(
        self,
        key: WireCacheKey,
        worker: MappedWorker | CudaWorker,
        matches: list[CBMatchResult],
        table: Sequence[int],
    ) -> TransferResult | tuple[list[CBMatchResult], list[tuple[object, ...]]]:
        """Upstream's gates: a reply now, or the matches to write and their signatures."""
        assert key.worker_id is not None
        layout = worker.layout
        signature = {id(m): _signature(m, table, layout.block_size) for m in matches}
        with self._applied_lock:
            done = self._applied.get((key.request_id, key.worker_id), OrderedDict())
            fresh = [m for m in matches if signature[id(m)] not in done]
        if matches and not fresh:
            self.events.retrieve_noop(key, "already_applied", 0)
            return _DONE
        bound = len(table) * layout.block_size
        if any(m.cur_ed > bound for m in fresh):
            if all(m.cur_st >= bound for m in fresh):
                return _DONE  # beyond the blocks allocated so far: locks kept for the next call
            self.events.retrieve_noop(key, "matches_straddle_alloc", len(fresh))
            return _FAILED
        if not fresh:
            self.events.retrieve_noop(key, "no_object_keys", 0)
            return _DONE
        return fresh, [signature[id(m)] for m in fresh]

    def _locked_write(self, worker: MappedWorker, plan: Plan, rope: RopeState) -> tuple[str, int]:
        """Write under a read lock of every object: ``("", rotated)`` or ``(why it failed, 0)``."""
        present = self.l1.lock_for_read(plan.keys, 1)  # held only for the copy
        held = [k for k, ok in zip(plan.keys, present, strict=True) if ok]
        try:
            if len(held) != len(plan.keys):
                return "missing_objects", 0
            try:
                return "", self._write(worker, plan, rope)
            except ValueError as exc:
                logger.warning("cb_retrieve_pre_computed: %s", exc)
                return str(exc), 0
        finally:
            self.l1.unlock(held, 1)

    # -- planning ----------------------------------------------------------------------------

    def _keys(self, key: WireCacheKey, matches: Sequence[CBMatchResult]) -> list[ObjectKey]:
        """This worker's object key of each match: from the lookup's stash, else computed."""
        assert key.worker_id is not None
        stash = self.unified.take_stash(key.request_id)
        rank = key.worker_id
        keys = []
        for m in matches:
            stashed = stash.per_hash.get(m.hash) if stash is not None else None
            if stashed is not None and rank < len(stashed):
                keys.append(stashed[rank])
            else:
                kv_rank = pack_kv_rank(key.world_size, rank)
                keys.append(ObjectKey(m.hash, key.model_name, kv_rank, 0, key.cache_salt))
        return keys

    def _plan(
        self,
        worker: MappedWorker | CudaWorker,
        rope: RopeState,
        matches: list[CBMatchResult],
        keys: list[ObjectKey],
        table: Sequence[int],
    ) -> Plan:
        """Slots and rotation of every matched token; raises ValueError on anything unusable."""
        layout = worker.layout
        bs = layout.block_size
        if self.chunk_size % bs:
            raise ValueError(f"chunk size {self.chunk_size} is not a multiple of block size {bs}")
        positions = torch.cat(
            [torch.arange(m.cur_st, m.cur_ed, dtype=torch.int64) for m in matches]
        )
        blocks = torch.as_tensor(list(table), dtype=torch.int64)
        block_index = positions // bs
        slot_block = blocks[block_index]
        if slot_block.numel() and (
            int(slot_block.min()) < 0 or int(slot_block.max()) >= layout.num_blocks
        ):
            raise ValueError(f"a block id is outside [0, {layout.num_blocks})")
        rotation = rope.rotation(0, layout.hidden, layout.kv_size, layout.dtype)
        return Plan(matches, keys, slot_block, positions % bs, rotation)

    # -- writing -----------------------------------------------------------------------------

    def _write(self, worker: MappedWorker, plan: Plan, rope: RopeState) -> int:
        """Rotate and scatter chunk by chunk; returns the tokens rotated.

        Each plane of each layer of a chunk is one indexed write straight from
        the L1 object (V, and K at an unchanged position) or from the chunk's
        re-rotated K; nothing is staged, so every byte of V is copied once.
        """
        layout = worker.layout
        views = self.l1.read_views(plan.keys)
        counts = [m.cur_ed - m.cur_st for m in plan.matches]
        moved = [plan.rotation is not None and m.old_st != m.cur_st for m in plan.matches]
        rotation = None
        if plan.rotation is not None and any(moved):
            # Every moved token's tables in one gather for the whole request.
            shifted = [m for m, is_moved in zip(plan.matches, moved, strict=True) if is_moved]
            rotation = RequestRotation(
                plan.rotation,
                torch.cat([torch.arange(m.old_st, m.old_ed, dtype=torch.int64) for m in shifted]),
                torch.cat([torch.arange(m.cur_st, m.cur_ed, dtype=torch.int64) for m in shifted]),
                rope.kv_quant,
            )
        slots = plan.slots_block * layout.block_size + plan.slots_offset
        rotated_buffer: torch.Tensor | None = None
        start = rotated = 0
        for raw, count, is_moved in zip(views, counts, moved, strict=True):
            obj = _object_view(raw, layout, self.chunk_size)
            where = slice(start, start + count)
            chunk_slots, blk, off = slots[where], plan.slots_block[where], plan.slots_offset[where]
            for plane in range(layout.kv_size):
                rows = obj[plane, :, :count]  # [layers, tokens, hidden]
                if plane == 0 and is_moved:
                    assert rotation is not None
                    if rotated_buffer is None or rotated_buffer.shape != rows.shape:
                        rotated_buffer = torch.empty_like(rows)
                    rows = rotation.rotate(rows, rotated, rotated_buffer)
                    rotated += count
                for layer_index, layer in enumerate(worker.cache.layers):
                    scatter_rows(layer, plane, layout, rows[layer_index], chunk_slots, blk, off)
            start += count
        return rotated

    # -- bookkeeping -------------------------------------------------------------------------

    def _record(self, applied_key: tuple[str, int], signatures: list[tuple[object, ...]]) -> None:
        with self._applied_lock:
            done = self._applied.setdefault(applied_key, OrderedDict())
            self._applied.move_to_end(applied_key)
            for sig in signatures:
                done[sig] = None
            while len(done) > APPLIED_PER_WORKER:
                done.popitem(last=False)
            while len(self._applied) > APPLIED_REQUESTS:
                self._applied.popitem(last=False)

    def forget(self, request_id: str) -> None:
        """The request ended: forget its applied ranges."""
        with self._applied_lock:
            for applied_key in [k for k in self._applied if k[0] == request_id]:
                del self._applied[applied_key]

    def _ended(
        self,
        key: WireCacheKey,
        success: bool,
        reason: str,
        matches: Sequence[CBMatchResult],
        rotated: int,
        started: float,
    ) -> None:
        self.events.retrieve_ended(
            key,
            success=success,
            reason=reason,
            num_chunks=len(matches),
            num_tokens=sum(m.cur_ed - m.cur_st for m in matches),
            rotated_tokens=rotated,
            duration_s=time.time() - started,
        )


def _answer(worker: MappedWorker | CudaWorker, ok: bool) -> TransferResult:
    """A reply with nothing enqueued: a fresh server event for a CUDA worker (as upstream)."""
    if isinstance(worker, CudaWorker):
        return TransferResult(fresh_event(worker), ok)
    return _DONE if ok else _FAILED


def _check_matches(matches: Sequence[CBMatchResult], size: int) -> None:
    """Refuse segments that are not one chunk long at both positions, or negative."""
    for m in matches:
        if m.cur_ed - m.cur_st != m.old_ed - m.old_st or not 0 < m.cur_ed - m.cur_st <= size:
            raise BadRequestError(f"match {m} does not span one chunk at both positions")
        if m.cur_st < 0 or m.old_st < 0:
            raise BadRequestError(f"match {m} has a negative position")


def _signature(m: CBMatchResult, table: Sequence[int], block_size: int) -> tuple[object, ...]:
    """What makes a write the same write: the chunk, its target range and target blocks."""
    first, last = m.cur_st // block_size, -(-m.cur_ed // block_size)
    return (m.hash, m.cur_st, m.cur_ed, tuple(table[first:last]))


def _object_view(raw: torch.Tensor, layout: KVLayout, tokens: int) -> torch.Tensor:
    """An L1 object's bytes as ``[kv_size, layers, tokens, hidden]`` in the KV dtype."""
    shape = layout.object_shape(tokens)
    try:
        return raw.view(layout.dtype).view(shape)
    except RuntimeError:  # an odd address: copy instead of reinterpreting in place
        return raw.clone().view(layout.dtype).view(shape)
