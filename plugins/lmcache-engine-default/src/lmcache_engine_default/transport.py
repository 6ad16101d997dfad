"""How ``engine_driven`` workers move object bytes: through the shared L1 pool, or inline.

With a shared-memory L1 (``--shm-name``), a worker maps the pool and copies
objects itself: ``prepare_store`` / ``prepare_retrieve`` answer with slots
(offset, length, shape, dtype) and the read locks are held until
``commit_retrieve``. Without one, the bytes travel in the messages: the commit
of a store carries them, and ``prepare_retrieve`` answers with them. The choice
is made once, when the engine starts (:func:`transport_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from lmcache_core.protocol.types import EngineDrivenRegistrationReply, PrepareRetrieveReply
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager, Reservation, SharedSegment
from lmcache_core.transfer.layout import KVLayout, dtype_name


class Transport(Protocol):
    """One way of moving object bytes between an engine_driven worker and L1."""

    holds_read_locks: bool
    """Whether ``prepare_retrieve`` keeps its read locks until ``commit_retrieve``."""

    def registration_reply(self) -> EngineDrivenRegistrationReply:
        """What a registering worker is told about the pool."""
        ...

    def store_context(
        self, layout: KVLayout, reservations: Sequence[Reservation], nbytes: int
    ) -> dict[str, Any]:
        """How the worker delivers the reserved objects (``prepare_store``'s context)."""
        ...

    def missing_data_error(self) -> str | None:
        """Why a ``commit_store`` without inline bytes is refused; None when it is fine."""
        ...

    def retrieve_reply(self, keys: Sequence[ObjectKey], layout: KVLayout) -> PrepareRetrieveReply:
        """The reply to a ``prepare_retrieve`` whose keys are read-locked."""
        ...


class SharedPoolTransport:
    """The worker maps the L1 segment and copies objects at the offsets we give it.

    Args:
        l1: The L1 tier.
        segment: Its shared segment.
        chunk_size: Tokens per chunk (the slots' shape).
    """

    holds_read_locks = True

    def __init__(self, l1: L1Manager, segment: SharedSegment, chunk_size: int) -> None:
        self.l1 = l1
        self.segment = segment
        self.chunk_size = chunk_size

    def registration_reply(self) -> EngineDrivenRegistrationReply:
        """The segment's name and size."""
        return EngineDrivenRegistrationReply(self.segment.name, self.segment.size_bytes)

    def store_context(
        self, layout: KVLayout, reservations: Sequence[Reservation], nbytes: int
    ) -> dict[str, Any]:
        """The slots to write."""
        return {"slots": [self._slot(layout, r.offset, r.nbytes) for r in reservations]}

    def missing_data_error(self) -> str | None:
        """None: the worker wrote into the pool."""
        return None

    def retrieve_reply(self, keys: Sequence[ObjectKey], layout: KVLayout) -> PrepareRetrieveReply:
        """The slots to read (the locks stay until ``commit_retrieve``)."""
        nbytes = layout.object_nbytes(self.chunk_size)
        slots = [self._slot(layout, offset, nbytes) for offset in self.l1.offsets(keys)]
        return PrepareRetrieveReply(True, b"", {"slots": slots})

    def _slot(self, layout: KVLayout, offset: int, nbytes: int) -> dict[str, Any]:
        return {
            "offset": offset,
            "length": nbytes,
            "shape": list(layout.object_shape(self.chunk_size)),
            "dtype": dtype_name(layout.dtype),
        }


class InlineTransport:
    """No shared pool: object bytes travel in the messages.

    Args:
        l1: The L1 tier.
        chunk_size: Tokens per chunk.
    """

    holds_read_locks = False

    def __init__(self, l1: L1Manager, chunk_size: int) -> None:
        self.l1 = l1
        self.chunk_size = chunk_size

    def registration_reply(self) -> EngineDrivenRegistrationReply:
        """No pool: an empty name and size."""
        return EngineDrivenRegistrationReply("", 0)

    def store_context(
        self, layout: KVLayout, reservations: Sequence[Reservation], nbytes: int
    ) -> dict[str, Any]:
        """The object size, so the worker can frame the bytes it commits."""
        return {"object_nbytes": nbytes}

    def missing_data_error(self) -> str | None:
        """The objects must come inline."""
        return "no shared-memory pool here; send the objects inline"

    def retrieve_reply(self, keys: Sequence[ObjectKey], layout: KVLayout) -> PrepareRetrieveReply:
        """The objects' bytes, concatenated (the caller releases the locks afterwards)."""
        data = b"".join(view.numpy().tobytes() for view in self.l1.read_views(keys))
        return PrepareRetrieveReply(
            True, data, {"object_nbytes": layout.object_nbytes(self.chunk_size)}
        )


def transport_for(l1: L1Manager, chunk_size: int) -> Transport:
    """The shared pool when L1 is in shared memory, inline bytes otherwise."""
    segment = l1.shared_segment()
    if segment is None:
        return InlineTransport(l1, chunk_size)
    return SharedPoolTransport(l1, segment, chunk_size)
