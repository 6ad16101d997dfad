"""CUDA KV-cache handles from ``register_kv_cache``, parsed into typed records.

Upstream's worker wraps every layer tensor in a device handle (see the reference notes,
section 3). Two CUDA tags are handled here:

* ``cuda``: torch's ``UntypedStorage._share_cuda_()`` 8-tuple (device, allocation IPC
  handle, storage size in bytes, storage offset in bytes within the allocation, ref-counter
  shm handle, ref-counter offset, event IPC handle, event-sync flag) plus the tensor view.
* ``cuda_raw``: a 64-byte ``cudaIpcMemHandle`` of the whole allocation, the tensor's byte
  offset from the allocation base and its byte count (``--isolated-ipc``); the view's storage
  offset is 0 because the alloc offset already points at the first element.

Parsing never touches a device: it checks types and bounds exactly as upstream's own decoder
does (a view that spans past its storage is refused), so a CPU-only server can tell a
well-formed CUDA registration (then it answers :data:`NO_CUDA_MESSAGE`) from a broken one.
``cuda_vmm``, ``musa`` and ``npu`` are refused as not supported, naming the tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from lmcache_core.protocol.errors import NotSupportedError
from lmcache_core.protocol.types import (
    AnyDeviceHandle,
    CpuShmHandle,
    CudaHandle,
    CudaRawHandle,
    CudaVmmHandle,
    MusaHandle,
    NpuHandle,
    TensorMetadata,
)
from lmcache_core.transfer.layout import dtype_from_name

__all__ = [
    "NO_CUDA_MESSAGE",
    "CudaTensorRecord",
    "TensorView",
    "TorchCudaStorage",
    "handle_tag",
    "parse_cuda_handle",
    "parse_cuda_handles",
]

NO_CUDA_MESSAGE = (
    "this server has no CUDA device; run it on the GPU host or use engine_driven "
    "(lmcache.mp.mp_transfer_mode=engine_driven)"
)
"""The one answer of a CPU-only server to a registration with CUDA handles."""

_UNSUPPORTED_TAGS: dict[type, str] = {
    CudaVmmHandle: "cuda_vmm",
    MusaHandle: "musa",
    NpuHandle: "npu",
}
_WHY_UNSUPPORTED = {
    "cuda_vmm": "CUDA VMM exports need their file descriptors passed out of band, which this "
    "server does not implement; register with legacy CUDA IPC (disable lmcache.mp.use_vmm_api)",
    "musa": "this server has no MUSA transfer engine",
    "npu": "this server has no NPU transfer engine",
}


def handle_tag(handle: AnyDeviceHandle) -> str:
    """The wire tag of a decoded handle (``"cuda"``, ``"cpu_shm"``, ...)."""
    if isinstance(handle, CudaHandle):
        return "cuda"
    if isinstance(handle, CudaRawHandle):
        return "cuda_raw"
    if isinstance(handle, CpuShmHandle):
        return "cpu_shm"
    return _UNSUPPORTED_TAGS[type(handle)]


def _int(value: object, what: str, minimum: int = 0) -> int:
    # bool is an int subclass; upstream's decoder refuses it where an int is due.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


def _opt_bytes(value: object, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    raise ValueError(f"{what} must be bytes or nil, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class TensorView:
    """How a tensor lies in its storage (the handle's ``metadata``).

    Attributes:
        dtype: The torch dtype.
        shape: The tensor's shape.
        stride: Its strides, in elements.
        storage_offset: Elements from the storage's start to the first element.
        device_uuid: The exporting GPU's UUID (mapped to a local ordinal at import).
    """

    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    device_uuid: str

    @classmethod
    def from_metadata(cls, metadata: TensorMetadata) -> TensorView:
        """Check a handle's metadata (upstream's checks: a known dtype, matching ranks).

        Raises:
            ValueError: Unknown dtype, or shape and stride ranks differ.
        """
        dtype = dtype_from_name(metadata.dtype)
        shape, stride = tuple(metadata.shape), tuple(metadata.stride)
        if len(shape) != len(stride):
            raise ValueError(f"shape {list(shape)} and stride {list(stride)} differ in rank")
        return cls(dtype, shape, stride, metadata.storage_offset, metadata.device_uuid)

    def byte_span(self) -> int:
        """Bytes from the storage's start to just past the view's last element (0 if empty)."""
        if 0 in self.shape:
            return 0
        last = sum((size - 1) * step for size, step in zip(self.shape, self.stride, strict=True))
        return (self.storage_offset + last + 1) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the elements (``numel * itemsize``)."""
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


