"""``NixlDynamicL2Adapter``: one file per key moved by NIXL (the L2 adapter ``nixl_store_dynamic``).

File names are upstream's, so a directory is shared with upstream's
``nixl_store_dynamic`` (with ``"format": "raw"``, byte for byte)::

    [<hash[0:2]>/<hash[2:4]>/]<model, '/' -> '--'>_<kv_rank, 8 hex>_<group, hex>_<hash>[@<salt>].bin

(the two shard directories only with ``backend_params.shard_dirs = "true"``).

A store opens ``<final>.tmp.<32 hex>``, registers the caller's buffers (header
and payload, no join) and the file with NIXL, DMA-writes them in one transfer
and renames the file into place; a load registers the destination buffers and
DMA-reads the file straight into them. With ``use_direct_io`` the files are
opened ``O_DIRECT``; a buffer not aligned to the block size goes through a
per-thread aligned bounce buffer (written padded, then truncated, so the file
holds exactly the object). At start the directory is scanned to rebuild the index
and the temporary files a crash left behind are deleted; a lookup that misses
the index checks the disk (another server may have written the file).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmcache_l2_nixl_store.nixl_io import (
    BounceBuffers,
    NixlStorage,
    address_of,
    gather,
    open_storage,
    scatter,
)
from lmcache_l2_nixl_store.params import parse_flag

from lmcache_core.storage.keys import ObjectKey, validate_cache_salt
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_nixl_store_dynamic.config import NixlStoreDynamicAdapterConfig

logger = logging.getLogger("lmcache.l2.nixl_store_dynamic")

GIB = 1 << 30
FILE_SUFFIX = ".bin"
SLASH_REPLACEMENT = "--"
SHARED_TMP_GRACE_S = 3600.0
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
_NAME = re.compile(
    r"(?P<model>.+)_(?P<rank>[0-9a-f]{8})_(?P<group>[0-9a-f]+)_(?P<hash>(?:[0-9a-f]{2})+)"
    r"(?:@(?P<salt>[^@]+))?\.bin"
)
_TMP = re.compile(r"\.tmp\.[0-9a-f]+$")


def object_key_to_filename(key: ObjectKey) -> str:
    """The file name upstream's ``nixl_store_dynamic`` stores ``key`` under."""
    model = key.model_name.replace("/", SLASH_REPLACEMENT)
    salt = f"@{key.cache_salt}" if key.cache_salt else ""
    return (
        f"{model}_{key.kv_rank:08x}_{key.object_group_id:x}_{key.chunk_hash.hex()}"
        f"{salt}{FILE_SUFFIX}"
    )


def object_key_to_relpath(key: ObjectKey, *, shard_dirs: bool) -> str:
    """The path under ``file_path``: the file name, under two hash shards with ``shard_dirs``."""
    name = object_key_to_filename(key)
    if not shard_dirs:
        return name
    digest = key.chunk_hash.hex()
    return os.path.join(digest[:2], digest[2:4], name)


def filename_to_object_key(name: str) -> ObjectKey | None:
    """The key a file name stands for; None unless it is exactly some key's name.

    ``--`` in a model name reads back as ``/`` (upstream's naming is lossy there),
    so only names that map back to themselves are accepted.
    """
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    salt = match["salt"] or ""
    try:
        validate_cache_salt(salt)
        key = ObjectKey(
            bytes.fromhex(match["hash"]),
            match["model"].replace(SLASH_REPLACEMENT, "/"),
            int(match["rank"], 16),
            int(match["group"], 16),
            salt,
        )
    except ValueError:
        return None
    return key if object_key_to_filename(key) == name else None


