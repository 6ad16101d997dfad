"""``cb_register_rope`` / ``cb_unregister_rope``: each worker's RoPE state.

The worker shares its rotary cos/sin cache(s) as ``cpu_shm`` tensors, exactly as
it shares its KV cache. Unlike upstream, the server copies them at registration
and unmaps them at once: the state never dangles when the engine reallocates or
frees the cache, and the worker's temporary may be collected right after the
reply. The state is dropped with the worker (unregistration or reaping), not only
by ``cb_unregister_rope``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

from lmcache_core.protocol.codec import ProtocolError, decode_device_handles
from lmcache_core.protocol.errors import BadRequestError, NotRegisteredError, NotSupportedError
from lmcache_core.protocol.types import CpuShmHandle
from lmcache_core.transfer.cpu_shm import MappedShmTensor, ShmTensorSpec
from lmcache_engine_blend.rope import RopeState, build_state

logger = logging.getLogger("lmcache.engine.blend")

ENGINE_GROUPS = 1
"""Engine KV groups a registration has (the data path maps single-group caches only)."""


def map_caches(exts: list[Any]) -> list[torch.Tensor]:
    """Copy the shared cos/sin caches into private tensors (the mappings are closed).

    Raises:
        BadRequestError: A handle that is not a mappable ``cpu_shm`` tensor.
        NotSupportedError: A CUDA handle (this build has no GPU data path).
    """
    try:
        handles = decode_device_handles(exts)
    except ProtocolError as exc:
        raise BadRequestError(f"cos_sin_caches_ipc: {exc}") from None
    caches = []
    for index, handle in enumerate(handles):
        if not isinstance(handle, CpuShmHandle):
            raise NotSupportedError(
                f"cos_sin_caches_ipc[{index}] is a {type(handle).__name__}: this server maps "
                "cpu_shm tensors only (the GPU blend path is not built)"
            )
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


class RopeRegistry:
    """RoPE states by instance id (thread-safe).

    Args:
        is_registered: Whether an instance has registered its KV cache (lmcache_driven).
    """

    def __init__(self, is_registered: Callable[[int], bool]) -> None:
        self._is_registered = is_registered
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
        caches = map_caches(cos_sin_caches_ipc)
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
