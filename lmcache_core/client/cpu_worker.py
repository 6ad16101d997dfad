"""A CPU engine worker's side of ``lmcache_driven`` transfers.

Puts one paged KV tensor per layer in POSIX shared memory and registers them with
the server as ``cpu_shm`` handles, as upstream's vLLM adapter does on a CPU-only
host; the server then gathers and scatters blocks itself. Used by tests, the
benchmarks, and CPU inference engines.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import torch

from lmcache_core.client.sync_client import MPClient
from lmcache_core.protocol.types import CacheKey, CpuShmHandle, TensorMetadata
from lmcache_core.transfer.cpu_shm import ShmTensorSpec, create_shm_tensor
from lmcache_core.transfer.layout import KVLayout


def cpu_shm_handle(spec: ShmTensorSpec) -> CpuShmHandle:
    """The ``cpu_shm`` device handle a worker sends for the tensor ``spec`` describes."""
    return CpuShmHandle(
        version=1,
        metadata=TensorMetadata(
            dtype=spec.dtype,
            shape=spec.shape,
            stride=spec.stride,
            storage_offset=spec.storage_offset,
            device_uuid="cpu",
        ),
        shm_name=spec.shm_name,
        nbytes=spec.nbytes,
    )


def shared_copy(
    tensor: torch.Tensor, name: str | None = None
) -> tuple[CpuShmHandle, torch.Tensor, Callable[[], None]]:
    """A copy of ``tensor`` in a new shared-memory segment (a RoPE cos/sin cache, say).

    Args:
        tensor: What to copy.
        name: The segment's name; a fresh unique one when None.

    Returns:
        The segment's ``cpu_shm`` handle, the shared copy and its cleanup (keep the copy
        alive while the server may map it; call the cleanup when done).
    """
    name = name or f"lmcache_kv_{os.getpid()}_{uuid.uuid4().hex[:8]}_copy"
    shared, spec, cleanup = create_shm_tensor(name, tensor.shape, tensor.dtype)
    shared.copy_(tensor)
    return cpu_shm_handle(spec), shared, cleanup


class CpuKVWorker:
    """A worker's paged KV cache in shared memory, registered with a server.

    Args:
        client: A client of the server.
        layout: The KV cache's geometry (one tensor per layer).
        model_name: The model name used in keys.
        world_size: KV sharding width.
        worker_id: This worker's rank in it.
        instance_id: A unique id (a fresh random 63-bit one when None).
    """

    def __init__(
        self,
        client: MPClient,
        layout: KVLayout,
        *,
        model_name: str = "model",
        world_size: int = 1,
        worker_id: int = 0,
        instance_id: int | None = None,
    ) -> None:
        self.client = client
        self.layout = layout
        self.model_name = model_name
        self.world_size = world_size
        self.worker_id = worker_id
        self.instance_id = instance_id if instance_id is not None else uuid.uuid4().int >> 65
        self.layers: list[torch.Tensor] = []
        self.handles: list[CpuShmHandle] = []
        self._cleanups: list[Callable[[], None]] = []
        prefix = f"lmcache_kv_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        try:
            for index in range(layout.num_layers):
                tensor, spec, cleanup = create_shm_tensor(
                    f"{prefix}_{index}", layout.layer_shape(), layout.dtype
                )
                self._cleanups.append(cleanup)
                self.layers.append(tensor)
                self.handles.append(cpu_shm_handle(spec))
        except BaseException:
            self.close()
            raise

    def register(self, layout_hints: dict[str, Any] | None = None) -> None:
        """Register the KV cache with the server."""
        hints = (
            layout_hints if layout_hints is not None else {"kv_layout": self.layout.format.value}
        )
        self.client.register_kv_cache(
            self.instance_id, self.handles, self.model_name, self.world_size, layout_hints=hints
        )

    def unregister(self) -> None:
        """Unregister the KV cache."""
        self.client.unregister_kv_cache(self.instance_id)

    def key(
        self,
        tokens: Sequence[int] | msgspec.Raw,
        start: int,
        end: int,
        request_id: str,
        *,
        worker: bool = True,
        cache_salt: str = "",
        num_kv_readers: int = 1,
    ) -> CacheKey:
        """A key for this worker (``worker=False``: a lookup key for every rank).

        ``tokens`` may be pre-encoded with :func:`~lmcache_core.protocol.types.pack_token_ids`.
        """
        return CacheKey(
            model_name=self.model_name,
            world_size=self.world_size,
            worker_id=self.worker_id if worker else None,
            token_ids=tokens if isinstance(tokens, msgspec.Raw) else list(tokens),
            start=start,
            end=end,
            request_id=request_id,
            cache_salt=cache_salt,
            num_kv_readers=num_kv_readers,
        )

    def store(
        self, key: CacheKey, block_ids: Sequence[int], *, timeout: float | None = None
    ) -> bool:
        """Store the key's window from ``block_ids``; True if all of it is cached."""
        _, ok = self.client.store(key, self.instance_id, [list(block_ids)], timeout=timeout)
        return bool(ok)

    def retrieve(
        self,
        key: CacheKey,
        block_ids: Sequence[int],
        skip_first_n_tokens: int = 0,
        *,
        timeout: float | None = None,
    ) -> bool:
        """Retrieve the key's window into ``block_ids``; True if every chunk came back."""
        _, ok = self.client.retrieve(
            key, self.instance_id, [list(block_ids)], b"", skip_first_n_tokens, timeout=timeout
        )
        return bool(ok)

    def close(self) -> None:
        """Unlink the shared memory (the tensors stay valid until dropped)."""
        for cleanup in self._cleanups:
            cleanup()
        self._cleanups.clear()

    def __enter__(self) -> CpuKVWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
