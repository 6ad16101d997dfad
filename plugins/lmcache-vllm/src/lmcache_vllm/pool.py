"""The server's L1 pool, mapped into the worker for ``engine_driven`` transfers.

With a shared-memory L1 the server answers ``prepare_store`` / ``prepare_retrieve`` with
slots (offset, length, shape, dtype) in the segment it named at registration; the worker
copies straight into and out of them. Without one (``--shm-name ""``), objects travel
inline in the messages: :class:`InlinePool`.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Mapping
from typing import Any

import torch

from lmcache_core.transfer.cpu_shm import SHM_DIR, validate_shm_name
from lmcache_core.transfer.layout import dtype_from_name


class SharedPool:
    """A read-write mapping of ``/dev/shm/<name>``.

    Args:
        name: The segment name the server sent.
        size: Its size in bytes, as the server sent it.

    Raises:
        ValueError: A name that is not a plain segment name, or a segment smaller than
            ``size``.
        OSError: The segment cannot be opened or mapped.
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = validate_shm_name(name)
        fd = os.open(os.path.join(SHM_DIR, self.name), os.O_RDWR)
        try:
            actual = os.fstat(fd).st_size
            if actual < size:
                raise ValueError(f"L1 pool /dev/shm/{self.name} is {actual} bytes, not {size}")
            self._map = mmap.mmap(fd, actual)
        finally:
            os.close(fd)
        self.size = actual
        self.bytes = torch.frombuffer(self._map, dtype=torch.uint8)

    def slot(self, slot: Mapping[str, Any]) -> torch.Tensor:
        """The tensor view of one slot of a prepare reply.

        Raises:
            ValueError: A slot outside the pool or with an unknown dtype.
        """
        offset, length = int(slot["offset"]), int(slot["length"])
        if offset < 0 or length <= 0 or offset + length > self.size:
            raise ValueError(f"slot [{offset}, {offset + length}) is outside the L1 pool")
        dtype = dtype_from_name(str(slot["dtype"]))
        shape = [int(n) for n in slot["shape"]]
        return self.bytes[offset : offset + length].view(dtype).view(shape)

    def close(self) -> None:
        """Unmap (views handed out must be gone by now)."""
        del self.bytes
        # A view still alive somewhere keeps the mapping; it goes with the view.
        with contextlib.suppress(BufferError):
            self._map.close()
