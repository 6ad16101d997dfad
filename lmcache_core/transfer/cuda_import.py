"""Importing a worker's exported CUDA allocations (runs only on a CUDA host).

* ``cuda``: torch's own path, ``UntypedStorage._new_shared_cuda`` with the 8-tuple, on the
  server's ordinal for the worker's GPU. Torch caches the process's IPC mappings and closes
  one when the last storage over it is freed, so closing is dropping our storage.
* ``cuda_raw``: ``cudaIpcOpenMemHandle`` / ``cudaIpcCloseMemHandle`` through cuda-bindings
  (NVIDIA's ``cuda-bindings`` package, installed with recent torch CUDA wheels); the tensor
  is built over the mapped range with ``__cuda_array_interface__`` (no copy, not owning).

Refcounting across layers and workers is :class:`~.cuda_mappings.MappingTable`'s job.
"""

from __future__ import annotations

import ctypes
from collections.abc import Hashable
from typing import Any

import torch

from lmcache_core.transfer.cuda_handles import CudaTensorRecord

__all__ = ["CudaIpcImporter", "raw_ipc_available"]


def _runtime() -> Any:
    from cuda.bindings import runtime

    return runtime


def raw_ipc_available() -> bool:
    """Whether ``cuda_raw`` handles can be opened here (cuda-bindings importable)."""
    try:
        _runtime()
    except ImportError:
        return False
    return True


class _DeviceRange:
    """A device byte range for ``torch.as_tensor`` (``__cuda_array_interface__`` v3)."""

    def __init__(self, pointer: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (pointer, False),
            "version": 3,
            "strides": None,
        }


class CudaIpcImporter:
    """The real :class:`~.cuda_mappings.AllocationImporter` for ``cuda`` and ``cuda_raw``."""

    def key(self, record: CudaTensorRecord) -> Hashable:
        """``cuda``: one storage (allocation, offset, size); ``cuda_raw``: the allocation."""
        if record.storage is not None:
            s = record.storage
            return ("cuda", s.ipc_handle, s.storage_offset_bytes, s.storage_nbytes)
        return ("cuda_raw", record.allocation_key)

    def open(self, record: CudaTensorRecord, ordinal: int) -> Any:
        """Map the storage (``cuda``) or the whole allocation (``cuda_raw``)."""
        if record.storage is not None:
            s = record.storage
            with torch.cuda.device(ordinal):
                return torch.UntypedStorage._new_shared_cuda(
                    ordinal,
                    s.ipc_handle,
                    s.storage_nbytes,
                    s.storage_offset_bytes,
                    s.ref_counter_handle,
                    s.ref_counter_offset,
                    s.event_handle,
                    s.event_sync_required,
                )
        runtime = _runtime()
        assert record.raw_handle is not None
        handle = runtime.cudaIpcMemHandle_t()
        ctypes.memmove(int(handle.getPtr()), record.raw_handle, len(record.raw_handle))
        with torch.cuda.device(ordinal):
            err, pointer = runtime.cudaIpcOpenMemHandle(
                handle, runtime.cudaIpcMemLazyEnablePeerAccess
            )
        if err != runtime.cudaError_t.cudaSuccess:
            raise RuntimeError(f"cudaIpcOpenMemHandle failed: {err}")
        return int(pointer)

    def tensor(self, mapping: Any, record: CudaTensorRecord, ordinal: int) -> torch.Tensor:
        """The layer tensor over the mapping."""
        view = record.view
        if record.storage is not None:
            out = torch.empty(0, dtype=view.dtype, device=f"cuda:{ordinal}")
            return out.set_(mapping, view.storage_offset, view.shape, view.stride)
        raw = torch.as_tensor(
            _DeviceRange(int(mapping) + record.alloc_offset, record.range_nbytes),
            device=f"cuda:{ordinal}",
        )
        typed = raw[: record.range_nbytes - record.range_nbytes % view.dtype.itemsize]
        return typed.view(view.dtype).as_strided(view.shape, view.stride, view.storage_offset)

    def close(self, mapping: Any, record: CudaTensorRecord, ordinal: int) -> None:
        """Unmap: drop the storage (torch closes it) or ``cudaIpcCloseMemHandle``."""
        if record.storage is not None:
            del mapping  # the last reference: torch's deleter closes the IPC mapping
            return
        runtime = _runtime()
        with torch.cuda.device(ordinal):
            (err,) = runtime.cudaIpcCloseMemHandle(int(mapping))
        if err != runtime.cudaError_t.cudaSuccess:
            raise RuntimeError(f"cudaIpcCloseMemHandle failed: {err}")
