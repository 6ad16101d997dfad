"""``lmcache_driven`` workers whose KV caches are on a GPU (CUDA IPC handles).

Registration only checks and records the handles (:func:`register_cuda_worker`); the
tensors are imported at the worker's first transfer, on its own affinity thread, together
with its CUDA stream and staging buffer (:meth:`CudaWorker.ready`). See
:mod:`lmcache_core.transfer.cuda_mappings` for the lifetime rules, and
:mod:`lmcache_core.transfer.transfer_ordering` for the ordering of each transfer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.protocol.errors import BadRequestError, NotSupportedError
from lmcache_core.transfer.cuda_devices import local_device_uuids, ordinal_for_uuid
from lmcache_core.transfer.cuda_handles import CudaTensorRecord
from lmcache_core.transfer.cuda_mappings import (
    AllocationImporter,
    MappingReleaser,
    MappingTable,
    WorkerMappings,
)
from lmcache_core.transfer.device_layout import (
    DeviceKVGeometry,
    canonical_layer_views,
    geometry_for,
)
from lmcache_core.transfer.layout import KVLayout, dtype_name
from lmcache_core.transfer.paged import PagedKVCache
from lmcache_core.transfer.staged_copy import StagedCopier
from lmcache_core.transfer.transfer_ordering import (
    DeferredCompletions,
    OrderedTransfers,
    TransferStream,
)

logger = logging.getLogger("lmcache.engine")

STAGING_CHUNKS = 8
"""Objects per batch through a worker's device staging buffer (upstream's max batch)."""


class CudaRuntime:
    """What every CUDA worker of this process shares (built on the first CUDA registration).

    Attributes:
        table: Imported allocations, reference-counted.
        releaser: Releases mappings off the request loop.
        deferred: Finishes transfers answered before their copy completed.
        transfers: Runs transfers in order on the workers' streams.
        failures: Failed device transfers by operation (for ``/status``).
    """

    def __init__(
        self,
        importer: AllocationImporter | None = None,
        stream_factory: Callable[[int], TransferStream] | None = None,
        device_uuids: Sequence[str] | None = None,
    ) -> None:
        """Args: the importer, a stream per ordinal, the visible GPUs' UUIDs.

        The defaults are the real CUDA ones; the CPU tests pass FAKES (a CPU-tensor importer,
        a thread as the stream) to run the engine's CUDA path without a GPU.
        """
        if importer is None:
            from lmcache_core.transfer.cuda_import import CudaIpcImporter

            importer = CudaIpcImporter()
        self.table = MappingTable(importer)
        self._stream_factory = stream_factory
        self.on_cuda = stream_factory is None
        self.releaser = MappingReleaser()
        self.failures: dict[str, int] = {"store": 0, "retrieve": 0}
        self._lock = threading.Lock()
        self.deferred = DeferredCompletions(self._failed)
        self.transfers = OrderedTransfers(self.deferred, self._failed)
        self._uuids: list[str] | None = None if device_uuids is None else list(device_uuids)

    def _failed(self, op: str, _reason: str) -> None:
        with self._lock:
            self.failures[op] = self.failures.get(op, 0) + 1

    def ordinal(self, device_uuid: str) -> int:
        """The local ordinal of a worker's GPU (raises ValueError naming the UUID)."""
        if self._uuids is None:
            self._uuids = local_device_uuids()
        return ordinal_for_uuid(device_uuid, self._uuids)

    def stream(self, ordinal: int) -> TransferStream:
        """A new transfer stream on ``ordinal``."""
        if self._stream_factory is not None:
            return self._stream_factory(ordinal)
        from lmcache_core.transfer.cuda_stream import CudaTransferStream

        return CudaTransferStream(ordinal)

    def device(self, ordinal: int) -> AbstractContextManager[object]:
        """``torch.cuda.device(ordinal)`` on CUDA; nothing with a FAKE stream."""
        if not self.on_cuda:
            return contextlib.nullcontext()
        import torch

        return torch.cuda.device(ordinal)

    def close(self) -> None:
        """Finish deferred transfers and queued releases (shutdown)."""
        self.deferred.close()
        self.releaser.close()


