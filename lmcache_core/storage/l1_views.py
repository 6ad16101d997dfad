"""Views of L1 objects in the arena (zero copy), and the shared segment they live in.

Bytes are copied outside the L1 lock: a writer fills its reservation's
:meth:`ArenaViews.buffer` and a reader reads its locked object's
:meth:`ArenaViews.read_view`. The views stay valid because staged and locked
extents are never freed (until their TTL expires).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from lmcache_core.storage.arena import Arena
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1_objects import Reservation, ResidentObject, SharedSegment


class ArenaViews:
    """The view methods of :class:`~lmcache_core.storage.l1.L1Manager` (a mixin).

    They need only the arena, the lock and the table of resident objects.
    """

    arena: Arena
    _lock: threading.Lock
    _resident: dict[ObjectKey, ResidentObject]

    def buffer(self, res_or_offset: Reservation | int, nbytes: int | None = None) -> torch.Tensor:
        """The bytes of a reservation (or of ``nbytes`` at an arena offset), as a view.

        Raises:
            ValueError: An offset without ``nbytes``, or a range outside the arena.
        """
        if isinstance(res_or_offset, Reservation):
            return self.arena.view(res_or_offset.offset, res_or_offset.nbytes)
        if nbytes is None:
            raise ValueError("buffer(offset) needs nbytes")
        return self.arena.view(res_or_offset, nbytes)

    def shared_segment(self) -> SharedSegment | None:
        """The shared-memory segment other processes map to reach L1 objects.

        Returns:
            Its name and size, or None when L1 is private memory (objects must
            then travel inline).
        """
        name = self.arena.shm_name
        return SharedSegment(name, self.arena.size_bytes) if name else None

    def offsets(self, keys: Sequence[ObjectKey]) -> list[int]:
        """Byte offsets of resident objects in the arena (in :meth:`shared_segment`).

        Hold a read lock while another process uses them.

        Raises:
            KeyError: A key is not resident.
        """
        with self._lock:
            return [obj.offset for obj in map(self._resident.__getitem__, keys)]

    def read_view(self, key: ObjectKey) -> torch.Tensor:
        """The bytes of a resident object, as a uint8 view (no copy).

        Hold a read lock while using it, or it may be evicted under you.

        Raises:
            KeyError: The key is not resident.
        """
        with self._lock:
            obj = self._resident[key]
            offset, nbytes = obj.offset, obj.nbytes
        return self.arena.view(offset, nbytes)

    def read_views(self, keys: Sequence[ObjectKey]) -> list[torch.Tensor]:
        """:meth:`read_view` for a batch, under one acquisition of the lock.

        Raises:
            KeyError: A key is not resident.
        """
        with self._lock:
            extents = [(obj.offset, obj.nbytes) for obj in map(self._resident.__getitem__, keys)]
        return [self.arena.view(offset, nbytes) for offset, nbytes in extents]
