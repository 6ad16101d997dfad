"""FAKES and doubles that engine tests share: a CUDA importer over CPU tensors, a FIFO policy.

No GPU runs in the default suite: :class:`FakeDeviceImporter` stands in for the CUDA
IPC importer (named a fake on purpose), handing out CPU tensors the test registered by
allocation key, so the engines' CUDA paths run for real on the CPU (with
:class:`~lmcache_core.testing.thread_stream.ThreadStream` for the stream).
:class:`FifoPolicy` is an eviction policy double: first in, first out, with the
accesses recorded for tests that check them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import torch

from lmcache_core.protocol.types import CudaRawHandle, TensorMetadata
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.transfer.cuda_handles import CudaTensorRecord, TensorView
from lmcache_core.transfer.layout import dtype_name

__all__ = ["FakeDeviceImporter", "FifoPolicy"]


class FakeDeviceImporter:
    """FAKE importer: "imports" the test's own CPU tensors (by allocation key).

    Args:
        memory: The tensors by allocation key (more are added by :meth:`share`).
        uuid: The device UUID :meth:`share` writes into its handles.
    """

    def __init__(
        self, memory: dict[bytes, torch.Tensor] | None = None, uuid: str = "GPU-fake-0"
    ) -> None:
        self.memory: dict[bytes, torch.Tensor] = {} if memory is None else memory
        self.uuid = uuid
        self.opened: list[bytes] = []
        self.closed: list[bytes] = []

    def key(self, record: CudaTensorRecord) -> Hashable:
        """The mapping key: the allocation key."""
        return record.allocation_key

    def open(self, record: CudaTensorRecord, ordinal: int) -> Any:
        """The registered tensor (recorded as opened)."""
        self.opened.append(record.allocation_key)
        return self.memory[record.allocation_key]

    def tensor(self, mapping: Any, record: CudaTensorRecord, ordinal: int) -> torch.Tensor:
        """The mapping is the tensor itself."""
        assert isinstance(mapping, torch.Tensor)
        return mapping

    def close(self, mapping: Any, record: CudaTensorRecord, ordinal: int) -> None:
        """Recorded as closed (the tensor stays the test's)."""
        self.closed.append(record.allocation_key)

    def share(self, tensor: torch.Tensor) -> tuple[CudaRawHandle, CudaTensorRecord]:
        """A FAKE ``cuda_raw`` export of ``tensor``: its wire handle and parsed record."""
        key = len(self.memory).to_bytes(2, "big") * 32
        self.memory[key] = tensor
        nbytes = tensor.untyped_storage().nbytes()
        shape, stride = tuple(tensor.shape), tuple(tensor.stride())
        meta = TensorMetadata(dtype_name(tensor.dtype), shape, stride, 0, self.uuid)
        handle = CudaRawHandle(
            version=1, metadata=meta, ipc_handle=key, alloc_offset=0, nbytes=nbytes
        )
        view = TensorView(tensor.dtype, shape, stride, 0, self.uuid)
        return handle, CudaTensorRecord("cuda_raw", view, None, key, 0, nbytes)


class FifoPolicy:
    """Eviction policy double: first in, first out; it records accesses."""

    def __init__(self) -> None:
        self.order: dict[ObjectKey, None] = {}
        self.accessed: list[list[ObjectKey]] = []

    def on_stored(self, keys: Sequence[ObjectKey]) -> None:
        """Append new keys at the end."""
        for key in keys:
            self.order.setdefault(key, None)

    def on_accessed(self, keys: Sequence[ObjectKey]) -> None:
        """Record the access (the order does not change)."""
        self.accessed.append(list(keys))

    def on_removed(self, keys: Sequence[ObjectKey]) -> None:
        """Forget the keys."""
        for key in keys:
            self.order.pop(key, None)

    def candidates(self) -> Iterator[ObjectKey]:
        """Oldest first."""
        return iter(list(self.order))
