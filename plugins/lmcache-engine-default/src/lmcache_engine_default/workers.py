"""Registered workers: their mapped KV caches (lmcache_driven) or layouts (engine_driven)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmcache_core.protocol.errors import BadRequestError, NotSupportedError
from lmcache_core.protocol.types import AnyDeviceHandle, CpuShmHandle, EngineGroupInfo
from lmcache_core.transfer.cpu_shm import MappedShmTensor, ShmTensorSpec
from lmcache_core.transfer.cuda_devices import cuda_available
from lmcache_core.transfer.cuda_handles import (
    NO_CUDA_MESSAGE,
    CudaTensorRecord,
    parse_cuda_handles,
)
from lmcache_core.transfer.layout import KVLayout, detect_layout
from lmcache_core.transfer.paged import PagedKVCache

if TYPE_CHECKING:
    from lmcache_engine_default.cuda_workers import CudaWorker

logger = logging.getLogger("lmcache.engine")


@dataclass
class MappedWorker:
    """An ``lmcache_driven`` worker: its paged KV cache, mapped into this process."""

    instance_id: int
    model_name: str
    world_size: int
    layout: KVLayout
    cache: PagedKVCache
    mappings: list[MappedShmTensor] = field(default_factory=list)

    def close(self) -> None:
        """Unmap the worker's shared memory (upstream leaked these mappings)."""
        self.cache.close()  # drops its views first, so the unmaps happen now
        for mapping in self.mappings:
            mapping.close()
        self.mappings.clear()


@dataclass
class EngineDrivenWorker:
    """An ``engine_driven`` worker: it copies its own KV; we know its object layout."""

    instance_id: int
    model_name: str
    world_size: int
    layout: KVLayout


def map_worker(
    instance_id: int,
    handles: Sequence[AnyDeviceHandle],
    model_name: str,
    world_size: int,
    layout_hints: dict[str, Any],
    groups: Sequence[EngineGroupInfo],
    chunk_size: int,
) -> MappedWorker:
    """Map a worker's per-layer KV tensors and work out their layout.

    Raises:
        NotSupportedError: Device handles other than ``cpu_shm``, or several KV groups.
        BadRequestError: Handles that cannot be mapped, or an unusable layout.
    """
    if not handles:
        raise BadRequestError("register_kv_cache: kv_cache holds no tensors")
    if not all(isinstance(h, CpuShmHandle) for h in handles):
        # A programming guard: CUDA registrations go through check_cuda_registration and
        # cuda_workers.register_cuda_worker (lmcache_driven.register_kv_cache dispatches).
        raise NotSupportedError("register_kv_cache: map_worker maps cpu_shm handles only")
    if len(groups) > 1:
        raise NotSupportedError("hybrid models with several KV groups are not supported yet")
    mappings: list[MappedShmTensor] = []
    try:
        for handle in handles:
            assert isinstance(handle, CpuShmHandle)
            meta = handle.metadata
            spec = ShmTensorSpec(
                # shm_open(3) names carry one leading "/" (upstream sends them so);
                # the file under /dev/shm has none.
                shm_name=handle.shm_name.removeprefix("/"),
                nbytes=handle.nbytes,
                dtype=meta.dtype,
                shape=tuple(meta.shape),
                stride=tuple(meta.stride),
                storage_offset=meta.storage_offset,
            )
            mappings.append(MappedShmTensor(spec))
        tensors = [m.tensor for m in mappings]
        layout = detect_layout(tensors, layout_hints)
        layout.blocks_per_chunk(chunk_size)
        cache = PagedKVCache(tensors, layout)
    except (ValueError, OSError) as exc:
        for mapping in mappings:
            mapping.close()
        raise BadRequestError(f"register_kv_cache: {exc}") from None
    return MappedWorker(instance_id, model_name, world_size, layout, cache, mappings)


