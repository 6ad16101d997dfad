"""A GPU worker's side of ``lmcache_driven``: CUDA KV tensors exported as upstream does.

Each registered tensor travels as a ``cuda`` handle: torch's ``_share_cuda_()`` 8-tuple and
the view's metadata with the GPU's UUID (upstream's ``CudaIPCWrapper``). Every store and
retrieve records an interprocess event on the current stream and sends its handle; the
reply's event handle is imported and waited on before the blocks are read or reused, as
upstream's worker does.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import torch

from lmcache_core.client import MPClient
from lmcache_core.protocol.types import CacheKey, CudaHandle, TensorMetadata
from lmcache_core.transfer.layout import dtype_name


def export_cuda(tensor: torch.Tensor) -> CudaHandle:
    """``tensor`` as a ``cuda`` device handle (upstream's ``CudaIPCWrapper`` wire form)."""
    storage = tensor.untyped_storage()
    device, handle, size, offset, ref, ref_offset, event, sync = storage._share_cuda_()
    uuid_text = str(torch.cuda.get_device_properties(tensor.device.index).uuid)
    return CudaHandle(
        version=1,
        metadata=TensorMetadata(
            dtype=dtype_name(tensor.dtype),
            shape=tuple(tensor.shape),
            stride=tuple(tensor.stride()),
            storage_offset=int(tensor.storage_offset()),
            device_uuid=uuid_text,
        ),
        handle=(
            int(device),
            handle,
            int(size),
            int(offset),
            ref,
            int(ref_offset),
            event,
            bool(sync),
        ),
    )


def random_kv(shape: Sequence[int], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random bytes as a CUDA tensor of ``dtype`` (fp8 too: only bytes are compared)."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    raw = torch.randint(
        0,
        256,
        (*shape[:-1], shape[-1] * dtype.itemsize),
        generator=generator,
        device="cuda",
        dtype=torch.int32,
    )
    return raw.to(torch.uint8).view(dtype)


class CudaKVWorker:
    """Registered CUDA KV tensors and the transfers of one worker.

    Args:
        client: A client of the server (its own socket: its own affinity thread).
        tensors: The tensors to register (per layer, or one cross-layer tensor).
        layout_hints: The registration's hints.
        model_name: The model name of the keys.
    """

    def __init__(
        self,
        client: MPClient,
        tensors: Sequence[torch.Tensor],
        layout_hints: dict[str, Any] | None = None,
        model_name: str = "gpu-model",
    ) -> None:
        self.client = client
        self.tensors = list(tensors)
        self.hints = layout_hints or {}
        self.model_name = model_name
        self.instance_id = uuid.uuid4().int >> 65

    def register(self) -> None:
        handles = [export_cuda(t) for t in self.tensors]
        self.client.register_kv_cache(
            self.instance_id, handles, self.model_name, 1, layout_hints=self.hints
        )

    def unregister(self) -> None:
        self.client.unregister_kv_cache(self.instance_id)

    def key(self, tokens: Sequence[int], end: int, rid: str, start: int = 0) -> CacheKey:
        return CacheKey(
            model_name=self.model_name,
            world_size=1,
            worker_id=0,
            token_ids=list(tokens),
            start=start,
            end=end,
            request_id=rid,
            cache_salt="",
            num_kv_readers=1,
        )

    def _event(self) -> tuple[torch.cuda.Event, bytes]:
        event = torch.cuda.Event(interprocess=True)
        event.record(torch.cuda.current_stream())
        return event, bytes(event.ipc_handle())

    def _wait(self, handle: bytes) -> None:
        if handle:
            event = torch.cuda.Event.from_ipc_handle(torch.cuda.current_device(), handle)
            torch.cuda.current_stream().wait_event(event)
        torch.cuda.current_stream().synchronize()

    def store(self, key: CacheKey, block_ids: Sequence[int], timeout: float = 60) -> bool:
        keep, handle = self._event()  # kept alive until the reply (CUDA requires it)
        reply, ok = self.client.store(
            key, self.instance_id, [list(block_ids)], handle, timeout=timeout
        )
        self._wait(reply)
        del keep
        return bool(ok)

    def retrieve(
        self, key: CacheKey, block_ids: Sequence[int], skip: int = 0, timeout: float = 60
    ) -> bool:
        keep, handle = self._event()
        reply, ok = self.client.retrieve(
            key, self.instance_id, [list(block_ids)], handle, skip, timeout=timeout
        )
        self._wait(reply)
        del keep
        return bool(ok)

    def lookup(self, tokens: Sequence[int], end: int, rid: str) -> int:
        key = CacheKey(
            model_name=self.model_name,
            world_size=1,
            worker_id=None,
            token_ids=list(tokens),
            start=0,
            end=end,
            request_id=rid,
            cache_salt="",
            num_kv_readers=1,
        )
        assert self.client.lookup(key) is None
        hits = self.client.wait_prefetch_status(rid, 10.0)
        assert isinstance(hits, int), hits
        return hits
