"""``NixlStoreL2Adapter``: a fixed pool of pages moved by NIXL (the L2 adapter ``nixl_store``).

At start the adapter creates its pool as upstream does: ``pool_size`` files
``obj_<i>_<4 hex>.bin`` of ``file_size`` bytes under ``file_path`` (file back
ends), or ``pool_size`` objects ``obj_<i>_<4 hex>`` of one page each (OBJ), and
registers them with NIXL once. The page is the L1 page (``--l1-align-bytes``). An
object takes ``ceil(size / page)`` pages from a FIFO free list; one NIXL transfer
moves all of them, the memory side split at page boundaries so that no byte is
copied. Two cases go through a per-thread bounce buffer instead: ``O_DIRECT``
with memory or lengths not aligned to the file system's block, and an OBJ page
that would be written by two descriptors (an object is written whole).

The index is in RAM only, as upstream's: a restart starts empty, and the pool
files (named at random) are deleted when the adapter closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_core.storage.l2.loading import AdapterLoadError
from lmcache_l2_nixl_store.config import NixlStoreAdapterConfig
from lmcache_l2_nixl_store.nixl_io import (
    BounceBuffers,
    NixlStorage,
    Piece,
    address_of,
    gather,
    open_storage,
    scatter,
)
from lmcache_l2_nixl_store.params import OBJECT_BACKENDS, parse_flag
from lmcache_l2_nixl_store.pool import PagePool, PoolLayout

logger = logging.getLogger("lmcache.l2.nixl_store")

_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


class PoolFull(OSError):
    """No free pages for an object (the admission check counts them, so rare)."""


class NixlStoreL2Adapter(L2AdapterV1):
    """Objects in a pre-allocated pool of pages, each store or load one NIXL transfer.

    Args:
        storage: The NIXL agent with its back end.
        pool_size: Files (or objects) in the pool.
        page_size: Bytes per page (the L1 page).
        file_path: Directory of the pool files (file back ends; created if missing).
        file_size: Bytes per pool file, a multiple of ``page_size`` (file back ends).
        use_direct_io: Open the pool files ``O_DIRECT``.
        capacity_bytes: Capacity reported and enforced besides the pool (0: the
            pool alone bounds what fits).
        object_format: ``framed`` or ``raw`` (upstream's bytes).
        num_workers: Threads running transfers.

    Raises:
        ValueError: ``file_size`` is not a positive multiple of ``page_size``, or
            ``O_DIRECT`` pages are not whole blocks.
    """

    def __init__(
        self,
        storage: NixlStorage,
        *,
        pool_size: int,
        page_size: int,
        file_path: str | os.PathLike[str] | None = None,
        file_size: int | None = None,
        use_direct_io: bool = False,
        capacity_bytes: int = 0,
        object_format: ObjectFormat = "framed",
        num_workers: int = 4,
    ) -> None:
        super().__init__(
            "nixl_store",
            capacity_bytes=capacity_bytes,
            object_format=object_format,
            num_workers=num_workers,
        )
        self.storage = storage
        self.page_size = page_size
        self.room_unit = page_size  # an object takes whole pages
        self.objects = storage.backend in OBJECT_BACKENDS
        self.use_direct_io = use_direct_io and _O_DIRECT != 0 and not self.objects
        self.block_size = 1
        self.paths: list[Path] = []
        self.object_keys: list[str] = []
        self._fds: list[int] = []
        self._registration: Any = None
        self._pages: dict[ObjectKey, tuple[list[int], int]] = {}  # pages, stored bytes
        self._pages_lock = threading.Lock()
        self.direct_transfers = 0
        self.bounced_transfers = 0
        try:
            self.layout = self._create_pool(pool_size, file_path, file_size)
        except BaseException:
            self._release_pool()
            raise
        self.pool = PagePool(self.layout.total_pages)
        self._bounce = BounceBuffers(max(page_size, self.block_size))

    # -- the pool --------------------------------------------------------------------

    def _create_pool(
        self, pool_size: int, file_path: str | os.PathLike[str] | None, file_size: int | None
    ) -> PoolLayout:
        suffixes = [uuid.uuid4().hex[:4] for _ in range(pool_size)]
        if self.objects:
            keys = [f"obj_{index}_{suffix}" for index, suffix in enumerate(suffixes)]
            self.object_keys = keys
            segments = [(0, self.page_size, index, key) for index, key in enumerate(keys)]
            self._registration = self.storage.register_segments(segments)
            return PoolLayout(self.page_size, 1, tuple(range(pool_size)), objects=True)
        if file_path is None:
            raise ValueError("a file back end needs file_path")
        size = self.page_size if file_size is None else file_size
        if size <= 0 or size % self.page_size:
            raise ValueError(
                f"file_size ({size}) must be a positive multiple of the page ({self.page_size} "
                "bytes, --l1-align-bytes)"
            )
        directory = Path(file_path)
        directory.mkdir(parents=True, exist_ok=True)
        if self.use_direct_io:
            self.block_size = os.statvfs(directory).f_bsize
            if self.page_size % self.block_size:
                raise ValueError(
                    f"use_direct_io needs the page ({self.page_size} bytes, --l1-align-bytes) "
                    f"to be a multiple of the block size of {directory} ({self.block_size})"
                )
        flags = os.O_CREAT | os.O_RDWR | (_O_DIRECT if self.use_direct_io else 0)
        for index, suffix in enumerate(suffixes):
            path = directory / f"obj_{index}_{suffix}.bin"
            fd = os.open(path, flags, 0o644)
            self.paths.append(path)
            self._fds.append(fd)
            # Full size now: a read of a page never runs past the end of its file.
            os.ftruncate(fd, size)
        segments = [(0, size, fd, "") for fd in self._fds]
        self._registration = self.storage.register_segments(segments)
        return PoolLayout(self.page_size, size // self.page_size, tuple(self._fds), objects=False)

    def _release_pool(self) -> None:
        if self._registration is not None:
            with contextlib.suppress(Exception):
                self.storage.release(self._registration)
            self._registration = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        for path in self.paths:
            with contextlib.suppress(OSError):
                path.unlink()
        self.paths = []
        with contextlib.suppress(Exception):
            self.storage.close()

    def pages_of(self, key: ObjectKey) -> list[int] | None:
        """The pages ``key`` occupies, in order, or None."""
        with self._pages_lock:
            entry = self._pages.get(key)
        return None if entry is None else list(entry[0])

    def stored_bytes_of(self, key: ObjectKey) -> int | None:
        """The bytes ``key``'s pages hold (header included when framed), or None."""
        with self._pages_lock:
            entry = self._pages.get(key)
        return None if entry is None else entry[1]

    # -- the adapter -----------------------------------------------------------------

    def _room_bytes(self) -> int:
        return self.pool.free_pages * self.page_size

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        views = [memoryview(part).cast("B") for part in parts]
        size = sum(view.nbytes for view in views)
        pages = self.pool.allocate(max(1, -(-size // self.page_size)))
        if pages is None:
            raise PoolFull(f"nixl_store: no {size} bytes of free pages")
        try:
            self._move("WRITE", views, pages)
        except BaseException:
            self.pool.free(pages)
            raise
        with self._pages_lock:
            old = self._pages.get(key)
            self._pages[key] = (pages, size)
        if old is not None:
            self.pool.free(old[0])

    def _exists(self, key: ObjectKey) -> bool:
        with self._pages_lock:
            return key in self._pages

    def _get(self, key: ObjectKey, size: int) -> bytearray | None:
        buffer = bytearray(size)
        return buffer if self._get_into(key, [memoryview(buffer)]) else None

    def _get_into(self, key: ObjectKey, parts: Sequence[memoryview]) -> bool:
        with self._pages_lock:
            entry = self._pages.get(key)
        if entry is None or entry[1] != sum(part.nbytes for part in parts):
            return False
        self._move("READ", list(parts), entry[0])
        return True

    def _remove(self, key: ObjectKey) -> bool:
        with self._pages_lock:
            entry = self._pages.pop(key, None)
        if entry is None:
            return False
        self.pool.free(entry[0])
        return True

    def _close(self) -> None:
        self._release_pool()

    def status(self) -> dict[str, Any]:
        """The base status plus the back end, the pool and the transfer paths."""
        status = super().status()
        status.update(
            backend=self.storage.backend,
            pool_pages=self.layout.total_pages,
            pool_free_pages=self.pool.free_pages,
            page_size=self.page_size,
            use_direct_io=self.use_direct_io,
            direct_transfers=self.direct_transfers,
            bounced_transfers=self.bounced_transfers,
        )
        return status

    # -- transfers -------------------------------------------------------------------

    def _split(
        self, views: Sequence[memoryview], pages: Sequence[int]
    ) -> tuple[list[memoryview], list[Piece]] | None:
        """The views cut at page boundaries, with each cut's storage descriptor.

        Returns:
            None when the cuts cannot be moved as they are: an OBJ page written by
            more than one descriptor, or ``O_DIRECT`` cuts not aligned to blocks.
        """
        cuts: list[memoryview] = []
        pieces: list[Piece] = []
        page_size, block = self.page_size, self.block_size
        position = 0
        for view in views:
            start = 0
            while start < view.nbytes:
                page, offset = divmod(position, page_size)
                length = min(view.nbytes - start, page_size - offset)
                cut = view[start : start + length]
                if self.objects and offset:
                    return None
                if self.use_direct_io and (
                    offset % block or length % block or address_of(cut) % block
                ):
                    return None
                cuts.append(cut)
                pieces.append(self.layout.piece(pages[page], offset, length))
                start += length
                position += length
        return cuts, pieces

    def _move(self, operation: str, views: Sequence[memoryview], pages: Sequence[int]) -> None:
        """One NIXL transfer between ``views`` (laid end to end) and ``pages``."""
        views = [view for view in views if view.nbytes]
        size = sum(view.nbytes for view in views)
        if not size:
            return
        split = self._split(views, pages)
        if split is not None:
            self.direct_transfers += 1
            cuts, pieces = split
            self.storage.transfer(operation, cuts, pieces, regions=views)
            return
        self.bounced_transfers += 1
        # Whole pages under O_DIRECT (a page is whole blocks); the exact bytes otherwise.
        length = len(pages) * self.page_size if self.use_direct_io else size
        bounce = self._bounce.get(length)
        if operation == "WRITE":
            gather(views, bounce)
        cuts, pieces = [], []
        for index, page in enumerate(pages):
            start = index * self.page_size
            cut = bounce[start : min(start + self.page_size, length)]
            cuts.append(cut)
            pieces.append(self.layout.piece(page, 0, cut.nbytes))
        self.storage.transfer(operation, cuts, pieces, regions=[bounce])
        if operation == "READ":
            scatter(bounce, views)


def build_nixl_store(
    config: NixlStoreAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> NixlStoreL2Adapter:
    """Build the adapter: create the NIXL back end and the pool, or fail start-up in one line.

    The page is ``--l1-align-bytes`` (``context.l1_align_bytes``), as upstream's page
    is the L1 alignment. The L1 arena (``context.l1_region``), when given, is
    registered with NIXL once, so transfers from and into it register nothing.

    Raises:
        AdapterLoadError: NIXL is missing, cannot create the back end, or the pool
            cannot be created (the message names the back end or the field).
    """
    params = config.backend_params
    # Upstream hands the whole dict to createBackend; the plugins ignore keys they do not know.
    storage = open_storage(
        "nixl_store", config.backend, dict(params), transfer_timeout_s=config.transfer_timeout_s
    )
    try:
        if context.l1_region is not None:
            storage.register_region(*context.l1_region)
        adapter = NixlStoreL2Adapter(
            storage,
            pool_size=config.pool_size,
            page_size=context.l1_align_bytes,
            file_path=params.get("file_path"),
            file_size=int(params["file_size"]) if "file_size" in params else None,
            use_direct_io=parse_flag(params.get("use_direct_io", "false")),
            object_format=config.format,
        )
    except (OSError, ValueError) as exc:
        storage.close()
        raise AdapterLoadError(
            f"nixl_store: cannot create the {config.backend} pool: {exc}"
        ) from exc
    except Exception as exc:  # nixlBackendError and friends from registering the pool
        storage.close()
        raise AdapterLoadError(
            f"nixl_store: NIXL {config.backend} refused the pool: {type(exc).__name__}: {exc}"
        ) from exc
    # Capacity is the pool, as upstream reports it; the free pages bound each store too.
    adapter.capacity_bytes = adapter.layout.total_pages * adapter.page_size
    return adapter