def check_cuda_registration(handles: Sequence[AnyDeviceHandle]) -> list[CudaTensorRecord]:
    """Parse a registration's CUDA handles; refuse it at once on a server without CUDA.

    Raises:
        NotSupportedError: ``cuda_vmm``/``musa``/``npu`` handles (named), or a server
            without a CUDA device (:data:`NO_CUDA_MESSAGE`, one clear answer, never a hang).
        BadRequestError: A malformed handle.
    """
    try:
        records = parse_cuda_handles(handles)
    except ValueError as exc:
        raise BadRequestError(f"register_kv_cache: {exc}") from None
    if not cuda_available():
        # Logged here too: upstream's client cannot show our error frame's text (it fails
        # the call at once with an operation mismatch), so the operator reads it here.
        logger.warning(
            "register_kv_cache with %d CUDA tensors refused: %s", len(records), NO_CUDA_MESSAGE
        )
        raise NotSupportedError(f"register_kv_cache: {NO_CUDA_MESSAGE}")
    return records


class WorkerTable:
    """Workers by instance id, for both transfer modes (thread-safe)."""

    def __init__(self) -> None:
        self.mapped: dict[int, MappedWorker] = {}
        self.cuda: dict[int, CudaWorker] = {}
        """lmcache_driven workers whose KV cache is on a GPU (kept apart from ``mapped``:
        code that copies with CPU tensors, such as the blend engine, never sees them)."""
        self.engine_driven: dict[int, EngineDrivenWorker] = {}
        self._lock = threading.Lock()

    def add_mapped(self, worker: MappedWorker | CudaWorker) -> None:
        """Register (or replace) an lmcache_driven worker (CPU or CUDA)."""
        with self._lock:
            old: MappedWorker | CudaWorker | None = self.mapped.pop(worker.instance_id, None)
            old_cuda = self.cuda.pop(worker.instance_id, None)
            if isinstance(worker, MappedWorker):
                self.mapped[worker.instance_id] = worker
            else:
                self.cuda[worker.instance_id] = worker
        for previous in (old, old_cuda):
            if previous is not None:
                previous.close()

    def lmcache_driven(self, instance_id: int) -> MappedWorker | CudaWorker | None:
        """The lmcache_driven worker of this instance, CPU or CUDA."""
        with self._lock:
            return self.mapped.get(instance_id) or self.cuda.get(instance_id)

    def add_engine_driven(self, worker: EngineDrivenWorker) -> None:
        """Register (or replace) an engine_driven worker."""
        with self._lock:
            self.engine_driven[worker.instance_id] = worker

    def remove(self, instance_id: int) -> bool:
        """Forget the instance in both modes; True if it was known."""
        with self._lock:
            mapped = self.mapped.pop(instance_id, None)
            cuda = self.cuda.pop(instance_id, None)
            driven = self.engine_driven.pop(instance_id, None)
        if mapped is not None:
            mapped.close()
        if cuda is not None:
            cuda.close()  # queues the release on a background thread: returns at once
        return mapped is not None or cuda is not None or driven is not None

    def object_nbytes(self, model_name: str, world_size: int, chunk_size: int) -> int | None:
        """Object size for this model and sharding, from any registered worker (None: none)."""
        with self._lock:
            workers: list[MappedWorker | CudaWorker | EngineDrivenWorker] = [
                *self.mapped.values(),
                *self.cuda.values(),
                *self.engine_driven.values(),
            ]
        for worker in workers:
            if worker.model_name == model_name and worker.world_size == world_size:
                return worker.layout.object_nbytes(chunk_size)
        return None

    def close(self) -> None:
        """Unmap everything."""
        with self._lock:
            workers: list[MappedWorker | CudaWorker] = [*self.mapped.values(), *self.cuda.values()]
            self.mapped.clear()
            self.cuda.clear()
            self.engine_driven.clear()
        for worker in workers:
            worker.close()

    def summary(self) -> dict[str, Any]:
        """Registered workers for ``/status``."""
        with self._lock:
            lmcache_driven: list[MappedWorker | CudaWorker] = [
                *self.mapped.values(),
                *self.cuda.values(),
            ]
            return {
                "lmcache_driven": {
                    str(w.instance_id): {
                        "model_name": w.model_name,
                        "world_size": w.world_size,
                        "layout": w.layout.format.value,
                        "num_layers": w.layout.num_layers,
                        "num_blocks": w.layout.num_blocks,
                    }
                    for w in lmcache_driven
                },
                "engine_driven": {
                    str(w.instance_id): {"model_name": w.model_name, "world_size": w.world_size}
                    for w in self.engine_driven.values()
                },
            }
