"""The contiguous CacheBlend KV buffers ``blend_legacy`` workers register, mapped here.

A buffer is one tensor ``[2, L, T, D]`` (K and V, layers, tokens, hidden size),
not vLLM's paged cache: the legacy blend engine keeps the KV of the request it
is assembling in it. One chunk of it, ``[:, :, t : t + C, :]``, is one L1 object
of ``2 * L * C * D`` elements, laid out ``[2, L, C, D]``.

Only ``cpu_shm`` buffers are mapped (POSIX shared memory). Upstream's module was
CUDA-only; a CUDA buffer is refused with a clear error in this build, which has
no GPU data path.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmcache_core.protocol.errors import BadRequestError, NotSupportedError
from lmcache_core.protocol.types import AnyDeviceHandle, CpuShmHandle
from lmcache_core.transfer.cpu_shm import MappedShmTensor, ShmTensorSpec


@dataclass
class CBBuffer:
    """One worker instance's mapped CB buffer.

    Attributes:
        instance_id: The registering instance.
        model_name: Its model (keys are built with it).
        world_size: Its KV sharding width.
        mapping: The mapped ``[2, L, T, D]`` shared memory (closed with the buffer).
    """

    instance_id: int
    model_name: str
    world_size: int
    mapping: MappedShmTensor

    @property
    def tensor(self) -> torch.Tensor:
        """The ``[2, L, T, D]`` view of the shared memory."""
        return self.mapping.tensor

    @property
    def num_layers(self) -> int:
        """L."""
        return int(self.tensor.shape[1])

    @property
    def num_tokens(self) -> int:
        """T: tokens the buffer holds."""
        return int(self.tensor.shape[2])

    @property
    def hidden_size(self) -> int:
        """D."""
        return int(self.tensor.shape[3])

    def object_nbytes(self, chunk_size: int) -> int:
        """Bytes of one chunk's object: ``2 * L * C * D`` elements."""
        return 2 * self.num_layers * chunk_size * self.hidden_size * self.tensor.element_size()

    def chunk(self, start: int, chunk_size: int) -> torch.Tensor:
        """The ``[2, L, C, D]`` slice of tokens ``[start, start + C)`` (a view).

        Raises:
            BadRequestError: The range is not inside the buffer.
        """
        if start < 0 or start + chunk_size > self.num_tokens:
            raise BadRequestError(
                f"tokens [{start}, {start + chunk_size}) are outside the CB buffer of "
                f"{self.num_tokens} tokens"
            )
        return self.tensor[:, :, start : start + chunk_size, :]

    def as_object(self, data: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """An L1 object's uint8 bytes viewed as ``[2, L, C, D]`` of the buffer's dtype."""
        shape = (2, self.num_layers, chunk_size, self.hidden_size)
        return data.view(self.tensor.dtype).view(shape)

    def status(self) -> dict[str, object]:
        """What ``/status`` shows of it."""
        return {
            "model_name": self.model_name,
            "world_size": self.world_size,
            "shape": list(self.tensor.shape),
            "dtype": str(self.tensor.dtype).removeprefix("torch."),
        }

    def close(self) -> None:
        """Unmap the shared memory (once no copy views it any more)."""
        self.mapping.close()


def map_cb_buffer(
    instance_id: int, handles: Sequence[AnyDeviceHandle], model_name: str, world_size: int
) -> CBBuffer:
    """Map a worker's CB buffer.

    Raises:
        BadRequestError: Not exactly one tensor, not ``[2, L, T, D]``, not
            contiguous, or it cannot be mapped.
        NotSupportedError: A CUDA (or other device) buffer: this build maps
            ``cpu_shm`` only.
    """
    if len(handles) != 1:
        raise BadRequestError(
            f"cb_register_kv_cache takes exactly one [2, L, T, D] buffer, got {len(handles)}"
        )
    handle = handles[0]
    if not isinstance(handle, CpuShmHandle):
        raise NotSupportedError(
            f"a {type(handle).__name__} CB buffer needs the GPU data path, which this build "
            "does not have; register a cpu_shm buffer"
        )
    meta = handle.metadata
    shape = tuple(meta.shape)
    if len(shape) != 4 or shape[0] != 2 or min(shape) < 1:
        raise BadRequestError(f"the CB buffer must be shaped [2, L, T, D], not {list(shape)}")
    spec = ShmTensorSpec(
        shm_name=handle.shm_name.removeprefix("/"),
        nbytes=handle.nbytes,
        dtype=meta.dtype,
        shape=shape,
        stride=tuple(meta.stride),
        storage_offset=meta.storage_offset,
    )
    try:
        mapping = MappedShmTensor(spec)
    except (ValueError, OSError) as exc:
        raise BadRequestError(f"cb_register_kv_cache: {exc}") from None
    tensor = mapping.tensor
    if not tensor.is_contiguous():
        mapping.close()
        raise BadRequestError("the CB buffer must be contiguous")
    return CBBuffer(instance_id, model_name, world_size, mapping)


class BufferTable:
    """CB buffers by instance id (thread-safe)."""

    def __init__(self) -> None:
        self._buffers: dict[int, CBBuffer] = {}
        self._lock = threading.Lock()

    def add(self, buffer: CBBuffer) -> None:
        """Register (or replace) an instance's buffer."""
        with self._lock:
            old = self._buffers.pop(buffer.instance_id, None)
            self._buffers[buffer.instance_id] = buffer
        if old is not None:
            old.close()

    def remove(self, instance_id: int) -> bool:
        """Unmap and forget an instance's buffer; False if it had none."""
        with self._lock:
            buffer = self._buffers.pop(instance_id, None)
        if buffer is None:
            return False
        buffer.close()
        return True

    def get(self, instance_id: int) -> CBBuffer | None:
        """The instance's buffer, if registered."""
        with self._lock:
            return self._buffers.get(instance_id)

    def for_model(self, model_name: str, world_size: int) -> CBBuffer | None:
        """Any buffer registered for this model and sharding (they share one layout)."""
        with self._lock:
            for buffer in self._buffers.values():
                if buffer.model_name == model_name and buffer.world_size == world_size:
                    return buffer
        return None

    def status(self) -> dict[str, object]:
        """Every registered buffer."""
        with self._lock:
            return {str(i): b.status() for i, b in self._buffers.items()}

    def close(self) -> None:
        """Unmap every buffer."""
        with self._lock:
            buffers = list(self._buffers.values())
            self._buffers.clear()
        for buffer in buffers:
            buffer.close()
