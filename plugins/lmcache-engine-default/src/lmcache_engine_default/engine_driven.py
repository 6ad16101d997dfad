"""``engine_driven`` transfers: the worker copies its own KV; we hand out L1 objects.

``prepare_store`` reserves objects for the chunks not cached yet and
``commit_store`` makes them resident; ``prepare_retrieve`` read-locks a window
and ``commit_retrieve`` releases it. Between prepare and commit the holdings wait
in :class:`~lmcache_engine_default.pending.PendingTransfers`. How the bytes move
(the shared L1 pool, or inline in the messages) is the
:class:`~lmcache_engine_default.transport.Transport`'s business.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lmcache_core.engine.contract import Handler
from lmcache_core.protocol.errors import (
    BadRequestError,
    NotRegisteredError,
    OutOfMemoryError,
    OverloadedError,
)
from lmcache_core.protocol.types import (
    EngineDrivenRegistration,
    EngineDrivenRegistrationReply,
    PrepareRetrieveReply,
    PrepareStoreReply,
    WireCacheKey,
)
from lmcache_core.storage.errors import L1FullError, ReservationExpired
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import Reservation
from lmcache_core.transfer.layout import layout_from_engine_driven
from lmcache_engine_default.pending import Direction, Pending, PendingKey, PendingTransfers
from lmcache_engine_default.transfer_parts import TransferParts, WorkerTransfers
from lmcache_engine_default.transport import Transport
from lmcache_engine_default.workers import EngineDrivenWorker

if TYPE_CHECKING:
    from lmcache_core.engine.contract import RequestContext


class EngineDrivenTransfers(WorkerTransfers):
    """Registration, prepare and commit of ``engine_driven`` stores and retrieves.

    Args:
        parts: L1, workers, liveness, chunk keys, lookups and store completion.
        transport: How object bytes move.
    """

    def __init__(self, parts: TransferParts, transport: Transport) -> None:
        super().__init__(parts)
        self.transport = transport
        self.pending = PendingTransfers()

    def handlers(self) -> dict[str, Handler]:
        """Operation name -> handler."""
        return {
            "register_kv_cache_engine_driven_context": self.register,
            "unregister_kv_cache_engine_driven_context": self.unregister,
            "prepare_store": self.prepare_store,
            "commit_store": self.commit_store,
            "prepare_retrieve": self.prepare_retrieve,
            "commit_retrieve": self.commit_retrieve,
        }

    def register(
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
        return self.transport.registration_reply()

    def unregister(self, _ctx: RequestContext, instance_id: int) -> None:
        """Forget the worker and release its pending reservations and locks."""
        self.workers.remove(instance_id)
        self.liveness.unregistered(instance_id)
        self.drop_instance(instance_id)

    def drop_instance(self, instance_id: int) -> None:
        """Release what a worker's prepared transfers hold (it left or was reaped)."""
        self._release(self.pending.take_instance(instance_id))

    def close(self) -> None:
        """Release every prepared transfer."""
        self._release(self.pending.take_all())

    # -- store ----------------------------------------------------------------------------

    def prepare_store(
        self, ctx: RequestContext, key: WireCacheKey, instance_id: int
    ) -> PrepareStoreReply:
        """Reserve L1 objects for the chunks not cached yet; return their slots.

        Raises:
            OverloadedError: It waited in the queue past its deadline (nothing
                reserved; an empty reply would claim the chunks are cached).
        """
        if ctx.expired():
            raise OverloadedError("prepare_store: its deadline passed while it was queued")
        worker, keys = self._window(key, instance_id)
        nbytes = worker.layout.object_nbytes(self.chunk_size)
        try:
            reservations = self.l1.reserve(keys, nbytes)
        except L1FullError as exc:
            raise OutOfMemoryError(str(exc)) from None
        todo = [(i, r) for i, r in enumerate(reservations) if r is not None]
        staged = [r for _, r in todo]
        # Chunks another store is writing: the commit waits until they are visible.
        others = [k for k, r in zip(keys, reservations, strict=True) if r is None]
        previous = self.pending.put(
            PendingKey.of(instance_id, key, Direction.STORE), Pending(staged=staged, others=others)
        )
        if previous is not None:
            self.l1.abort(previous.staged)
        context = self.transport.store_context(worker.layout, staged, nbytes)
        return PrepareStoreReply({"chunk_indices": [i for i, _ in todo], **context})

    def commit_store(
        self, ctx: RequestContext, key: WireCacheKey, instance_id: int, data: bytes
    ) -> bool:
        """Commit the prepared objects: written in the pool, or given inline in ``data``."""
        pending = self.pending.take(PendingKey.of(instance_id, key, Direction.STORE))
        if pending is None:
            return False
        staged = pending.staged
        if data:
            if not self._write_inline(staged, data):
                return False
        elif staged:
            refused = self.transport.missing_data_error()
            if refused is not None:
                self.l1.abort(staged)
                raise BadRequestError(refused)
        try:
            self.l1.commit(staged)
        except ReservationExpired:
            self.l1.abort(staged)
            return False
        if staged:
            self.completion.committed(staged, staged[0].nbytes)
        return self.completion.visible(pending.others, ctx.deadline)

    def _write_inline(self, staged: list[Reservation], data: bytes) -> bool:
        """Copy inline objects into their reservations; False if they expired meanwhile.

        Raises:
            BadRequestError: ``data`` is not exactly the raw objects (aborted).
        """
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
        return True

    # -- retrieve -------------------------------------------------------------------------

    def prepare_retrieve(
        self, ctx: RequestContext, key: WireCacheKey, instance_id: int
    ) -> PrepareRetrieveReply:
        """Lock the window's chunks; return their slots, or their bytes inline.

        Past its deadline (it waited in the queue) it answers a failed retrieve.
        """
        worker, keys = self._window(key, instance_id)
        if ctx.expired():
            self._consume_lookup_locks(key, keys)
            return PrepareRetrieveReply(False)
        present = self.l1.lock_for_read(keys, 1)
        if not all(present):
            self.l1.unlock([k for k, ok in zip(keys, present, strict=True) if ok], 1)
            self._consume_lookup_locks(key, keys)
            return PrepareRetrieveReply(False)
        if not self.transport.holds_read_locks:
            try:
                return self.transport.retrieve_reply(keys, worker.layout)
            finally:
                self.l1.unlock(keys, 1)
                self._consume_lookup_locks(key, keys)
        previous = self.pending.put(
            PendingKey.of(instance_id, key, Direction.RETRIEVE), Pending(locked=keys)
        )
        if previous is not None:
            self.l1.unlock(previous.locked, 1)
        return self.transport.retrieve_reply(keys, worker.layout)

    def commit_retrieve(self, _ctx: RequestContext, key: WireCacheKey, instance_id: int) -> bool:
        """Release what :meth:`prepare_retrieve` locked."""
        pending = self.pending.take(PendingKey.of(instance_id, key, Direction.RETRIEVE))
        if pending is None:
            # Inline retrieves released their locks at once: nothing to commit.
            return not self.transport.holds_read_locks
        self.l1.unlock(pending.locked, 1)
        self._consume_lookup_locks(key, pending.locked)
        return True

    # -- helpers --------------------------------------------------------------------------

    def _window(
        self, key: WireCacheKey, instance_id: int
    ) -> tuple[EngineDrivenWorker, list[ObjectKey]]:
        """The registered worker and the object keys of the key's window."""
        worker = self.workers.engine_driven.get(instance_id)
        if worker is None or not self.liveness.seen(instance_id):
            raise NotRegisteredError(f"engine-driven worker {instance_id} is not registered")
        window = self.chunk_keys.window(key)
        session = self.lookups.sessions.get(key.request_id)
        return worker, self.chunk_keys.window_keys(key, session, window)

    def _consume_lookup_locks(self, key: WireCacheKey, keys: Sequence[ObjectKey]) -> None:
        session = self.lookups.sessions.peek(key.request_id)
        if session is not None:
            self.lookups.consume_locks(session, keys)

    def _release(self, held: Pending) -> None:
        self.l1.abort(held.staged)
        self.l1.unlock(held.locked)
