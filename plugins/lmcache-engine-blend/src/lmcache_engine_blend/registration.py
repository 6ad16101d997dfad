"""``cb_register_rope`` / ``cb_unregister_rope``: each worker's RoPE state.

The worker shares its rotary cos/sin cache(s) as it shares its KV cache: ``cpu_shm``
tensors for a CPU worker, CUDA IPC handles (``cuda``/``cuda_raw``) for a worker whose KV
cache is on a GPU. Unlike upstream, the server copies them at registration and
unmaps them at once (a CUDA cache into a private tensor on the worker's GPU, imported
through the same importer as its KV cache, on its affinity thread): the state never
dangles when the engine reallocates or frees the cache, and the worker's temporary
may be collected right after the reply. The state is dropped with the worker
(unregistration or reaping), not only by ``cb_unregister_rope``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lmcache_engine_default.cuda_workers import CudaWorker

from lmcache_core.protocol.codec import ProtocolError, decode_device_handles
from lmcache_core.protocol.errors import BadRequestError, NotRegisteredError, NotSupportedError
from lmcache_core.protocol.types import AnyDeviceHandle, CpuShmHandle
from lmcache_core.transfer.cpu_shm import MappedShmTensor, ShmTensorSpec
from lmcache_core.transfer.cuda_handles import CudaTensorRecord, parse_cuda_handles
from lmcache_core.transfer.cuda_mappings import WorkerMappings
from lmcache_engine_blend.rope import RopeState, build_state

logger = logging.getLogger("lmcache.engine.blend")

ENGINE_GROUPS = 1
"""Engine KV groups a registration has (the data path maps single-group caches only)."""


CudaImport = Callable[[Sequence[CudaTensorRecord]], list[torch.Tensor]]
"""Imports CUDA cos/sin caches into private device tensors (the worker's importer)."""


def map_caches(exts: list[Any], import_cuda: CudaImport | None = None) -> list[torch.Tensor]:
    """Copy the shared cos/sin caches into private tensors (the mappings are closed).

    Args:
        exts: The ``cos_sin_caches_ipc`` handles: all ``cpu_shm``, or all CUDA.
        import_cuda: How CUDA handles are imported (None: the worker's KV cache is not
            on a GPU, and CUDA caches are refused).

    Raises:
        BadRequestError: A handle that cannot be mapped, or CPU and CUDA handles mixed.
        NotSupportedError: CUDA handles for a worker without a CUDA KV registration, or
            a device handle type the server cannot import (named).
    """
    try:
        handles = decode_device_handles(exts)
    except ProtocolError as exc:
        raise BadRequestError(f"cos_sin_caches_ipc: {exc}") from None
    if handles and not all(isinstance(h, CpuShmHandle) for h in handles):
        return _import_device_caches(handles, import_cuda)
    caches = []
    for index, handle in enumerate(handles):
        assert isinstance(handle, CpuShmHandle)
        meta = handle.metadata
        spec = ShmTensorSpec(
            shm_name=handle.shm_name.removeprefix("/"),
            nbytes=handle.nbytes,
            dtype=meta.dtype,
            shape=tuple(meta.shape),
            stride=tuple(meta.stride),
            storage_offset=meta.storage_offset,
        )
        try:
            with MappedShmTensor(spec) as mapped:
                caches.append(mapped.tensor.clone())
        except (ValueError, OSError) as exc:
            raise BadRequestError(f"cos_sin_caches_ipc[{index}]: {exc}") from None
    return caches


def _import_device_caches(
    handles: Sequence[AnyDeviceHandle], import_cuda: CudaImport | None
) -> list[torch.Tensor]:
    if import_cuda is None:
        raise NotSupportedError(
            "cos_sin_caches_ipc holds device handles, but this worker's KV cache is not on a "
            "GPU (register_kv_cache with CUDA handles first, or share cpu_shm caches)"
        )
    try:
        records = parse_cuda_handles(handles)
    except ValueError as exc:
        raise BadRequestError(f"cos_sin_caches_ipc: {exc}") from None
    try:
        return import_cuda(records)
    except ValueError as exc:  # the worker's GPU is not visible here, a released mapping
        raise BadRequestError(f"cos_sin_caches_ipc: {exc}") from None


def import_cuda_caches(
    worker: CudaWorker, records: Sequence[CudaTensorRecord]
) -> list[torch.Tensor]:
    """Import cos/sin caches through ``worker``'s importer and copy them on its GPU.

    Runs on the worker's affinity thread (``cb_register_rope`` is an affinity op). The
    copies are private device tensors; the mappings are released once the copies
    completed (the stream is synchronised first on CUDA).
    """
    runtime = worker.runtime
    mappings = WorkerMappings(records, runtime.table, runtime.ordinal)
    try:
        tensors = mappings.tensors()
        ordinal = mappings.ordinal
        assert ordinal is not None
        with runtime.device(ordinal):
            copies = [t.detach().clone(memory_format=torch.contiguous_format) for t in tensors]
            if runtime.on_cuda:  # the copies must be done before the mappings go
                torch.cuda.current_stream().synchronize()
        return copies
    finally:
        mappings.release()


class RopeRegistry:
    """RoPE states by instance id (thread-safe).

    Args:
        is_registered: Whether an instance has registered its KV cache (lmcache_driven).
        cuda_worker: The instance's CUDA worker, if its KV cache is on a GPU (its
            importer imports CUDA cos/sin caches).
    """

    def __init__(
        self,
        is_registered: Callable[[int], bool],
        cuda_worker: Callable[[int], CudaWorker | None] = lambda _instance_id: None,
    ) -> None:
        self._is_registered = is_registered
        self._cuda_worker = cuda_worker
        self._states: dict[int, RopeState] = {}
        self._lock = threading.Lock()

    def get(self, instance_id: int) -> RopeState | None:
        """The instance's state, if registered."""
        with self._lock:
            return self._states.get(instance_id)

    def register(
        self,
        instance_id: int,
        cos_sin_caches_ipc: list[Any],
        head_size: int,
        is_neox_style: bool,
        group_to_cache: list[int],
        group_rot: list[list[int]],
        group_head_size: list[int],
        kv_quant: str,
    ) -> None:
        """Validate and record (or replace) the instance's RoPE state.

        Raises:
            NotRegisteredError: No ``register_kv_cache`` for the instance yet.
            BadRequestError: An invalid registration (the reason named).
        """
        if not self._is_registered(instance_id):
            raise NotRegisteredError(
                f"instance {instance_id}: send register_kv_cache before cb_register_rope"
            )
        # Validate the cheap arguments before mapping anything.
        build_state(
            [], head_size, is_neox_style, [], group_rot, group_head_size, kv_quant, ENGINE_GROUPS
        )
        worker = self._cuda_worker(instance_id)
        importer: CudaImport | None = None
        if worker is not None:

            def importer(records: Sequence[CudaTensorRecord]) -> list[torch.Tensor]:
                return import_cuda_caches(worker, records)

        caches = map_caches(cos_sin_caches_ipc, importer)
        state = build_state(
            caches,
            head_size,
            is_neox_style,
            group_to_cache,
            group_rot,
            group_head_size,
            kv_quant,
            ENGINE_GROUPS,
        )
        for cache in state.caches:
            if cache.is_cuda:  # normalised on this thread's stream: done before any retrieve
                torch.cuda.synchronize(cache.device)
        with self._lock:
            self._states[instance_id] = state
        logger.info(
            "instance %d: rope registered (%d caches, head %d, %s)",
            instance_id,
            len(caches),
            head_size,
            "neox" if is_neox_style else "gptj",
        )

    def drop(self, instance_id: int) -> bool:
        """Forget the instance's state; True if it had one."""
        with self._lock:
            return self._states.pop(instance_id, None) is not None

    def ids(self) -> list[int]:
        """Registered instance ids."""
        with self._lock:
            return sorted(self._states)
