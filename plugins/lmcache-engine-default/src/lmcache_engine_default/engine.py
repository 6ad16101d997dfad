"""The default cache engine: prefix caching of full chunks in L1.

Handlers run on the request server's threads (see ``OPS`` for which); each one
validates its input, turns it into object keys and works on L1 in batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lmcache_core.engine import Engine, EngineContext, Handler
from lmcache_core.engine.liveness import Liveness
from lmcache_core.engine.sessions import LookupJob, Session, SessionTable
from lmcache_core.observability.events import EventType, count_per_salt
from lmcache_core.protocol.codec import ProtocolError, decode_device_handles
from lmcache_core.protocol.errors import BadRequestError, NotRegisteredError, OutOfMemoryError
from lmcache_core.protocol.types import (
    BlockAllocationRecord,
    EngineDrivenRegistration,
    EngineDrivenRegistrationReply,
    EngineGroupInfo,
    PrepareRetrieveReply,
    PrepareStoreReply,
    WireCacheKey,
)
from lmcache_core.server.request_server import RequestContext
from lmcache_core.storage.errors import L1FullError, ReservationExpired
from lmcache_core.storage.keys import ObjectKey, pack_kv_rank
from lmcache_core.storage.l1 import Reservation
from lmcache_core.storage.l2.tier import PrefetchResult
from lmcache_core.transfer.layout import KVLayout, dtype_name, layout_from_engine_driven
from lmcache_engine_default.events import RequestEvents
from lmcache_engine_default.settings import DefaultEngineSettings
from lmcache_engine_default.workers import (
    EngineDrivenWorker,
    MappedWorker,
    WorkerTable,
    map_worker,
)

logger = logging.getLogger("lmcache.engine")

FAILED = (b"", False)
DONE = (b"", True)
"""Store/retrieve results: (completion event handle, ok). No device work: no handle."""
MAX_WAIT_SECONDS = 60.0
VISIBILITY_WAIT_SECONDS = 5.0
"""How long a store waits for chunks a concurrent store of the same prefix is writing."""
NULL_BLOCK_ID = 0
"""vLLM's null block: a chunk made only of it carries no KV and is never stored."""

LMCACHE_DRIVEN_OPS = ("register_kv_cache", "unregister_kv_cache", "store", "retrieve")
ENGINE_DRIVEN_OPS = (
    "register_kv_cache_engine_driven_context",
    "unregister_kv_cache_engine_driven_context",
    "prepare_store",
    "commit_store",
    "prepare_retrieve",
    "commit_retrieve",
)


