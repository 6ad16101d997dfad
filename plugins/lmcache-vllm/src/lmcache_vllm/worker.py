"""The worker side of the connector, free of vLLM imports.

``register_kv_caches`` registers the paged KV cache with the server and starts the
heartbeat at once (an idle worker is never reaped). Each step the worker executes the
scheduler's :class:`~lmcache_vllm.metadata.StepPlan`: loads in ``start_load_kv``, stores
in ``wait_for_save``. In ``engine_driven`` mode (vLLM's CPU backend) the worker copies
between its KV blocks and the server's L1 pool itself, so both complete within the step.

Failures never stall the engine and never pass silently: a load that cannot complete is
still reported finished, its blocks are reported through
``get_block_ids_with_load_errors`` (vLLM then recomputes them with
``kv_load_failure_policy: recompute``, or fails the request with the default ``fail``),
and a store that cannot complete is dropped and counted. While the server is down
(:mod:`lmcache_vllm.health`) no call is attempted at all.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from lmcache_core.client import CallTimeout
from lmcache_core.protocol.errors import RemoteError
from lmcache_core.protocol.types import (
    CacheKey,
    EngineDrivenRegistration,
    EngineDrivenRegistrationReply,
    PrepareRetrieveReply,
    PrepareStoreReply,
    pack_token_ids,
)
from lmcache_core.transfer.layout import dtype_name
from lmcache_vllm.health import Health, Heartbeat
from lmcache_vllm.kv_copy import PagedGeometry, gather_chunk, geometry_of, scatter_chunk
from lmcache_vllm.metadata import StepPlan, TransferOp
from lmcache_vllm.pool import SharedPool
from lmcache_vllm.rpc import BackgroundClient
from lmcache_vllm.scheduler import connect
from lmcache_vllm.settings import ConnectorSettings, TransferMode
from lmcache_vllm.stats import ConnectorStats, IntervalReporter, Role

logger = logging.getLogger(__name__)


class TransferFailed(Exception):
    """One load or store could not complete (the message says why)."""


def resolve_mode(requested: TransferMode, on_cuda: bool) -> TransferMode:
    """``auto``: ``lmcache_driven`` for a CUDA KV cache, ``engine_driven`` on CPU."""
    if requested is not TransferMode.AUTO:
        return requested
    return TransferMode.LMCACHE_DRIVEN if on_cuda else TransferMode.ENGINE_DRIVEN


class WorkerSide:
    """The worker role: registration, heartbeat, loads and stores.

    Args:
        settings: The connector's options.
        model_name: The model name in cache keys.
        world_size: KV sharding width.
        worker_id: This worker's rank in it.
        block_size: vLLM's KV block size in tokens.
        client: A connected background client (tests may share one).

    Raises:
        ConnectionError: The server does not answer within ``mq_timeout``.
        ValueError: The server's chunk size is not a multiple of ``block_size``.
    """

    def __init__(
        self,
        settings: ConnectorSettings,
        *,
        model_name: str,
        world_size: int,
        worker_id: int,
        block_size: int,
        client: BackgroundClient | None = None,
    ) -> None:
        self.settings = settings
        self.model_name = model_name
        self.world_size = world_size
        self.worker_id = worker_id
        self.block_size = block_size
        self._owns_client = client is None
        self.client, self.chunk_size = connect(settings, block_size, client, "worker")
        self.instance_id = uuid.uuid4().int >> 65
        self.health = Health()
        self.stats = ConnectorStats()
        self._reporter = IntervalReporter(Role.WORKER, self.stats, self.health)
        self.mode: TransferMode | None = None
        self.layers: list[torch.Tensor] = []
        self.geometry: PagedGeometry | None = None
        self.heartbeat: Heartbeat | None = None
        self._pool: SharedPool | None = None
        self._lock = threading.Lock()  # registration vs transfers
        self._recving: set[str] = set()
        self._stored_requests: set[str] = set()
        self._load_errors: set[int] = set()
        self._failed_requests: set[str] = set()

    # -- registration ---------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: Mapping[str, torch.Tensor]) -> None:
        """Register the layer views (in vLLM's layer order) and start the heartbeat.

        Raises:
            NotImplementedError: ``lmcache_driven`` was chosen (by ``auto`` on a CUDA host,
                or explicitly): this connector does not do CUDA IPC or CPU shared-memory
                registration of vLLM's cache yet; use ``engine_driven``.
            ValueError: An unsupported KV cache view.
            ConnectionError: The server does not answer the registration.
        """
        layers = list(kv_caches.values())
        on_cuda = bool(layers) and layers[0].is_cuda
        mode = resolve_mode(self.settings.transfer_mode, on_cuda)
        if mode is TransferMode.LMCACHE_DRIVEN:
            raise NotImplementedError(
                "lmcache_driven transfers (CUDA IPC on GPU hosts, cpu_shm on CPU hosts) are "
                "not implemented by lmcache_vllm's connector yet; set "
                '"lmcache.mp.mp_transfer_mode": "engine_driven", or use upstream\'s '
                "LMCacheMPConnector"
            )
        self.geometry = geometry_of(layers, self.block_size)
        self.layers = layers
        self.mode = mode
        try:
            self._register()
        except (CallTimeout, concurrent.futures.TimeoutError):
            raise ConnectionError(
                f"the LMCache server at {self.settings.server_url} did not answer the KV cache "
                f"registration within lmcache.mp.mq_timeout={self.settings.mq_timeout:g} s"
            ) from None
        self.heartbeat = Heartbeat(
            self.client,
            self.health,
            self.settings.heartbeat_interval,
            instance_id=self.instance_id,
            reregister=self._register,
        )

    def _register(self) -> None:
        """(Re-)register the engine-driven context and map the L1 pool it names."""
        geometry = self.geometry
        assert geometry is not None
        payload = EngineDrivenRegistration(
            instance_id=self.instance_id,
            model_name=self.model_name,
            world_size=self.world_size,
            block_size=self.block_size,
            num_layers=geometry.num_layers,
            hidden_dim_size=geometry.hidden,
            dtype_str=dtype_name(geometry.dtype),
            use_mla=False,
            num_physical_slots=self.chunk_size,
        )
        reply = self.client.call_sync(
            "register_engine_driven", payload, timeout=self.settings.mq_timeout
        )
        if not isinstance(reply, EngineDrivenRegistrationReply):
            raise TypeError(f"unexpected registration reply {reply!r}")
        pool = SharedPool(reply.shm_name, reply.pool_size) if reply.shm_name else None
        with self._lock:
            old, self._pool = self._pool, pool
        if old is not None:
            old.close()

    # -- loads ----------------------------------------------------------------------------

    def start_load_kv(self, plan: StepPlan) -> None:
        """Run the plan's loads; each is reported by the next :meth:`get_finished`."""
        for op in plan.loads:
            try:
                written = self._load(op)
                self.stats.loads_ok += 1
                self.stats.loaded_tokens += written
                self.stats.loaded_bytes += written * self._token_nbytes()
            except TransferFailed as exc:
                logger.warning("load of %s failed, vLLM recomputes it: %s", op.request_id, exc)
                blocks = self._load_blocks(op)
                self.stats.loads_failed += 1
                self.stats.load_failed_blocks += len(blocks)
                self._failed_requests.add(op.request_id)
                self._load_errors.update(blocks)
            self._recving.add(op.request_id)

    def _load_blocks(self, op: TransferOp) -> list[int]:
        first = (op.start + op.skip_first_n_tokens) // self.block_size
        return list(op.block_ids[0][first : op.end // self.block_size]) if op.block_ids else []

    def _token_nbytes(self) -> int:
        return self.geometry.object_nbytes(1) if self.geometry is not None else 0

    def _load(self, op: TransferOp) -> int:
        """Copy the op's chunks into vLLM's blocks; the tokens written."""
        geometry, pool = self._ready()
        key = self._key(op)
        chunks = self._chunk_blocks(op)
        reply = self._call("prepare_retrieve", key, self.instance_id)
        if not isinstance(reply, PrepareRetrieveReply) or not reply.success:
            raise TransferFailed("the server no longer holds every chunk")
        try:
            objects = self._objects(reply, pool, geometry, len(chunks))
            skip = op.skip_first_n_tokens // self.block_size
            for number, (blocks, source) in enumerate(zip(chunks, objects, strict=True)):
                scatter_chunk(self.layers, geometry, blocks, source, skip if number == 0 else 0)
        finally:
            if pool is not None:
                self._call("commit_retrieve", key, self.instance_id)
        # The blocks of the first chunk vLLM's prefix cache held were left alone.
        return len(chunks) * self.chunk_size - (skip * self.block_size if chunks else 0)

    def _objects(
        self,
        reply: PrepareRetrieveReply,
        pool: SharedPool | None,
        geometry: PagedGeometry,
        count: int,
    ) -> list[torch.Tensor]:
        shape = geometry.object_shape(self.chunk_size)
        if pool is not None:
            slots = reply.context.get("slots", [])
            if len(slots) != count:
                raise TransferFailed(f"the server sent {len(slots)} slots for {count} chunks")
            return [pool.slot(slot) for slot in slots]
        nbytes = geometry.object_nbytes(self.chunk_size)
        if len(reply.data) != count * nbytes:
            raise TransferFailed(f"inline data is {len(reply.data)} bytes, not {count * nbytes}")
        flat = torch.frombuffer(bytearray(reply.data), dtype=geometry.dtype)
        return list(flat.view(count, *shape).unbind(0))

    # -- stores ---------------------------------------------------------------------------

    def wait_for_save(self, plan: StepPlan) -> None:
        """Run the plan's stores (prompt chunks the step completed)."""
        for op in plan.stores:
            self._stored_requests.add(op.request_id)
            try:
                copied = self._store(op)
                self.stats.stores_ok += 1
                self.stats.stored_tokens += copied * self.chunk_size
                self.stats.stored_bytes += copied * self.chunk_size * self._token_nbytes()
            except TransferFailed as exc:
                logger.info("store of %s dropped: %s", op.request_id, exc)
                self.stats.stores_dropped += 1

    def _store(self, op: TransferOp) -> int:
        """Copy the chunks the server asks for; how many (it skips those it holds)."""
        geometry, pool = self._ready()
        key = self._key(op)
        reply = self._call("prepare_store", key, self.instance_id)
        if not isinstance(reply, PrepareStoreReply):
            raise TransferFailed(f"unexpected prepare_store reply {reply!r}")
        chunks = self._chunk_blocks(op)
        indices = [int(i) for i in reply.context.get("chunk_indices", [])]
        if any(not 0 <= i < len(chunks) for i in indices):
            raise TransferFailed(f"chunk indices {indices} outside the {len(chunks)} chunks")
        data = b""
        if pool is not None:
            slots = reply.context.get("slots", [])
            if len(slots) != len(indices):
                raise TransferFailed(f"{len(slots)} slots for {len(indices)} chunks")
            for index, slot in zip(indices, slots, strict=True):
                gather_chunk(self.layers, geometry, chunks[index], pool.slot(slot))
        elif indices:
            shape = geometry.object_shape(self.chunk_size)
            buffer = torch.empty((len(indices), *shape), dtype=geometry.dtype)
            for row, index in enumerate(indices):
                gather_chunk(self.layers, geometry, chunks[index], buffer[row])
            data = buffer.view(torch.uint8).numpy().tobytes()
        if self._call("commit_store", key, self.instance_id, data) is not True:
            raise TransferFailed("the server did not commit every chunk")
        return len(indices)

    # -- completion -----------------------------------------------------------------------

    def get_finished(
        self, finished_req_ids: Iterable[str]
    ) -> tuple[set[str] | None, set[str] | None]:
        """Requests whose stores are done (among those vLLM finished) and loads done.

        Returns:
            ``(finished_sending, finished_recving)``, None for an empty set. A load is
            reported exactly once, also when it failed.
        """
        sending = {rid for rid in finished_req_ids if rid in self._stored_requests}
        self._stored_requests -= sending
        recving, self._recving = self._recving, set()
        return (sending or None), (recving or None)

    def get_block_ids_with_load_errors(self) -> set[int]:
        """Blocks of failed loads since the last call (vLLM recomputes them)."""
        errors, self._load_errors = self._load_errors, set()
        return errors

    def take_interval_stats(self) -> dict[str, Any]:
        """This worker's stats payload since the last call (:mod:`lmcache_vllm.stats`)."""
        return self._reporter.take()

    def take_failed_requests(self) -> set[str]:
        """Requests with a failed load since the last call (``failed_recving``)."""
        failed, self._failed_requests = self._failed_requests, set()
        return failed

    def shutdown(self) -> None:
        """Stop the heartbeat, unregister (bounded), unmap the pool, close the client."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.mode is not None and self.health.healthy:
            try:
                self.client.call_sync(
                    "unregister_engine_driven", self.instance_id, timeout=min(5.0, self._timeout)
                )
            except Exception as exc:  # noqa: BLE001 - the server reaps us otherwise
                logger.info("unregister failed: %s", exc)
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        if self._owns_client:
            self.client.close()

    # -- helpers --------------------------------------------------------------------------

    @property
    def _timeout(self) -> float:
        return self.settings.transfer_timeout

    def _ready(self) -> tuple[PagedGeometry, SharedPool | None]:
        if self.geometry is None:
            raise TransferFailed("register_kv_caches was not called")
        if not self.health.healthy:
            raise TransferFailed("the server is down (degraded mode)")
        with self._lock:
            return self.geometry, self._pool

    def _call(self, method: str, *args: object) -> object:
        try:
            return self.client.call_sync(method, *args, timeout=self._timeout)
        except (CallTimeout, concurrent.futures.TimeoutError) as exc:
            self.health.mark_down(f"{method} timed out")
            raise TransferFailed(f"{method} timed out: {exc}") from None
        except RemoteError as exc:
            raise TransferFailed(f"{method}: {exc}") from None

    def _chunk_blocks(self, op: TransferOp) -> list[Sequence[int]]:
        """The block ids of each chunk of the op's window, in order."""
        per_chunk = self.chunk_size // self.block_size
        group = op.block_ids[0] if op.block_ids else []
        chunks: list[Sequence[int]] = []
        for start in range(op.start, op.end, self.chunk_size):
            first = start // self.block_size
            blocks = group[first : first + per_chunk]
            if len(blocks) != per_chunk:
                raise TransferFailed(
                    f"request {op.request_id} has {len(group)} blocks; tokens "
                    f"[{start}, {start + self.chunk_size}) need blocks up to {first + per_chunk}"
                )
            chunks.append(blocks)
        return chunks

    def _key(self, op: TransferOp) -> CacheKey:
        return CacheKey(
            model_name=self.model_name,
            world_size=self.world_size,
            worker_id=self.worker_id,
            token_ids=pack_token_ids(op.token_ids),
            start=op.start,
            end=op.end,
            request_id=op.request_id,
            cache_salt=op.cache_salt,
            request_configs=op.request_configs,
        )
