"""``lmcache_driven`` transfers: the server copies KV between the worker's blocks and L1.

The worker registers its paged KV cache (shared memory, mapped here); ``store``
gathers a chunk-aligned window of blocks into L1 objects and ``retrieve``
scatters locked L1 objects back into blocks. Both run on the worker's own
affinity thread, so one worker's transfers stay in order.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from lmcache_core.engine.chunk_keys import ChunkWindow
from lmcache_core.engine.contract import Handler
from lmcache_core.engine.request_events import RequestEvents
from lmcache_core.engine.sessions import Session
from lmcache_core.protocol.codec import ProtocolError, decode_device_handles
from lmcache_core.protocol.errors import BadRequestError, NotSupportedError
from lmcache_core.protocol.types import CpuShmHandle, EngineGroupInfo, WireCacheKey
from lmcache_core.storage.errors import L1FullError
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.transfer.transfer_ordering import TransferSteps
from lmcache_engine_default.cuda_workers import CudaRuntime, CudaWorker, register_cuda_worker
from lmcache_engine_default.deadline_fence import copy_until_deadline
from lmcache_engine_default.transfer_parts import TransferParts, WorkerTransfers
from lmcache_engine_default.workers import MappedWorker, check_cuda_registration, map_worker

if TYPE_CHECKING:
    from lmcache_core.engine.contract import RequestContext

logger = logging.getLogger("lmcache.engine")

NULL_BLOCK_ID = 0
"""vLLM's null block: a chunk made only of it carries no KV and is never stored."""


class TransferResult(NamedTuple):
    """The reply of ``store`` and ``retrieve``: ``(completion event handle, ok)`` on the wire.

    The handle is empty: the copy is done when the reply is sent.
    """

    event: bytes
    ok: bool

    @classmethod
    def of(cls, ok: bool) -> TransferResult:
        """A result with no device work left (no completion event)."""
        return _DONE if ok else _FAILED


_DONE = TransferResult(b"", True)
_FAILED = TransferResult(b"", False)


@dataclass(frozen=True, slots=True)
class TransferPlan:
    """A checked store or retrieve: whose cache, which objects, which blocks."""

    worker: MappedWorker | CudaWorker
    session: Session
    keys: list[ObjectKey]
    block_ids: list[int]
    blocks_per_chunk: int