@dataclass
class _Ready:
    stream: TransferStream
    copier: StagedCopier
    cache: PagedKVCache


@dataclass
class CudaWorker:
    """A worker whose KV cache stays on its GPU; imported at first use."""

    instance_id: int
    model_name: str
    world_size: int
    geometry: DeviceKVGeometry
    mappings: WorkerMappings
    runtime: CudaRuntime
    chunk_size: int
    _ready: _Ready | None = None
    _inflight: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def layout(self) -> KVLayout:
        """The per-layer layout (and so the L1 object layout)."""
        return self.geometry.layout

    def ready(self) -> _Ready:
        """Import the tensors, make the stream and staging buffer (first call only).

        Called on the worker's affinity thread. Raises ``ValueError`` or a CUDA error when
        the import fails (the worker's GPU is not visible, a stale handle).
        """
        if self._ready is None:
            tensors = self.mappings.tensors()
            ordinal = self.mappings.ordinal
            assert ordinal is not None
            views = canonical_layer_views(tensors, self.geometry)
            cache = PagedKVCache(views, self.layout)
            stream = self.runtime.stream(ordinal)
            with self.runtime.device(ordinal):
                copier = StagedCopier(cache, self.chunk_size, STAGING_CHUNKS)
            self._ready = _Ready(stream, copier, cache)
            logger.info(
                "imported worker %d's KV cache on cuda:%d (%d tensors)",
                self.instance_id,
                self.mappings.ordinal,
                len(tensors),
            )
        return self._ready

    def begin(self) -> None:
        """A transfer of this worker starts (its copies will use the mappings)."""
        with self._cond:
            self._inflight += 1

    def end(self) -> None:
        """A transfer's copies completed."""
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    def drained(self, timeout: float) -> bool:
        """Wait until no copy of this worker is in flight (True) or ``timeout`` passed."""
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout)

    def close(self) -> None:
        """Release the mappings on the background releaser, after in-flight copies."""
        ready, self._ready = self._ready, None
        del ready  # the stream, staging and views go with the last copy's references
        self.runtime.releaser.release(self.mappings, self.drained, "unregistered")


def register_cuda_worker(
    instance_id: int,
    records: Sequence[CudaTensorRecord],
    model_name: str,
    world_size: int,
    layout_hints: Mapping[str, Any],
    chunk_size: int,
    runtime: CudaRuntime,
) -> CudaWorker:
    """Check a CUDA registration's layout; nothing is imported yet.

    Raises:
        BadRequestError: An unsupported layout or dtype (the shape named), tensors of
            several dtypes, or a chunk size the block size does not divide.
        NotSupportedError: ``cuda_raw`` handles without cuda-bindings installed.
    """
    from lmcache_core.transfer.cuda_import import raw_ipc_available

    raw = any(r.tag == "cuda_raw" for r in records)
    if raw and runtime.on_cuda and not raw_ipc_available():
        raise NotSupportedError(
            "register_kv_cache: cuda_raw handles need NVIDIA's cuda-bindings package "
            "(pip install cuda-bindings) on the server"
        )
    dtypes = {r.view.dtype for r in records}
    if len(dtypes) != 1:
        names = sorted(dtype_name(d) for d in dtypes)
        raise BadRequestError(f"register_kv_cache: KV tensors of several dtypes {names}")
    try:
        geometry = geometry_for([r.view.shape for r in records], dtypes.pop(), layout_hints)
        geometry.layout.blocks_per_chunk(chunk_size)
    except ValueError as exc:
        raise BadRequestError(f"register_kv_cache: {exc}") from None
    mappings = WorkerMappings(records, runtime.table, runtime.ordinal)
    return CudaWorker(instance_id, model_name, world_size, geometry, mappings, runtime, chunk_size)