class DefaultEngine(Engine):
    """Lookup, store and retrieve of full chunks, with sessions and worker liveness.

    Args:
        context: What the core provides (configuration, L1, token hashes).
    """

    def __init__(self, context: EngineContext) -> None:
        mp = context.config.mp
        self.config = context.config
        self.chunk_size = mp.chunk_size
        self.l1 = context.l1
        self.tokens = context.token_cache
        self.mode = mp.supported_transfer_mode
        self.workers = WorkerTable()
        self.events = RequestEvents(context.events, self.chunk_size)
        self.sessions: SessionTable = SessionTable(
            mp.session_ttl_seconds,
            self.tokens.new_request,
            self._release_locks,
            on_end=self.events.request_ended,
        )  # its clock is the L1's (monotonic), so lock deadlines compare
        self.liveness = Liveness(
            *context.config.plugin_settings(DefaultEngineSettings).reap_budgets(), self._reap
        )
        self._pending_stores: dict[tuple[int, str, int, int], list[Reservation]] = {}
        self._pending_reads: dict[tuple[int, str, int, int], list[ObjectKey]] = {}
        self._pending_others: dict[tuple[int, str, int, int], list[ObjectKey]] = {}
        self._pending_lock = threading.Lock()
        self.block_reports = 0
        self.l2 = context.l2
        self._prefetcher = ThreadPoolExecutor(
            context.config.l2_policies.l2_prefetch_max_in_flight,
            thread_name_prefix="lmcache-prefetch",
        )

    # -- engine contract -------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        """Every operation this configuration serves."""
        table: dict[str, Handler] = {
            "ping": self.ping,
            "noop": self.noop,
            "get_chunk_size": self.get_chunk_size,
            "get_experimental": self.get_experimental,
            "lookup": self.lookup,
            "query_prefetch_status": self.query_prefetch_status,
            "wait_prefetch_status": self.wait_prefetch_status,
            "free_lookup_locks": self.free_lookup_locks,
            "end_session": self.end_session,
            "clear": self.clear,
            "report_block_allocation": self.report_block_allocation,
        }
        if self.mode in ("lmcache_driven", "auto"):
            table.update({op: getattr(self, op) for op in LMCACHE_DRIVEN_OPS})
        if self.mode in ("engine_driven", "auto"):
            table.update({op: getattr(self, op) for op in ENGINE_DRIVEN_OPS})
        return table

    def components(self) -> list[Any]:
        """Session expiry and the reaper."""
        return [self.sessions, self.liveness]

    def status(self) -> dict[str, Any]:
        """Sessions, workers and their liveness."""
        return {
            "chunk_size": self.chunk_size,
            "hash_algorithm": self.tokens.hasher.name,
            "active_sessions": len(self.sessions),
            "workers": self.workers.summary(),
            "worker_liveness": {str(k): v for k, v in self.liveness.snapshot().items()},
            "reaped_workers": self.liveness.reaped_total,
            "token_hash_cache": {"hits": self.tokens.hits, "misses": self.tokens.misses},
            "block_allocation_reports": self.block_reports,
            "l2": self.l2.status() if self.l2 is not None else None,
        }

    def close(self) -> None:
        """Release pending reservations and locks, unmap every worker."""
        with self._pending_lock:
            stores = [r for rs in self._pending_stores.values() for r in rs]
            reads = [k for ks in self._pending_reads.values() for k in ks]
            self._pending_stores.clear()
            self._pending_reads.clear()
        self._prefetcher.shutdown(wait=True, cancel_futures=True)
        self.l1.abort(stores)
        self.l1.unlock(reads)
        self.workers.close()

    # -- small operations -----------------------------------------------------------------

    def ping(self, _ctx: RequestContext, instance_id: int | None) -> bool:
        """Heartbeat; False tells a reaped worker to re-register."""
        return self.liveness.ping(instance_id)

    def noop(self, _ctx: RequestContext) -> str:
        """Does nothing."""
        return "OK"

    def get_chunk_size(self, _ctx: RequestContext) -> int:
        """``--chunk-size``."""
        return self.chunk_size

    def get_experimental(self, _ctx: RequestContext) -> list[str]:
        """No experimental capabilities."""
        return []

    def report_block_allocation(
        self,
        _ctx: RequestContext,
        _instance_id: int,
        _model: str,
        records: list[BlockAllocationRecord],
    ) -> None:
        """Counted (``block_allocation_reports`` in ``/status``); the records are not used yet."""
        self.block_reports += len(records)

    def clear(self, _ctx: RequestContext, force: bool) -> None:
        """Drop every unlocked L1 object (every object when ``force``)."""
        dropped = self.l1.clear(force)
        logger.info("cleared %d L1 objects (force=%s)", dropped, force)

    # -- keys -----------------------------------------------------------------------------

    def _hashes(self, key: WireCacheKey, session: Session, num_chunks: int) -> list[bytes]:
        try:
            return self.tokens.hashes(bytes(key.token_ids), num_chunks, session.hashes)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None

    @staticmethod
    def _keys(key: WireCacheKey, hashes: Sequence[bytes], rank: int) -> list[ObjectKey]:
        kv_rank = pack_kv_rank(key.world_size, rank)
        return [ObjectKey(h, key.model_name, kv_rank, 0, key.cache_salt) for h in hashes]

    def _window(self, key: WireCacheKey) -> tuple[int, int]:
        """Chunk indices ``[first, last)`` of a store/retrieve window (chunk-aligned)."""
        if key.start % self.chunk_size or key.end % self.chunk_size:
            raise BadRequestError(
                f"start {key.start} and end {key.end} must be multiples of the chunk size "
                f"{self.chunk_size}"
            )
        return key.start // self.chunk_size, key.end // self.chunk_size

    @staticmethod
    def _worker_id(key: WireCacheKey) -> int:
        if key.worker_id is None:
            raise BadRequestError("this operation needs a key with worker_id set")
        return key.worker_id

    # -- lookup ---------------------------------------------------------------------------

    def lookup(self, _ctx: RequestContext, key: WireCacheKey, _tp_size: int) -> None:
        """Find the longest prefix present for every rank, read-lock it, record the job.

        The reply (the acknowledgement) is sent only after the job is recorded, so
        a status query that follows the ack always sees it.
        """
        readers = max(1, key.num_kv_readers)
        num_chunks = key.end // self.chunk_size
        session = self.sessions.get(key.request_id)
        ranks = [key.worker_id] if key.worker_id is not None else range(key.world_size)
        with session.mutex:
            # Hash first: bad tokens fail the lookup before it replaces the last job.
            hashes = self._hashes(key, session, num_chunks)
            started = self.events.lookup_started(key, session, hashes)
            self._release_job(session)
            job = LookupJob()
            session.job = job
            per_rank = [self._keys(key, hashes, rank) for rank in ranks]
            flat = [per_rank[r][i] for i in range(num_chunks) for r in range(len(per_rank))]
            # Taken before the locks, so the session never outlives the grants it counts.
            lock_deadline = self.sessions.clock() + self.l1.read_ttl_s
            present = self.l1.lock_for_read(flat, readers)
            width = len(per_rank)
            hit = 0
            while hit < num_chunks and all(present[hit * width : (hit + 1) * width]):
                hit += 1
            extra = [
                k for k, ok in zip(flat[hit * width :], present[hit * width :], strict=True) if ok
            ]
            if extra:
                self.l1.unlock(extra, readers)
            hit_keys = [[per_rank[r][i] for r in range(width)] for i in range(hit)]
            session.take_locks((k for row in hit_keys for k in row), readers, lock_deadline)
            nbytes = self._object_nbytes(key.model_name, key.world_size)
            if hit == num_chunks or self.l2 is None or nbytes is None:
                job.finish(hit, hit_keys)
                self.events.lookup_finished(key, started, hit, 0, width)
                return
            rest = [[per_rank[r][i] for r in range(width)] for i in range(hit, num_chunks)]
        # The ack goes out now; the job finishes when L2 has answered (queries say None).
        self._prefetcher.submit(
            self._prefetch, session, job, hit_keys, rest, nbytes, readers, (key, started)
        )

    def _prefetch(
        self,
        session: Session,
        job: LookupJob,
        hit_keys: list[list[ObjectKey]],
        rest: list[list[ObjectKey]],
        nbytes: int,
        readers: int,
        announced: tuple[WireCacheKey, float],
    ) -> None:
        assert self.l2 is not None
        deadline = self.sessions.clock() + self.l1.read_ttl_s
        result = PrefetchResult(0, ())
        try:
            result = self.l2.prefetch(rest, nbytes, readers)
        finally:
            loaded = result.chunks
            keys = [k for row in rest[:loaded] for k in row]
            with session.mutex:
                if session.job is job:
                    session.take_locks(keys, readers, deadline)
                    job.finish(len(hit_keys) + loaded, hit_keys + rest[:loaded])
                else:  # replaced or ended meanwhile: nobody will read these
                    self.l1.unlock(keys, readers)
                    job.finish(len(hit_keys), hit_keys)
                    result = PrefetchResult(0, ())
            key, started = announced
            width = len(rest[0]) if rest else 1
            self.events.lookup_finished(
                key, started, len(hit_keys), result.chunks, width, self._sources(result)
            )

    def _sources(self, result: PrefetchResult) -> list[dict[str, Any]]:
        """Which L2 adapters supplied a prefetch's objects, for the lookup event."""
        assert self.l2 is not None
        return [
            {"l2_name": adapter.name, "adapter_index": index, "keys": count}
            for index, (adapter, count) in enumerate(
                zip(self.l2.adapters, result.keys_by_adapter, strict=True)
            )
            if count
        ]

    def _object_nbytes(self, model_name: str, world_size: int) -> int | None:
        """Object size for this model and sharding, from any registered worker."""
        workers: list[MappedWorker | EngineDrivenWorker] = [
            *self.workers.mapped.values(),
            *self.workers.engine_driven.values(),
        ]
        for worker in workers:
            if worker.model_name == model_name and worker.world_size == world_size:
                return worker.layout.object_nbytes(self.chunk_size)
        return None

    def _release_job(self, session: Session) -> None:
        """A new lookup replaces the previous one: release its unconsumed locks."""
        if session.job is None:
            return
        keys = [k for row in session.job.hit_keys for k in row]
        self._release_locks(session.give_back(keys, now=self.sessions.clock()))
        session.job = None

    def query_prefetch_status(self, _ctx: RequestContext, request_id: str) -> int | None:
        """Hit chunks (once), None while running, 0 for an unknown request."""
        session = self.sessions.peek(request_id)
        job = session.job if session is not None else None
        if job is None or job.reported:
            return 0
        if job.hit_chunks is None:
            return None
        job.reported = True
        return job.hit_chunks

    def wait_prefetch_status(
        self, ctx: RequestContext, request_id: str, timeout: float
    ) -> int | None:
        """Like :meth:`query_prefetch_status`, waiting up to ``timeout`` (at most 60 s)."""
        session = self.sessions.peek(request_id)
        job = session.job if session is not None else None
        if job is not None and not job.done.wait(min(max(timeout, 0.0), MAX_WAIT_SECONDS)):
            return None
        return self.query_prefetch_status(ctx, request_id)

    def free_lookup_locks(self, _ctx: RequestContext, key: WireCacheKey, _tp_size: int) -> None:
        """Release the lookup's remaining locks on the chunks of ``[start, end)``."""
        session = self.sessions.peek(key.request_id)
        if session is None:
            return
        with session.mutex:
            job = session.job
            if job is None or job.hit_chunks is None:
                return
            first = key.start // self.chunk_size
            last = min(-(-key.end // self.chunk_size), job.hit_chunks)
            keys = [k for row in job.hit_keys[first:last] for k in row]
            self._release_locks(session.give_back(keys, now=self.sessions.clock()))

    def end_session(self, _ctx: RequestContext, request_id: str) -> None:
        """End the request: release its locks and refresh its chunks in the policy."""
        session = self.sessions.end(request_id)
        if session is not None and session.job is not None:
            self.l1.touch([k for row in session.job.hit_keys for k in row])

    def _release_locks(self, held: dict[ObjectKey, int]) -> None:
        by_count: dict[int, list[ObjectKey]] = {}
        for key, count in held.items():
            by_count.setdefault(count, []).append(key)
        for count, keys in by_count.items():
            self.l1.unlock(keys, count)

    # -- lmcache_driven transfers -----------------------------------------------------------

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

    def _reap(self, instance_id: int) -> None:
        self.workers.remove(instance_id)
        self._drop_pending(instance_id)

    def _plan(
        self, op: str, key: WireCacheKey, instance_id: int, block_ids: list[list[int]]
    ) -> _Transfer | tuple[bytes, bool]:
        """Check a store/retrieve and work out its keys and blocks, or its early answer."""
        worker = self.workers.mapped.get(instance_id)
        if worker is None or not self.liveness.seen(instance_id):
            logger.warning("%s from unregistered worker %d refused", op, instance_id)
            return FAILED
        rank = self._worker_id(key)
        first, last = self._window(key)
        if last == first:
            return DONE
        bpc = worker.layout.blocks_per_chunk(self.chunk_size)
        ids = block_ids[0] if block_ids else []
        if len(ids) < (last - first) * bpc:
            logger.warning("%s: %d block ids do not cover %d chunks", op, len(ids), last - first)
            return FAILED
        session = self.sessions.get(key.request_id)
        keys = self._keys(key, self._hashes(key, session, last)[first:], rank)
        return _Transfer(worker, session, keys, ids[: (last - first) * bpc], bpc)

    def store(
        self,
        _ctx: RequestContext,
        key: WireCacheKey,
        instance_id: int,
        block_ids: list[list[int]],
        _event: bytes,
    ) -> tuple[bytes, bool]:
        """Gather the window's chunks from the worker's blocks into L1.

        All or nothing: ``ok`` is true only if every chunk is in L1 afterwards
        (stored now, or already there). Never true for data not kept.
        """
        plan = self._plan("store", key, instance_id, block_ids)
        if not isinstance(plan, _Transfer):
            return plan
        with self.events.transfer("store", key, instance_id, len(plan.keys)) as outcome:
            result = self._store(plan, outcome)
            outcome["ok"] = result[1]
            return result

    def _store(self, plan: _Transfer, outcome: dict[str, Any]) -> tuple[bytes, bool]:
        worker, keys, ids, bpc = plan.worker, plan.keys, plan.block_ids, plan.bpc
        wanted = [
            i
            for i in range(len(keys))
            if any(b != NULL_BLOCK_ID for b in ids[i * bpc : (i + 1) * bpc])
        ]
        nbytes = worker.layout.object_nbytes(self.chunk_size)
        try:
            reservations = self.l1.reserve([keys[i] for i in wanted], nbytes)
        except L1FullError as exc:
            logger.warning("store of %d chunks refused: %s", len(wanted), exc)
            self.events.bus.publish(
                EventType.L1_ALLOCATION_FAILED,
                during="l1_store",
                key_count=len(wanted),
                bytes=len(wanted) * nbytes,
            )
            return FAILED
        todo = [(i, r) for i, r in zip(wanted, reservations, strict=True) if r is not None]
        others = [keys[i] for i, r in zip(wanted, reservations, strict=True) if r is None]
        if not todo:
            return DONE if self._visible(others) else FAILED
        staged = [r for _, r in todo]
        try:
            chunk_ids = [b for i, _ in todo for b in ids[i * bpc : (i + 1) * bpc]]
            worker.cache.gather(chunk_ids, self.chunk_size, [self.l1.buffer(r) for r in staged])
        except ValueError as exc:  # bad block ids: validated before any byte moved
            self.l1.abort(staged)
            raise BadRequestError(str(exc)) from None
        except Exception:
            self.l1.abort(staged)
            raise
        self.l1.commit(staged)
        outcome["done_chunks"] = len(staged)
        outcome["bytes"] = len(staged) * nbytes
        self._committed(staged, nbytes)
        return DONE if self._visible(others) else FAILED

    def _committed(self, staged: list[Reservation], nbytes: int) -> None:
        """After a store commits to L1 (either transfer mode): publish it, queue it for L2."""
        keys = [r.key for r in staged]
        self.events.bus.publish(
            EventType.L1_WRITE_FINISHED,
            key_count=len(keys),
            bytes=len(keys) * nbytes,
            key_count_per_salt=count_per_salt(keys),
            keys=tuple(keys),
        )
        if self.l2 is not None:
            self.l2.submit_store(keys, nbytes)

    def _visible(self, keys: list[ObjectKey]) -> bool:
        """Wait (bounded) until keys another writer is storing are resident.

        A store is acknowledged only once every chunk is visible to the next
        lookup; a chunk being written by a concurrent store of the same prefix is
        not, until that store commits.
        """
        deadline = time.monotonic() + VISIBILITY_WAIT_SECONDS
        while keys:
            keys = [k for k, ok in zip(keys, self.l1.contains(keys), strict=True) if not ok]
            if not keys or time.monotonic() > deadline:
                break
            time.sleep(0.001)
        return not keys

    def retrieve(
        self,
        _ctx: RequestContext,
        key: WireCacheKey,
        instance_id: int,
        block_ids: list[list[int]],
        _event: bytes,
        skip_first_n_tokens: int,
    ) -> tuple[bytes, bool]:
        """Scatter the window's chunks from L1 into the worker's blocks.

        Consumes one of the lookup's read locks per chunk, whether or not the
        copy succeeds.
        """
        if skip_first_n_tokens < 0:
            raise BadRequestError("skip_first_n_tokens must be >= 0")
        plan = self._plan("retrieve", key, instance_id, block_ids)
        if not isinstance(plan, _Transfer):
            return plan
        keys, session = plan.keys, plan.session
        try:
            with self.events.transfer("retrieve", key, instance_id, len(keys)) as outcome:
                result = self._copy_out(
                    plan.worker.cache, keys, plan.block_ids, skip_first_n_tokens
                )
                if result[1]:
                    nbytes = plan.worker.layout.object_nbytes(self.chunk_size)
                    outcome.update(ok=True, done_chunks=len(keys), bytes=len(keys) * nbytes)
                return result
        finally:
            with session.mutex:
                self._release_locks(session.give_back(keys, 1, self.sessions.clock()))

    def _copy_out(
        self, cache: Any, keys: list[ObjectKey], ids: list[int], skip: int
    ) -> tuple[bytes, bool]:
        present = self.l1.lock_for_read(keys, 1)  # held only for the copy
        held = [k for k, ok in zip(keys, present, strict=True) if ok]
        try:
            if len(held) != len(keys):
                return FAILED
            try:
                cache.scatter([self.l1.read_view(k) for k in keys], ids, self.chunk_size, skip)
            except ValueError as exc:  # bad block ids: validated before any byte moved
                raise BadRequestError(str(exc)) from None
            return DONE
        finally:
            self.l1.unlock(held, 1)

    # -- engine_driven transfers ------------------------------------------------------------

    def register_kv_cache_engine_driven_context(
        self, _ctx: RequestContext, payload: EngineDrivenRegistration
    ) -> EngineDrivenRegistrationReply:
        """Record the worker's object layout; tell it where the L1 pool is."""
        try:
            layout = layout_from_engine_driven(
                payload.block_size,
                payload.num_layers,
                payload.hidden_dim_size,
                payload.dtype_str,
                payload.use_mla,
                payload.num_physical_slots,
            )
            layout.blocks_per_chunk(self.chunk_size)
        except ValueError as exc:
            raise BadRequestError(f"bad registration: {exc}") from None
        self.workers.add_engine_driven(
            EngineDrivenWorker(payload.instance_id, payload.model_name, payload.world_size, layout)
        )
        self.liveness.registered(payload.instance_id)
        shm_name = self.l1.arena.shm_name or ""
        return EngineDrivenRegistrationReply(shm_name, self.l1.arena.size_bytes if shm_name else 0)

    def unregister_kv_cache_engine_driven_context(
        self, _ctx: RequestContext, instance_id: int
    ) -> None:
        """Forget the worker and release its pending reservations and locks."""
        self.workers.remove(instance_id)
        self.liveness.unregistered(instance_id)
        self._drop_pending(instance_id)

    def _drop_pending(self, instance_id: int) -> None:
        with self._pending_lock:
            stores = [k for k in self._pending_stores if k[0] == instance_id]
            for pending in stores:
                self._pending_others.pop(pending, None)
            reads = [k for k in self._pending_reads if k[0] == instance_id]
            staged = [r for k in stores for r in self._pending_stores.pop(k)]
            locked = [key for k in reads for key in self._pending_reads.pop(k)]
        self.l1.abort(staged)
        self.l1.unlock(locked)

    def _driven(
        self, key: WireCacheKey, instance_id: int
    ) -> tuple[EngineDrivenWorker, list[ObjectKey]]:
        worker = self.workers.engine_driven.get(instance_id)
        if worker is None or not self.liveness.seen(instance_id):
            raise NotRegisteredError(f"engine-driven worker {instance_id} is not registered")
        rank = self._worker_id(key)
        first, last = self._window(key)
        session = self.sessions.get(key.request_id)
        return worker, self._keys(key, self._hashes(key, session, last)[first:], rank)

    def _slot(self, layout: KVLayout, offset: int, nbytes: int) -> dict[str, Any]:
        return {
            "offset": offset,
            "length": nbytes,
            "shape": list(layout.object_shape(self.chunk_size)),
            "dtype": dtype_name(layout.dtype),
        }

    def prepare_store(
        self, _ctx: RequestContext, key: WireCacheKey, instance_id: int
    ) -> PrepareStoreReply:
        """Reserve L1 objects for the chunks not cached yet; return their slots."""
        worker, keys = self._driven(key, instance_id)
        nbytes = worker.layout.object_nbytes(self.chunk_size)
        try:
            reservations = self.l1.reserve(keys, nbytes)
        except L1FullError as exc:
            raise OutOfMemoryError(str(exc)) from None
        todo = [(i, r) for i, r in enumerate(reservations) if r is not None]
        pending_key = (instance_id, key.request_id, key.start, key.end)
        with self._pending_lock:
            previous = self._pending_stores.pop(pending_key, [])
            self._pending_stores[pending_key] = [r for _, r in todo]
            # Chunks another store is writing: the commit waits until they are visible.
            self._pending_others[pending_key] = [
                k for k, r in zip(keys, reservations, strict=True) if r is None
            ]
        self.l1.abort(previous)
        context: dict[str, Any] = {"chunk_indices": [i for i, _ in todo]}
        if self.l1.arena.shm_name:
            context["slots"] = [self._slot(worker.layout, r.offset, r.nbytes) for _, r in todo]
        else:
            context["object_nbytes"] = nbytes
        return PrepareStoreReply(context)

    def commit_store(
        self, _ctx: RequestContext, key: WireCacheKey, instance_id: int, data: bytes
    ) -> bool:
        """Commit the prepared objects: written in the pool, or given inline in ``data``."""
        pending_key = (instance_id, key.request_id, key.start, key.end)
        with self._pending_lock:
            staged = self._pending_stores.pop(pending_key, None)
            others = self._pending_others.pop(pending_key, [])
        if staged is None:
            return False
        if data:
            expected = sum(r.nbytes for r in staged)
            if len(data) != expected:
                self.l1.abort(staged)
                raise BadRequestError(
                    f"inline data must be the {len(staged)} raw objects ({expected} bytes), "
                    f"got {len(data)} bytes (pickled tensors are refused)"
                )
            if not self.l1.renew(staged):  # expired: that memory may hold other objects now
                self.l1.abort(staged)
                return False
            view = memoryview(data)
            offset = 0
            for reservation in staged:
                self.l1.buffer(reservation).numpy()[:] = view[offset : offset + reservation.nbytes]
                offset += reservation.nbytes
        elif not self.l1.arena.shm_name and staged:
            self.l1.abort(staged)
            raise BadRequestError("no shared-memory pool here; send the objects inline")
        try:
            self.l1.commit(staged)
        except ReservationExpired:
            self.l1.abort(staged)
            return False
        if staged:
            self._committed(staged, staged[0].nbytes)
        return self._visible(others)

    def prepare_retrieve(
        self, _ctx: RequestContext, key: WireCacheKey, instance_id: int
    ) -> PrepareRetrieveReply:
        """Lock the window's chunks; return their slots, or their bytes inline."""
        worker, keys = self._driven(key, instance_id)
        present = self.l1.lock_for_read(keys, 1)
        if not all(present):
            self.l1.unlock([k for k, ok in zip(keys, present, strict=True) if ok], 1)
            self._consume_lookup_locks(key, keys)
            return PrepareRetrieveReply(False)
        if not self.l1.arena.shm_name:
            try:
                data = b"".join(self.l1.read_view(k).numpy().tobytes() for k in keys)
            finally:
                self.l1.unlock(keys, 1)
                self._consume_lookup_locks(key, keys)
            return PrepareRetrieveReply(
                True, data, {"object_nbytes": worker.layout.object_nbytes(self.chunk_size)}
            )
        pending_key = (instance_id, key.request_id, key.start, key.end)
        with self._pending_lock:
            previous = self._pending_reads.pop(pending_key, [])
            self._pending_reads[pending_key] = keys
        self.l1.unlock(previous, 1)
        nbytes = worker.layout.object_nbytes(self.chunk_size)
        base = self.l1.arena.data_ptr()
        slots = [
            self._slot(worker.layout, self.l1.read_view(k).data_ptr() - base, nbytes) for k in keys
        ]
        return PrepareRetrieveReply(True, b"", {"slots": slots})

    def commit_retrieve(self, _ctx: RequestContext, key: WireCacheKey, instance_id: int) -> bool:
        """Release what :meth:`prepare_retrieve` locked."""
        pending_key = (instance_id, key.request_id, key.start, key.end)
        with self._pending_lock:
            keys = self._pending_reads.pop(pending_key, None)
        if keys is None:
            return not self.l1.arena.shm_name  # inline retrieves have nothing to commit
        self.l1.unlock(keys, 1)
        self._consume_lookup_locks(key, keys)
        return True

    def _consume_lookup_locks(self, key: WireCacheKey, keys: list[ObjectKey]) -> None:
        session = self.sessions.peek(key.request_id)
        if session is not None:
            with session.mutex:
                self._release_locks(session.give_back(keys, 1, self.sessions.clock()))


@dataclass(frozen=True)
class _Transfer:
    """A checked store or retrieve: whose cache, which objects, which blocks."""

    worker: MappedWorker
    session: Session
    keys: list[ObjectKey]
    block_ids: list[int]
    bpc: int


def build_engine(context: EngineContext) -> DefaultEngine:
    """The ``default`` engine's factory."""
    return DefaultEngine(context)
