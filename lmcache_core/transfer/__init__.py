"""KV transfer: layouts, the CPU shared-memory path and batched paged gather/scatter.

* :mod:`.layout`: :class:`KVFormat`, :class:`KVLayout`, :func:`detect_layout`.
* :mod:`.cpu_shm`: KV tensors in POSIX shared memory (``cpu_shm`` handles).
* :mod:`.paged`: :class:`PagedKVCache`, the batched copies between paged blocks and L1 objects.
"""

from __future__ import annotations

from lmcache_core.transfer.cpu_shm import (
    MappedShmTensor,
    ShmTensorSpec,
    create_shm_tensor,
    mappings_pending_release,
    validate_shm_name,
)
from lmcache_core.transfer.layout import (
    KVFormat,
    KVLayout,
    detect_layout,
    dtype_from_name,
    dtype_name,
    layout_from_engine_driven,
)
from lmcache_core.transfer.paged import PagedKVCache

__all__ = [
    "KVFormat",
    "KVLayout",
    "MappedShmTensor",
    "PagedKVCache",
    "ShmTensorSpec",
    "create_shm_tensor",
    "detect_layout",
    "dtype_from_name",
    "dtype_name",
    "layout_from_engine_driven",
    "mappings_pending_release",
    "validate_shm_name",
]
