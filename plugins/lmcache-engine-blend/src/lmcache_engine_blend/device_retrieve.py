"""``cb_retrieve_pre_computed`` for a worker whose KV cache is on a GPU (the device path).

The retrieve's gates and plan are :mod:`~lmcache_engine_blend.retrieve`'s; this module
writes a checked plan into a CUDA worker's paged cache, on the worker's affinity thread and
its transfer stream, with the ordering of :mod:`lmcache_core.transfer.transfer_ordering`:

1. the L1 objects are read-locked here, before anything is enqueued (a missing one fails the
   retrieve with nothing written);
2. the stream waits for the worker's event, then, batch by batch of chunks: **one** H2D DMA
   per run of objects adjacent in the host arena into a device staging buffer, **one**
   gather of every batch token's K and V rows (all layers), K re-rotated for the moved
   chunks by one batched :class:`~lmcache_engine_blend.rerope.RequestRotation` call, and
   **one** indexed write per layer and plane over all the batch's tokens (no Python loop
   over tokens or blocks);
3. an event is recorded after the writes; the reply carries it (a freshly recorded server
   event, as upstream), the read locks are released only once the copies completed, and a
   deadline that passes first answers ``ok=False`` with the event (the locks are released in
   the background when the copies really completed).

A request's chunks go in batches of at most :data:`STAGING_BYTES` of objects (one batch for
every request whose matches fit: 4 Llama-3-8B chunks of 256 tokens, 32 MiB each); each batch
costs a fixed number of launches plus two per layer. The batch bounds what the server
allocates on the worker's GPU meanwhile: the staging, the gathered rows (as much again) and
the rotation's fp32 scratch (twice that for NeoX bf16 K, once for GPT-J): about 4x
:data:`STAGING_BYTES` at most, returned to torch's caching allocator after the request.

Everything that can be checked is checked before the first byte is enqueued (object sizes,
block ids, positions against the cos/sin cache), so such a failure leaves every slot
untouched. A device fault after the enqueue answers ``ok=False``: the client then recomputes
the whole request, overwriting whatever was written.

The code is device-agnostic torch: the CPU tests run it on CPU tensors with a FAKE importer
and a FAKE thread stream (``plugins/lmcache-engine-blend/tests/test_device_retrieve.py``),
``tests/gpu/test_blend_gpu.py`` on CUDA.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from lmcache_engine_default.cuda_workers import CudaWorker
from lmcache_engine_default.lmcache_driven import DEVICE_WAIT_CAP_S

from lmcache_core.protocol.types import CBMatchResult
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.transfer.staged_copy import host_runs
from lmcache_core.transfer.transfer_ordering import TransferSteps
from lmcache_engine_blend.rerope import RequestRotation, check_positions
from lmcache_engine_blend.rope import GroupRotation, RopeState
from lmcache_engine_blend.scatter import scatter_rows

if TYPE_CHECKING:
    from lmcache_core.engine.contract import RequestContext
    from lmcache_engine_blend.retrieve import Plan

logger = logging.getLogger("lmcache.engine.blend")

STAGING_BYTES = 128 << 20
"""The most bytes of L1 objects staged on the device at once (one batch of a retrieve)."""

_SAME_SIZE = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


@dataclass(frozen=True)
class DeviceOutcome:
    """What a device retrieve answered.

    Attributes:
        event: The server event's IPC handle (empty when the stream could not be used).
        ok: Every matched row is backed by written KV.
        reason: Why not (empty when ``ok``).
        rotated: Tokens whose K was re-rotated.
    """

    event: bytes
    ok: bool
    reason: str
    rotated: int


def fresh_event(worker: CudaWorker) -> bytes:
    """A server event recorded now on the worker's stream (a gate's reply on CUDA).

    Upstream always answers a CUDA worker with a freshly recorded event; an empty handle
    only when the worker's tensors cannot even be imported (then the retrieve fails).
    """
    try:
        return worker.ready().stream.record().ipc_handle()
    except Exception as exc:  # noqa: BLE001 - any device error: the reply carries no event
        logger.warning("worker %d: no stream to record an event on: %s", worker.instance_id, exc)
        return b""


class DeviceRetrieves:
    """Writes checked plans into CUDA workers' paged caches.

    Args:
        l1: The L1 tier (its objects are read and read-locked here).
        chunk_size: Tokens per chunk (object).
        staging_bytes: The most object bytes staged on the device at once.
    """

    def __init__(self, l1: L1Manager, chunk_size: int, staging_bytes: int = STAGING_BYTES) -> None:
        self.l1 = l1
        self.chunk_size = chunk_size
        self.staging_bytes = staging_bytes
        # A rope state's cos/sin caches on each device, moved once per state (not per request).
        self._tables: dict[tuple[int, str], tuple[RopeState, tuple[torch.Tensor, ...]]] = {}
        self._tables_lock = threading.Lock()

    def write(
        self,
        ctx: RequestContext,
        worker: CudaWorker,
        plan: Plan,
        rope: RopeState,
        worker_event: bytes,
    ) -> DeviceOutcome:
        """Run the plan on the worker's stream and answer it (see the module docstring)."""
        nbytes = worker.layout.object_nbytes(self.chunk_size)
        try:
            ready = worker.ready()
        except Exception as exc:  # noqa: BLE001 - import failure: nothing can be written
            logger.warning("cb_retrieve_pre_computed: worker %d: %s", worker.instance_id, exc)
            return DeviceOutcome(b"", False, f"import failed: {exc}", 0)
        present = self.l1.lock_for_read(plan.keys, 1)
        held = [k for k, ok in zip(plan.keys, present, strict=True) if ok]
        if len(held) != len(plan.keys):
            self.l1.unlock(held, 1)
            return DeviceOutcome(fresh_event(worker), False, "missing_objects", 0)
        try:
            views = self.l1.read_views(plan.keys)
            job = self._job(worker, ready.cache.layers[0].device, plan, rope, views, nbytes)
        except ValueError as exc:
            self.l1.unlock(held, 1)
            logger.warning("cb_retrieve_pre_computed: %s", exc)
            return DeviceOutcome(fresh_event(worker), False, str(exc), 0)

        def release() -> None:
            self.l1.unlock(held, 1)
            worker.end()

        steps = TransferSteps(
            op="retrieve",
            copy=lambda: job.run(ready.cache.layers),
            commit=lambda: None,
            abort=lambda: None,
            release=release,
        )
        worker.begin()
        deadline = min(ctx.deadline, time.monotonic() + DEVICE_WAIT_CAP_S)
        result = worker.runtime.transfers.run(ready.stream, worker_event, steps, deadline)
        if not result.ok:
            reason = "deadline" if ctx.expired() else "device transfer failed"
            return DeviceOutcome(result.event, False, reason, 0)
        return DeviceOutcome(result.event, True, "", job.rotated)

    def forget(self, instance_id: int) -> None:
        """The worker went away: drop its device copies of the cos/sin caches."""
        with self._tables_lock:
            for key in [k for k in self._tables if k[0] == instance_id]:
                del self._tables[key]

    # -- planning (host side, before anything is enqueued) -------------------------------------

    def _job(
        self,
        worker: CudaWorker,
        device: torch.device,
        plan: Plan,
        rope: RopeState,
        views: Sequence[torch.Tensor],
        nbytes: int,
    ) -> _DeviceJob:
        """Check everything and lay out the batches; raises ValueError (nothing enqueued)."""
        for index, view in enumerate(views):
            if view.dtype != torch.uint8 or view.dim() != 1 or view.numel() != nbytes:
                raise ValueError(f"L1 object {index} is not a {nbytes}-byte uint8 vector")
        rotation = plan.rotation
        if rotation is not None:
            rotation = replace(rotation, cache=self._device_cache(worker, rope, rotation, device))
            moved = [m for m in plan.matches if m.old_st != m.cur_st]
            if moved:
                check_positions(rotation, 0, max(max(m.old_ed, m.cur_ed) for m in moved))
        per_batch = max(1, self.staging_bytes // nbytes)
        batches = []
        start = 0
        for first in range(0, len(plan.matches), per_batch):
            matches = plan.matches[first : first + per_batch]
            count = sum(m.cur_ed - m.cur_st for m in matches)
            batches.append(
                _Batch.build(
                    matches,
                    views[first : first + per_batch],
                    plan.slots_block[start : start + count],
                    plan.slots_offset[start : start + count],
                    worker.layout.block_size,
                    rotation is not None,
                )
            )
            start += count
        return _DeviceJob(worker, device, rotation, rope.kv_quant, batches, nbytes, self.chunk_size)

    def _device_cache(
        self, worker: CudaWorker, rope: RopeState, rotation: GroupRotation, device: torch.device
    ) -> torch.Tensor:
        """The rotation's cos/sin cache on ``device``, copied once per rope state."""
        if rotation.cache.device == device:
            return rotation.cache
        key = (worker.instance_id, str(device))
        index = next(i for i, c in enumerate(rope.caches) if c is rotation.cache)
        with self._tables_lock:
            held = self._tables.get(key)
            if held is None or held[0] is not rope:
                with worker.runtime.device(worker.mappings.ordinal or 0):
                    moved = tuple(c.to(device) for c in rope.caches)
                self._tables[key] = (rope, moved)
                held = self._tables[key]
        return held[1][index]


@dataclass(frozen=True)
class _Batch:
    """One staged batch: its objects and, per gathered token, where it comes from and goes.

    The tokens are ordered moved chunks first, so the K rows to rotate are one slice.

    Attributes:
        views: The batch's L1 objects (host).
        index: ``[5, tokens]`` int64: staged chunk, token in chunk, target slot, block, offset.
        positions: ``[2, moved tokens]`` int64: old and new positions of the moved tokens.
    """

    views: Sequence[torch.Tensor]
    index: torch.Tensor
    positions: torch.Tensor

    @property
    def moved(self) -> int:
        return int(self.positions.shape[1])

    @staticmethod
    def build(
        matches: Sequence[CBMatchResult],
        views: Sequence[torch.Tensor],
        blocks: torch.Tensor,
        offsets: torch.Tensor,
        block_size: int,
        rotates: bool,
    ) -> _Batch:
        # Host-side index building: a few small tensors per chunk, none per token.
        starts, at = [], 0
        for m in matches:
            starts.append(at)
            at += m.cur_ed - m.cur_st
        moved = [i for i, m in enumerate(matches) if rotates and m.old_st != m.cur_st]
        kept = set(moved)
        order = moved + [i for i in range(len(matches)) if i not in kept]
        chunk, token, rows = [], [], []
        for i in order:
            count = matches[i].cur_ed - matches[i].cur_st
            chunk.append(torch.full((count,), i, dtype=torch.int64))
            token.append(torch.arange(count, dtype=torch.int64))
            rows.append(torch.arange(starts[i], starts[i] + count, dtype=torch.int64))
        where = torch.cat(rows)
        blk, off = blocks[where], offsets[where]
        index = torch.stack((torch.cat(chunk), torch.cat(token), blk * block_size + off, blk, off))
        old = [torch.arange(matches[i].old_st, matches[i].old_ed, dtype=torch.int64) for i in moved]
        new = [torch.arange(matches[i].cur_st, matches[i].cur_ed, dtype=torch.int64) for i in moved]
        empty = torch.empty(0, dtype=torch.int64)
        positions = torch.stack(
            (torch.cat(old) if old else empty, torch.cat(new) if new else empty)
        )
        return _Batch(views, index, positions)


class _DeviceJob:
    """The enqueued part of a device retrieve: runs inside the stream's ``submit``."""

    def __init__(
        self,
        worker: CudaWorker,
        device: torch.device,
        rotation: GroupRotation | None,
        kv_quant: str,
        batches: list[_Batch],
        nbytes: int,
        chunk_size: int,
    ) -> None:
        self.layout = worker.layout
        self.device = device
        self.rotation = rotation
        self.kv_quant = kv_quant
        self.batches = batches
        self.nbytes = nbytes
        self.chunk_size = chunk_size
        self.rotated = sum(b.moved for b in batches)

    def run(self, layers: Sequence[torch.Tensor]) -> None:
        """Enqueue every batch on the current stream (staging reused batch after batch).

        Reusing the staging is safe: the stream runs the next batch's DMA only after the
        previous batch's writes, and everything here is allocated on that stream.
        """
        layout = self.layout
        largest = max(len(b.views) for b in self.batches)
        staging = torch.empty(largest * self.nbytes, dtype=torch.uint8, device=self.device)
        shape = (-1, *layout.object_shape(self.chunk_size))
        for batch in self.batches:
            count = len(batch.views)
            for first, run in host_runs(batch.views, self.nbytes):
                head = batch.views[first]
                source = head if run == 1 else head.as_strided((run * self.nbytes,), (1,))
                staging[first * self.nbytes : (first + run) * self.nbytes].copy_(
                    source, non_blocking=True
                )
            # Moved as integers of the element's size: the gather is bitwise whatever the
            # dtype (indexing has no fp8 kernel on every device); rotated as the KV dtype.
            objects = staging[: count * self.nbytes].view(_SAME_SIZE[layout.itemsize])
            objects = objects.view(shape)
            index = batch.index.to(self.device, non_blocking=True)
            chunk, token, slots, blk, off = index.unbind(0)
            # [kv, layers, chunks, tokens, hidden] -> every batch token's rows, all layers.
            rows = objects.permute(1, 2, 0, 3, 4)[:, :, chunk, token]
            if batch.moved:
                assert self.rotation is not None
                positions = batch.positions.to(self.device, non_blocking=True)
                keys = rows[0, :, : batch.moved].view(layout.dtype)
                rotation = RequestRotation(
                    self.rotation, positions[0], positions[1], self.kv_quant, checked=True
                )
                rotation.rotate(keys, 0, keys)
            for plane in range(layout.kv_size):
                for layer_index, layer in enumerate(layers):
                    scatter_rows(layer, plane, layout, rows[plane, layer_index], slots, blk, off)
