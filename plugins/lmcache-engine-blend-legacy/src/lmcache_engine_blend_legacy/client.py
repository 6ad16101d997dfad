"""A CPU worker's side of ``blend_legacy``: its CB buffer in shared memory, and the calls.

The legacy blend engine keeps one contiguous ``[2, L, T, D]`` KV buffer per
instance. :class:`CpuCBBuffer` creates it in POSIX shared memory, registers it
with the server as a ``cpu_shm`` handle, and wraps the legacy operations (sent
by name). Used by the tests and by a CPU engine that drives the legacy module.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

import torch

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import cpu_shm_handle
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.protocol.types import CacheKey, CBMatchResult
from lmcache_core.transfer.cpu_shm import create_shm_tensor


class CpuCBBuffer:
    """One instance's CB buffer in shared memory, registered with a server.

    Args:
        client: A client of the server.
        num_layers: L.
        num_tokens: T: tokens the buffer holds.
        hidden_size: D: elements per token and layer (heads x head size).
        dtype: The KV dtype.
        model_name: The model name used in keys.
        world_size: KV sharding width.
        worker_id: This worker's rank.
        instance_id: A unique id (a fresh random 63-bit one when None).

    Attributes:
        tensor: The ``[2, L, T, D]`` buffer (write KV into it, read retrieved KV).
    """

    def __init__(
        self,
        client: MPClient,
        num_layers: int,
        num_tokens: int,
        hidden_size: int,
        dtype: torch.dtype = torch.bfloat16,
        *,
        model_name: str = "model",
        world_size: int = 1,
        worker_id: int = 0,
        instance_id: int | None = None,
    ) -> None:
        self.client = client
        self.model_name = model_name
        self.world_size = world_size
        self.worker_id = worker_id
        self.instance_id = instance_id if instance_id is not None else uuid.uuid4().int >> 65
        name = f"lmcache_cb_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        shape = (2, num_layers, num_tokens, hidden_size)
        self.tensor, spec, self._cleanup = create_shm_tensor(name, shape, dtype)
        self.handle = cpu_shm_handle(spec)

    def register(self) -> None:
        """``cb_register_kv_cache`` of this buffer."""
        self.client.call(
            "cb_register_kv_cache",
            self.instance_id,
            [encode_device_handle(self.handle)],
            self.model_name,
            self.world_size,
        )

    def unregister(self) -> None:
        """``cb_unregister_kv_cache``."""
        self.client.call("cb_unregister_kv_cache", self.instance_id)

    def key(
        self,
        tokens: Sequence[int],
        request_id: str,
        *,
        worker: bool = True,
        cache_salt: str = "",
        num_kv_readers: int = 1,
    ) -> CacheKey:
        """A key of the whole of ``tokens`` (``worker=False``: for every rank, as a scheduler)."""
        return CacheKey(
            model_name=self.model_name,
            world_size=self.world_size,
            worker_id=self.worker_id if worker else None,
            token_ids=list(tokens),
            start=0,
            end=len(tokens),
            request_id=request_id,
            cache_salt=cache_salt,
            num_kv_readers=num_kv_readers,
        )

    def store_pre_computed(
        self, tokens: Sequence[int], offset: int, request_id: str, *, cache_salt: str = ""
    ) -> bool:
        """Store one document whose KV sits in the buffer from token ``offset``."""
        key = self.key(tokens, request_id, cache_salt=cache_salt)
        _, ok = self.client.call("cb_store_pre_computed", key, offset, self.instance_id, b"")
        return bool(ok)

    def store_final(
        self, tokens: Sequence[int], offset: int, request_id: str, *, cache_salt: str = ""
    ) -> bool:
        """Store a whole request whose KV sits in the buffer from token ``offset``."""
        key = self.key(tokens, request_id, cache_salt=cache_salt)
        _, ok = self.client.call("cb_store_final", key, offset, self.instance_id, b"")
        return bool(ok)

    def lookup(
        self, tokens: Sequence[int], request_id: str, *, cache_salt: str = ""
    ) -> list[CBMatchResult]:
        """The stored chunks found in ``tokens``, now held for ``request_id``."""
        key = self.key(tokens, request_id, worker=False, cache_salt=cache_salt)
        matches: list[CBMatchResult] = self.client.call("cb_lookup_pre_computed_v2", key)
        return matches

    def retrieve(
        self,
        tokens: Sequence[int],
        matches: Sequence[CBMatchResult],
        offset: int,
        request_id: str,
        *,
        cache_salt: str = "",
    ) -> bool:
        """Copy each match's KV into the buffer at token ``offset + cur_st``; True if all came."""
        key = self.key(tokens, request_id, cache_salt=cache_salt)
        _, ok = self.client.call(
            "cb_retrieve_pre_computed_v2", key, list(matches), offset, self.instance_id, b""
        )
        return bool(ok)

    def close(self) -> None:
        """Unlink the shared memory (the tensor stays valid until dropped)."""
        self._cleanup()

    def __enter__(self) -> CpuCBBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