class NixlDynamicL2Adapter(L2AdapterV1):
    """One file per key under ``file_path``, each moved by one NIXL transfer.

    Args:
        storage: The NIXL agent with its file back end.
        file_path: Directory of the files (created if missing).
        capacity_bytes: Capacity reported and enforced (upstream requires one).
        use_direct_io: Open the files ``O_DIRECT``.
        shard_dirs: Put each file under ``<hash[0:2]>/<hash[2:4]>/``.
        object_format: ``framed`` or ``raw`` (upstream's bytes).
        num_workers: Threads running transfers.
        persist: False deletes the files this adapter indexes when it closes.
        stale_tmp_age_s: At start, delete temporary files at least this old.
    """

    def __init__(
        self,
        storage: NixlStorage,
        file_path: str | os.PathLike[str],
        *,
        capacity_bytes: int,
        use_direct_io: bool = False,
        shard_dirs: bool = False,
        object_format: ObjectFormat = "framed",
        num_workers: int = 4,
        persist: bool = True,
        stale_tmp_age_s: float = 0.0,
    ) -> None:
        super().__init__(
            "nixl_store_dynamic",
            capacity_bytes=capacity_bytes,
            object_format=object_format,
            num_workers=num_workers,
        )
        self.storage = storage
        self.file_path = Path(file_path)
        self.file_path.mkdir(parents=True, exist_ok=True)
        self.use_direct_io = use_direct_io and _O_DIRECT != 0
        self.shard_dirs = shard_dirs
        self.persist = persist
        self.stale_tmp_age_s = stale_tmp_age_s
        self.block_size = os.statvfs(self.file_path).f_bsize
        self.direct_transfers = 0
        self.bounced_transfers = 0
        self._bounce = BounceBuffers(self.block_size)

    def path_of(self, key: ObjectKey) -> Path:
        """The final path of ``key``'s file."""
        return self.file_path / object_key_to_relpath(key, shard_dirs=self.shard_dirs)

    # -- the adapter -----------------------------------------------------------------

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        if SLASH_REPLACEMENT in key.model_name:
            raise ValueError(f"model name {key.model_name!r} contains {SLASH_REPLACEMENT!r}")
        views = [memoryview(part).cast("B") for part in parts]
        final = self.path_of(key)
        if self.shard_dirs:
            final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.tmp.{uuid.uuid4().hex}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (_O_DIRECT if self.use_direct_io else 0)
        fd = os.open(tmp, flags, 0o644)
        try:
            try:
                self._move("WRITE", fd, views)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _exists(self, key: ObjectKey) -> bool:
        try:
            return stat.S_ISREG(os.stat(self.path_of(key)).st_mode)
        except FileNotFoundError:
            return False

    def _lookup_one(self, key: ObjectKey) -> bool:
        found = super()._lookup_one(key)
        if found and key not in self._sizes:
            # Written by another server sharing the directory: index it on first sight.
            with contextlib.suppress(OSError), self._lock:
                self._set_size(key, os.stat(self.path_of(key)).st_size)
        return found

    def _get(self, key: ObjectKey, size: int) -> bytearray | None:
        buffer = bytearray(size)
        return buffer if self._get_into(key, [memoryview(buffer)]) else None

    def _get_into(self, key: ObjectKey, parts: Sequence[memoryview]) -> bool:
        flags = os.O_RDONLY | (_O_DIRECT if self.use_direct_io else 0)
        try:
            fd = os.open(self.path_of(key), flags)
        except FileNotFoundError:
            return False
        try:
            if os.fstat(fd).st_size != sum(part.nbytes for part in parts):
                return False  # torn, truncated or another object's size: a miss
            self._move("READ", fd, list(parts))
            return True
        finally:
            os.close(fd)

    def _remove(self, key: ObjectKey) -> bool:
        try:
            self.path_of(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def _known_objects(self) -> dict[ObjectKey, int]:
        known: dict[ObjectKey, int] = {}
        now = time.time()
        for root, _dirs, files in os.walk(self.file_path):
            for name in files:
                path = os.path.join(root, name)
                try:
                    info = os.stat(path, follow_symlinks=False)
                    if _TMP.search(name):
                        if now - info.st_mtime >= self.stale_tmp_age_s:
                            os.unlink(path)
                            logger.info("nixl_store_dynamic: deleted leftover %s", path)
                        continue
                except FileNotFoundError:
                    continue
                key = filename_to_object_key(name)
                if key is not None and Path(path) == self.path_of(key):
                    known[key] = info.st_size
        return known

    def _close(self) -> None:
        self.storage.close()
        if not self.persist:
            for key in self.keys():
                with contextlib.suppress(OSError):
                    self._remove(key)

    def status(self) -> dict[str, Any]:
        """The base status plus the back end, the directory and the transfer paths."""
        status = super().status()
        status.update(
            backend=self.storage.backend,
            file_path=str(self.file_path),
            use_direct_io=self.use_direct_io,
            direct_transfers=self.direct_transfers,
            bounced_transfers=self.bounced_transfers,
        )
        return status

    # -- transfers -------------------------------------------------------------------

    def _aligned(self, views: Sequence[memoryview]) -> bool:
        block = self.block_size
        return all(v.nbytes % block == 0 and address_of(v) % block == 0 for v in views if v.nbytes)

    def _move(self, operation: str, fd: int, views: Sequence[memoryview]) -> None:
        """One NIXL transfer between ``views`` (laid end to end) and the file ``fd``."""
        views = [view for view in views if view.nbytes]
        size = sum(view.nbytes for view in views)
        if not size:
            return
        if not self.use_direct_io or self._aligned(views):
            self.direct_transfers += 1
            pieces, offset = [], 0
            for view in views:
                pieces.append((offset, view.nbytes, fd))
                offset += view.nbytes
            self.storage.transfer(operation, views, pieces, segments=[(0, size, fd, "")])
            return
        # O_DIRECT wants whole aligned blocks: go through this thread's bounce buffer.
        self.bounced_transfers += 1
        padded = -(-size // self.block_size) * self.block_size
        bounce = self._bounce.get(padded)
        if operation == "WRITE":
            gather(views, bounce)
            bounce[size:] = bytes(padded - size)
            segments = [(0, padded, fd, "")]
            self.storage.transfer(operation, [bounce], [(0, padded, fd)], segments=segments)
            os.ftruncate(fd, size)
            return
        # NIXL fails a read past the end of the file: it reads the whole blocks, and the
        # last, partial block is one aligned O_DIRECT pread (short at the end, as it should be).
        whole = size - size % self.block_size
        if whole:
            segments = [(0, whole, fd, "")]
            self.storage.transfer(operation, [bounce[:whole]], [(0, whole, fd)], segments=segments)
        if whole < size and os.preadv(fd, [bounce[whole:padded]], whole) < size - whole:
            raise OSError(f"short read of the last block ({size - whole} bytes expected)")
        scatter(bounce, views)


def build_nixl_store_dynamic(
    config: NixlStoreDynamicAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> NixlDynamicL2Adapter:
    """Build the adapter: create the NIXL back end, or fail start-up naming it and why.

    Args:
        config: The validated ``--l2-adapter`` JSON.
        context: The adapter context (unused).

    Raises:
        AdapterLoadError: NIXL is missing, or cannot create the back end.
    """
    del context
    params = config.backend_params
    # Upstream hands the whole dict to createBackend; the POSIX plugin echoes unknown keys.
    storage = open_storage(
        "nixl_store_dynamic",
        config.backend,
        dict(params),
        transfer_timeout_s=config.transfer_timeout_s,
    )
    return NixlDynamicL2Adapter(
        storage,
        params["file_path"],
        capacity_bytes=int(float(params["max_capacity_gb"]) * GIB),
        use_direct_io=parse_flag(params["use_direct_io"]),
        shard_dirs=parse_flag(params.get("shard_dirs", "false")),
        object_format=config.format,
        persist=config.persist_enabled,
        stale_tmp_age_s=SHARED_TMP_GRACE_S if config.shared else 0.0,
    )