@dataclass(frozen=True, slots=True)
class TorchCudaStorage:
    """torch's ``_share_cuda_()`` tuple, by name.

    Attributes:
        device: The exporter's device ordinal (in its own ``CUDA_VISIBLE_DEVICES``; the
            server uses the view's UUID instead).
        ipc_handle: ``cudaIpcMemHandle`` of the allocation holding the storage.
        storage_nbytes: The storage's size.
        storage_offset_bytes: Where the storage starts in the allocation.
        ref_counter_handle: The shm name of torch's cross-process ref counter.
        ref_counter_offset: The counter's slot in it.
        event_handle: ``cudaIpcEventHandle`` of the storage's last-use event, or nil.
        event_sync_required: Whether the importer must wait on that event first.
    """

    device: int
    ipc_handle: bytes
    storage_nbytes: int
    storage_offset_bytes: int
    ref_counter_handle: bytes | None
    ref_counter_offset: int
    event_handle: bytes | None
    event_sync_required: bool

    @classmethod
    def from_tuple(cls, handle: Sequence[object]) -> TorchCudaStorage:
        """Check the 8-tuple the way upstream's ``CudaIPCData`` does.

        Raises:
            ValueError: Wrong arity or an element of the wrong type.
        """
        if len(handle) != 8:
            raise ValueError(f"a cuda storage handle is an 8-tuple, got {len(handle)} elements")
        device, ipc, size, offset, ref, ref_offset, event, sync = handle
        ipc_handle = _opt_bytes(ipc, "the storage IPC handle")
        if not ipc_handle:
            # torch sends nil only for an empty storage, which cannot hold a KV cache.
            raise ValueError("the cuda storage handle has no IPC handle (an empty storage)")
        if not isinstance(sync, bool):
            raise ValueError(f"the event-sync flag must be a bool, got {sync!r}")
        return cls(
            device=_int(device, "the storage device"),
            ipc_handle=ipc_handle,
            storage_nbytes=_int(size, "the storage size"),
            storage_offset_bytes=_int(offset, "the storage offset"),
            ref_counter_handle=_opt_bytes(ref, "the ref-counter handle"),
            ref_counter_offset=_int(ref_offset, "the ref-counter offset"),
            event_handle=_opt_bytes(event, "the event handle"),
            event_sync_required=sync,
        )


@dataclass(frozen=True, slots=True)
class CudaTensorRecord:
    """One layer tensor of a CUDA registration, checked, not yet imported.

    Attributes:
        tag: ``"cuda"`` or ``"cuda_raw"``.
        view: The tensor's placement in its storage (or, for ``cuda_raw``, in its byte range).
        storage: The torch storage handle (``cuda`` only).
        raw_handle: The allocation's 64-byte ``cudaIpcMemHandle`` (``cuda_raw`` only).
        alloc_offset: ``cuda_raw``: bytes from the allocation base to the tensor.
        range_nbytes: ``cuda_raw``: bytes of the shared range; ``cuda``: the storage size.
    """

    tag: Literal["cuda", "cuda_raw"]
    view: TensorView
    storage: TorchCudaStorage | None
    raw_handle: bytes | None
    alloc_offset: int
    range_nbytes: int

    @property
    def allocation_key(self) -> bytes:
        """Identifies the exporter's allocation: layers that share one share its mapping.

        The CUDA driver maps an allocation once per process however often its handle is
        opened, and one close unmaps it for everybody, so imports are counted per key.
        """
        if self.storage is not None:
            return self.storage.ipc_handle
        assert self.raw_handle is not None
        return self.raw_handle


def parse_cuda_handle(handle: CudaHandle | CudaRawHandle) -> CudaTensorRecord:
    """Check one decoded ``cuda`` or ``cuda_raw`` handle.

    Raises:
        ValueError: A malformed handle or a view larger than its storage or range.
    """
    view = TensorView.from_metadata(handle.metadata)
    if isinstance(handle, CudaHandle):
        storage = TorchCudaStorage.from_tuple(handle.handle)
        if view.byte_span() > storage.storage_nbytes:
            raise ValueError(
                f"tensor {list(view.shape)} at storage offset {view.storage_offset} spans "
                f"{view.byte_span()} bytes, more than its {storage.storage_nbytes}-byte storage"
            )
        return CudaTensorRecord("cuda", view, storage, None, 0, storage.storage_nbytes)
    if view.byte_span() > handle.nbytes:
        raise ValueError(
            f"tensor {list(view.shape)} spans {view.byte_span()} bytes, more than the "
            f"{handle.nbytes}-byte range of its cuda_raw handle"
        )
    return CudaTensorRecord(
        "cuda_raw", view, None, handle.ipc_handle, handle.alloc_offset, handle.nbytes
    )


def parse_cuda_handles(handles: Sequence[AnyDeviceHandle]) -> list[CudaTensorRecord]:
    """Check a whole CUDA registration (every handle ``cuda`` or ``cuda_raw``).

    Raises:
        NotSupportedError: A ``cuda_vmm``, ``musa`` or ``npu`` handle (named, with why).
        ValueError: A malformed handle (its index named), or ``cpu_shm`` mixed with CUDA.
    """
    unsupported = sorted({handle_tag(h) for h in handles if type(h) in _UNSUPPORTED_TAGS})
    if unsupported:
        reasons = "; ".join(f"{tag}: {_WHY_UNSUPPORTED[tag]}" for tag in unsupported)
        raise NotSupportedError(
            f"device handle type {', '.join(unsupported)} not supported ({reasons})"
        )
    records = []
    for index, handle in enumerate(handles):
        if not isinstance(handle, CudaHandle | CudaRawHandle):
            raise ValueError(
                f"kv_cache[{index}] is a {handle_tag(handle)} handle in a CUDA registration; "
                "all layers of one worker must use one kind of handle"
            )
        try:
            records.append(parse_cuda_handle(handle))
        except ValueError as exc:
            raise ValueError(f"kv_cache[{index}] ({handle_tag(handle)}): {exc}") from None
    return records