class LmcacheDrivenTransfers(WorkerTransfers):
    """``register_kv_cache``, ``unregister_kv_cache``, ``store`` and ``retrieve``.

    Args:
        parts: L1, workers, liveness, chunk keys, lookups and store completion.
        request_events: Where ``mp.store.*`` / ``mp.retrieve.*`` events go.
    """

    def __init__(self, parts: TransferParts, request_events: RequestEvents) -> None:
        super().__init__(parts)
        self.request_events = request_events
        self.deadline_misses = {"store": 0, "retrieve": 0}
        """Stores and retrieves answered ok=False because their deadline passed."""
        self._cuda: CudaRuntime | None = None
        self._cuda_lock = threading.Lock()

    def cuda_runtime(self) -> CudaRuntime:
        """The CUDA side, built at the first CUDA registration (never on a CPU host)."""
        with self._cuda_lock:
            if self._cuda is None:
                self._cuda = CudaRuntime()
            return self._cuda

    def cuda_status(self) -> dict[str, Any] | None:
        """Imported allocations and failed device transfers, or None before any CUDA use."""
        runtime = self._cuda
        if runtime is None:
            return None
        return {
            "imported_allocations": len(runtime.table),
            "references": runtime.table.references(),
            "deferred_transfers": runtime.deferred.pending,
            "failed_transfers": dict(runtime.failures),
        }

    def close(self) -> None:
        """Finish deferred device transfers and mapping releases (after workers.close())."""
        if self._cuda is not None:
            self._cuda.close()

    def handlers(self) -> dict[str, Handler]:
        """Operation name -> handler."""
        return {
            "register_kv_cache": self.register_kv_cache,
            "unregister_kv_cache": self.unregister_kv_cache,
            "store": self.store,
            "retrieve": self.retrieve,
        }

    def register_kv_cache(
        self,
        _ctx: RequestContext,
        instance_id: int,
        kv_cache: list[Any],
        model_name: str,
        world_size: int,
        _engine_type: str,
        layout_hints: dict[str, Any],
        groups: list[EngineGroupInfo],
    ) -> None:
        """Map the worker's KV tensors; registering again replaces the mapping."""
        try:
            handles = decode_device_handles(kv_cache)
        except ProtocolError as exc:
            raise BadRequestError(str(exc)) from None
        worker: MappedWorker | CudaWorker
        if handles and not all(isinstance(h, CpuShmHandle) for h in handles):
            records = check_cuda_registration(handles)  # answers at once on a CPU-only host
            if len(groups) > 1:
                raise NotSupportedError(
                    "hybrid models with several KV groups are not supported yet"
                )
            worker = register_cuda_worker(
                instance_id,
                records,
                model_name,
                world_size,
                layout_hints,
                self.chunk_size,
                self.cuda_runtime(),
            )
        else:
            worker = map_worker(
                instance_id, handles, model_name, world_size, layout_hints, groups, self.chunk_size
            )
        self.workers.add_mapped(worker)
        self.liveness.registered(instance_id)
        logger.info(
            "registered worker %d: %s, world size %d, %s layout, %d layers, %d blocks",
            instance_id,
            model_name,
            world_size,
            worker.layout.format.value,
            worker.layout.num_layers,
            worker.layout.num_blocks,
        )

    def unregister_kv_cache(self, _ctx: RequestContext, instance_id: int) -> None:
        """Unmap the worker's KV tensors."""
        self.workers.remove(instance_id)
        self.liveness.unregistered(instance_id)

    # -- store ----------------------------------------------------------------------------

    def store(
        self,
        ctx: RequestContext,
        key: WireCacheKey,
        instance_id: int,
        block_ids: list[list[int]],
        event: bytes,
    ) -> TransferResult:
        """Gather the window's chunks from the worker's blocks into L1.

        All or nothing: ``ok`` is true only if every chunk is in L1 afterwards
        (stored now, or already there). Never true for data not kept. A store
        whose deadline passes (queued, copying, or waiting for chunks another
        store writes) answers false and commits nothing it copied.
        """
        if self._late("store", ctx):
            return _FAILED
        worker = self._registered("store", instance_id)
        if worker is None:
            return _FAILED
        window = self.chunk_keys.window(key)
        if not window.chunks:
            return _DONE
        plan = self._plan("store", key, worker, window, block_ids)
        if plan is None:
            return _FAILED
        with self.request_events.transfer("store", key, instance_id, len(plan.keys)) as outcome:
            result = self._store(ctx, plan, outcome, event)
            outcome["ok"] = result.ok
            return result

    def _store(
        self, ctx: RequestContext, plan: TransferPlan, outcome: dict[str, Any], event: bytes
    ) -> TransferResult:
        keys, ids, per_chunk = plan.keys, plan.block_ids, plan.blocks_per_chunk
        wanted = [
            i
            for i in range(len(keys))
            if any(b != NULL_BLOCK_ID for b in ids[i * per_chunk : (i + 1) * per_chunk])
        ]
        nbytes = plan.worker.layout.object_nbytes(self.chunk_size)
        try:
            reservations = self.l1.reserve([keys[i] for i in wanted], nbytes)
        except L1FullError as exc:
            logger.warning("store of %d chunks refused: %s", len(wanted), exc)
            self.request_events.l1_allocation_failed("l1_store", len(wanted), nbytes)
            return _FAILED
        todo = [(i, r) for i, r in zip(wanted, reservations, strict=True) if r is not None]
        others = [keys[i] for i, r in zip(wanted, reservations, strict=True) if r is None]
        if not todo:
            return self._visible(ctx, others)
        staged = [r for _, r in todo]
        if isinstance(plan.worker, CudaWorker):
            return self._store_cuda(ctx, plan, outcome, event, todo, others)
        cache = plan.worker.cache
        try:
            chunk_ids = [b for i, _ in todo for b in ids[i * per_chunk : (i + 1) * per_chunk]]
            buffers = [self.l1.buffer(r) for r in staged]
            cache.validate(chunk_ids, self.chunk_size, buffers)  # before any byte moves

            def gather(first: int, last: int) -> None:
                cache.gather(
                    chunk_ids[first * per_chunk : last * per_chunk],
                    self.chunk_size,
                    buffers[first:last],
                )

            copied = copy_until_deadline(ctx, len(staged), nbytes, gather)
        except ValueError as exc:  # bad block ids: validated before any byte moved
            self.l1.abort(staged)
            raise BadRequestError(str(exc)) from None
        except Exception:
            self.l1.abort(staged)
            raise
        if not copied:  # the worker may reuse its blocks now: keep nothing half-read
            self.l1.abort(staged)
            self._count_late("store", "while copying")
            return _FAILED
        self.l1.commit(staged)
        outcome["done_chunks"] = len(staged)
        outcome["bytes"] = len(staged) * nbytes
        self.completion.committed(staged, nbytes)
        return self._visible(ctx, others)

    def _store_cuda(
        self,
        ctx: RequestContext,
        plan: TransferPlan,
        outcome: dict[str, Any],
        event: bytes,
        todo: list[tuple[int, Any]],
        others: list[ObjectKey],
    ) -> TransferResult:
        """The store on the worker's CUDA stream: commit only after the copy completed."""
        worker = plan.worker
        assert isinstance(worker, CudaWorker)
        ids, per_chunk = plan.block_ids, plan.blocks_per_chunk
        staged = [r for _, r in todo]
        nbytes = worker.layout.object_nbytes(self.chunk_size)
        chunk_ids = [b for i, _ in todo for b in ids[i * per_chunk : (i + 1) * per_chunk]]
        buffers = [self.l1.buffer(r) for r in staged]
        try:
            ready = worker.ready()
            ready.copier.check(buffers, chunk_ids)  # before anything is enqueued
        except ValueError as exc:
            self.l1.abort(staged)
            raise BadRequestError(str(exc)) from None
        except Exception:
            self.l1.abort(staged)
            raise

        def commit() -> None:
            self.l1.commit(staged)
            outcome["done_chunks"] = len(staged)
            outcome["bytes"] = len(staged) * nbytes
            self.completion.committed(staged, nbytes)

        steps = TransferSteps(
            op="store",
            copy=lambda: ready.copier.store(chunk_ids, buffers),
            commit=commit,
            abort=lambda: _discard(self.l1.abort(staged)),
            release=worker.end,
        )
        worker.begin()
        result = worker.runtime.transfers.run(ready.stream, event, steps, _deadline(ctx))
        if not result.ok:
            return TransferResult(result.event, False)
        return TransferResult(result.event, self._visible(ctx, others).ok)

    def _visible(self, ctx: RequestContext, others: list[ObjectKey]) -> TransferResult:
        """The store's result once chunks other stores write are visible (by the deadline)."""
        if self.completion.visible(others, ctx.deadline):
            return _DONE
        if ctx.expired():
            self._count_late("store", "waiting for chunks another store writes")
        return _FAILED

    # -- retrieve -------------------------------------------------------------------------

    def retrieve(
        self,
        ctx: RequestContext,
        key: WireCacheKey,
        instance_id: int,
        block_ids: list[list[int]],
        event: bytes,
        skip_first_n_tokens: int,
    ) -> TransferResult:
        """Scatter the window's chunks from L1 into the worker's blocks.

        Consumes one of the lookup's read locks per chunk, whether or not the
        copy succeeds. A retrieve whose deadline passes before or during the copy
        answers false, and nothing is written into the blocks after that reply
        (see :mod:`~lmcache_engine_default.deadline_fence`).
        """
        if skip_first_n_tokens < 0:
            raise BadRequestError("skip_first_n_tokens must be >= 0")
        if ctx.expired():
            self._count_late("retrieve", "before it started")
            self._consume_window_locks(key)
            return _FAILED
        worker = self._registered("retrieve", instance_id)
        if worker is None:
            return _FAILED
        window = self.chunk_keys.window(key)
        if not window.chunks:
            return _DONE
        plan = self._plan("retrieve", key, worker, window, block_ids)
        if plan is None:
            return _FAILED
        keys = plan.keys
        try:
            with self.request_events.transfer("retrieve", key, instance_id, len(keys)) as outcome:
                if isinstance(worker, CudaWorker):
                    result = self._copy_out_cuda(ctx, plan, skip_first_n_tokens, event)
                    if result.ok:
                        nbytes = worker.layout.object_nbytes(self.chunk_size)
                        outcome.update(ok=True, done_chunks=len(keys), bytes=len(keys) * nbytes)
                    return result
                ok = self._copy_out(ctx, plan, skip_first_n_tokens)
                if ok:
                    nbytes = worker.layout.object_nbytes(self.chunk_size)
                    outcome.update(ok=True, done_chunks=len(keys), bytes=len(keys) * nbytes)
                return TransferResult.of(ok)
        finally:
            self.lookups.consume_locks(plan.session, keys)

    def _copy_out_cuda(
        self, ctx: RequestContext, plan: TransferPlan, skip: int, event: bytes
    ) -> TransferResult:
        """The retrieve on the worker's CUDA stream: read locks held until the copy completed."""
        worker = plan.worker
        assert isinstance(worker, CudaWorker)
        keys = plan.keys
        present = self.l1.lock_for_read(keys, 1)
        held = [k for k, ok in zip(keys, present, strict=True) if ok]
        if len(held) != len(keys):
            self.l1.unlock(held, 1)
            return _FAILED
        views, ids = self.l1.read_views(keys), plan.block_ids
        try:
            ready = worker.ready()
            ready.copier.check(views, ids)
        except ValueError as exc:
            self.l1.unlock(held, 1)
            raise BadRequestError(str(exc)) from None
        except Exception:
            self.l1.unlock(held, 1)
            raise

        def release() -> None:
            self.l1.unlock(held, 1)
            worker.end()

        steps = TransferSteps(
            op="retrieve",
            copy=lambda: ready.copier.retrieve(views, ids, skip),
            commit=lambda: None,
            abort=lambda: None,
            release=release,
        )
        worker.begin()
        result = worker.runtime.transfers.run(ready.stream, event, steps, _deadline(ctx))
        return TransferResult(result.event, result.ok)

    def _copy_out(self, ctx: RequestContext, plan: TransferPlan, skip: int) -> bool:
        keys = plan.keys
        worker = plan.worker
        assert isinstance(worker, MappedWorker)
        present = self.l1.lock_for_read(keys, 1)  # held only for the copy
        held = [k for k, ok in zip(keys, present, strict=True) if ok]
        try:
            if len(held) != len(keys):
                return False
            cache, views, ids = worker.cache, self.l1.read_views(keys), plan.block_ids
            per_chunk, tokens = plan.blocks_per_chunk, self.chunk_size
            try:
                cache.validate(ids, tokens, views)  # before any byte moves
            except ValueError as exc:
                raise BadRequestError(str(exc)) from None

            def scatter(first: int, last: int) -> None:
                # ``skip`` counts from the window's first token; each slice starts later.
                cache.scatter(
                    views[first:last],
                    ids[first * per_chunk : last * per_chunk],
                    tokens,
                    max(0, skip - first * tokens),
                )

            nbytes = plan.worker.layout.object_nbytes(tokens)
            if copy_until_deadline(ctx, len(keys), nbytes, scatter):
                return True
            self._count_late("retrieve", "while copying")
            return False
        finally:
            self.l1.unlock(held, 1)

    # -- deadlines ------------------------------------------------------------------------

    def _late(self, op: str, ctx: RequestContext) -> bool:
        """Whether ``op`` starts past its deadline (then it is counted and logged)."""
        if not ctx.expired():
            return False
        self._count_late(op, "before it started")
        return True

    def _count_late(self, op: str, when: str) -> None:
        self.deadline_misses[op] += 1
        logger.warning("%s answered ok=False: its deadline passed %s", op, when)

    def _consume_window_locks(self, key: WireCacheKey) -> None:
        """A retrieve refused before it started still consumes the lookup's locks."""
        session = self.lookups.sessions.peek(key.request_id)
        if session is None:
            return
        window = self.chunk_keys.window(key)
        if window.chunks:
            self.lookups.consume_locks(session, self.chunk_keys.window_keys(key, session, window))

    # -- checks ---------------------------------------------------------------------------

    def _registered(self, op: str, instance_id: int) -> MappedWorker | CudaWorker | None:
        """The worker, if registered and not reaped (a refusal is logged)."""
        worker = self.workers.lmcache_driven(instance_id)
        if worker is None or not self.liveness.seen(instance_id):
            logger.warning("%s from unregistered worker %d refused", op, instance_id)
            return None
        return worker

    def _plan(
        self,
        op: str,
        key: WireCacheKey,
        worker: MappedWorker | CudaWorker,
        window: ChunkWindow,
        block_ids: list[list[int]],
    ) -> TransferPlan | None:
        """The window's keys and blocks; None when the block ids do not cover it (logged)."""
        per_chunk = worker.layout.blocks_per_chunk(self.chunk_size)
        ids = block_ids[0] if block_ids else []
        if len(ids) < window.chunks * per_chunk:
            logger.warning("%s: %d block ids do not cover %d chunks", op, len(ids), window.chunks)
            return None
        session = self.lookups.sessions.get(key.request_id)
        keys = self.chunk_keys.window_keys(key, session, window)
        return TransferPlan(worker, session, keys, ids[: window.chunks * per_chunk], per_chunk)


DEVICE_WAIT_CAP_S = 30.0
"""The longest a device transfer's reply waits for its copy, whatever the request deadline:
a stream stuck on a dead worker's event must not hold the worker's thread forever (the
transfer then finishes in the background once the copy completed)."""


def _deadline(ctx: RequestContext) -> float:
    """When a device transfer's reply stops waiting for its copy."""
    return min(ctx.deadline, time.monotonic() + DEVICE_WAIT_CAP_S)


def _discard(_value: object) -> None:
    """Drop a return value (the steps' callables return nothing)."""
