"""The ``mooncake_store`` L2 adapter: batches on Mooncake Store's zero-copy Python API.

Every batch is one Mooncake call: a lookup is ``batch_is_exist``, a store is
``batch_put_from`` (``batch_put_from_multi_buffers`` with the object header in
front, in the ``framed`` format) straight from the caller's buffers, a load is
``batch_get_into`` (``..._multi_buffers``) into them, and a delete is
``batch_remove``. The key is upstream's key string
(:func:`~lmcache_core.storage.l2.key_names.native_key_name`), so a ``raw``
adapter shares objects with upstream LMCache on the same cluster.

The L1 arena (from the adapter context) is registered with Mooncake once, at
start-up; buffers inside it move without a copy. Other memory (the headers, a
test's ``bytes``) is passed as is over TCP, which reads any address; with RDMA it
is registered for the duration of its batch. A load into buffers the caller did
not declare scratch goes through a temporary, so a miss or a corrupt object
leaves the caller's buffer untouched.

Failures never raise out of a batch: each key's Mooncake code is counted
(``misses``, ``transfer_failures``, ``rpc_failures``, ...) and the key fails. A
restarted master or a dead peer therefore shows up as misses, and the client
re-registers with a restarted master by itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.adapter import _byte_view as byte_view
from lmcache_core.storage.l2.key_names import native_key_name
from lmcache_core.storage.l2.object_format import HEADER_SIZE, CorruptObject, frame, verify
from lmcache_l2_mooncake_store.client import (
    OBJECT_HAS_LEASE,
    OBJECT_NOT_FOUND,
    RPC_FAIL,
    TRANSFER_FAIL,
    MooncakeUnavailable,
    error_name,
    open_store,
    replicate_config,
)
from lmcache_l2_mooncake_store.config import MooncakeOp, MooncakeStoreAdapterConfig

logger = logging.getLogger("lmcache.l2.mooncake_store")

OPS: tuple[MooncakeOp, ...] = ("lookup", "retrieve", "store", "delete")
INVALID_PARAMS = -600  # what Mooncake answers a load whose buffer is smaller than the object


def address_of(view: memoryview) -> int:
    """The address of a contiguous buffer's first byte (read-only buffers too)."""
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


class MooncakeStoreAdapter(L2AdapterV1):
    """An L2 adapter over one Mooncake Store client.

    Args:
        config: The validated ``--l2-adapter`` JSON.
        l1_region: ``(address, size)`` of the L1 arena, registered once; None
            outside a server (refused with ``protocol`` ``rdma``).
        capacity_bytes: Capacity this adapter enforces (0: unlimited; Mooncake
            evicts by its own watermarks either way).

    Raises:
        MooncakeUnavailable: The library is missing, the cluster does not answer,
            or the arena cannot be registered.
    """

    def __init__(
        self,
        config: MooncakeStoreAdapterConfig,
        *,
        l1_region: tuple[int, int] | None = None,
        capacity_bytes: int = 0,
    ) -> None:
        # The base pool stays idle: each operation has its own pool (per_op_workers).
        super().__init__(
            "mooncake_store",
            capacity_bytes=capacity_bytes,
            object_format=config.format,
            num_workers=1,
        )
        if config.protocol == "rdma" and l1_region is None:
            raise MooncakeUnavailable(
                "mooncake_store with protocol rdma registers the L1 arena, and none was given"
            )
        self.config = config
        self._store = open_store(config)
        self._replicate = replicate_config(config.replica_num)
        self._store_lock = threading.Lock()  # serialises register/unregister/close
        self._regions: list[tuple[int, int]] = []
        self._pools = {
            op: ThreadPoolExecutor(
                config.workers_for(op), thread_name_prefix=f"lmcache-l2-mooncake-{op}"
            )
            for op in OPS
        }
        self.counters = dict.fromkeys(
            (
                "misses",
                "size_mismatches",
                "transfer_failures",
                "rpc_failures",
                "lookup_errors",
                "store_failures",
                "leased_deletes",
            ),
            0,
        )
        if l1_region is not None:
            try:
                self._register(*l1_region)
            except MooncakeUnavailable:
                self._shutdown_store()
                raise

    # -- the contract, one Mooncake call per batch ---------------------------------------

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """Which keys the cluster holds (``batch_is_exist``); each hit is pinned."""
        self._check(keys)
        return self._pools["lookup"].submit(self._lookup_batch, list(keys))

    def submit_store(
        self, keys: Sequence[ObjectKey], payloads: Sequence[bytes | memoryview]
    ) -> Future[list[bool]]:
        """Store each payload under upstream's key string (one ``batch_put_from``)."""
        self._check(keys, payloads)
        views = [byte_view(payload) for payload in payloads]
        sizes = [self._stored_size(view.nbytes) for view in views]
        admitted = self._admit(keys, sizes)
        try:
            return self._pools["store"].submit(
                self._store_batch, list(keys), views, sizes, admitted
            )
        except BaseException:
            with self._lock:
                for size, ok in zip(sizes, admitted, strict=True):
                    if ok:
                        self._release(size)
            raise

    def submit_load(
        self, keys: Sequence[ObjectKey], buffers: Sequence[memoryview]
    ) -> Future[list[bool]]:
        """Read each key into its buffer (one ``batch_get_into``); False for a miss."""
        self._check(keys, buffers)
        views = [byte_view(buffer) for buffer in buffers]
        return self._pools["retrieve"].submit(self._load_batch, list(keys), views)

    def delete(self, keys: Sequence[ObjectKey], *, force: bool = False) -> int:
        """Remove unpinned keys (pinned ones too with ``force``) with ``batch_remove``.

        Mooncake leases every object a client checked or read for 10 s
        (``default_kv_lease_ttl``) and refuses a plain remove meanwhile, so even
        this adapter's own lookups would block its deletes. This adapter's pins are
        the contract's lock; beyond them, a ``framed`` delete overrides the lease
        (a reader elsewhere that loses the race gets a miss: its checksum fails),
        while a ``raw`` delete honours it (raw objects have no checksum): a leased
        key is kept, counted as ``leased_deletes``, and eviction tries it again.
        """
        with self._lock:
            targets = [key for key in dict.fromkeys(keys) if force or not self._pins.get(key)]
        if not targets:
            return 0
        force = force or self.object_format == "framed"
        workers = self.config.workers_for("delete")
        step = -(-len(targets) // workers)
        chunks = [targets[i : i + step] for i in range(0, len(targets), step)]
        futures = [self._pools["delete"].submit(self._remove_batch, c, force) for c in chunks]
        return sum(future.result() for future in futures)

    def status(self) -> dict[str, Any]:
        """The base counters plus Mooncake's: misses and failures by kind."""
        status = super().status()
        with self._lock:
            status.update(self.counters)
        status["master_server_addr"] = self.config.master_server_addr
        status["protocol"] = self.config.protocol
        status["registered_bytes"] = sum(size for _, size in self._regions)
        return status

    # -- the blocking parts ------------------------------------------------------------

    def _lookup_batch(self, keys: list[ObjectKey]) -> list[bool]:
        if not keys:
            return []
        try:
            codes = list(self._store.batch_is_exist([native_key_name(k) for k in keys]))
        except Exception:
            logger.warning("mooncake_store: batch_is_exist failed", exc_info=True)
            self._count("lookup_errors", len(keys))
            return [False] * len(keys)
        found = [code == 1 for code in codes]
        with self._lock:
            self.counters["lookup_errors"] += sum(1 for code in codes if code < 0)
            for key, hit in zip(keys, found, strict=True):
                if hit:
                    self._pins[key] = self._pins.get(key, 0) + 1
        return found

    def _store_batch(
        self,
        keys: list[ObjectKey],
        views: list[memoryview],
        sizes: list[int],
        admitted: list[bool],
    ) -> list[bool]:
        chosen = [i for i, ok in enumerate(admitted) if ok]
        results = [False] * len(keys)
        try:
            codes = (
                self._put_batch([keys[i] for i in chosen], [views[i] for i in chosen])
                if chosen
                else []
            )
        except Exception:
            logger.warning("mooncake_store: batch put failed", exc_info=True)
            codes = [-1] * len(chosen)
        with self._lock:
            for i, code in zip(chosen, codes, strict=True):
                self._release(sizes[i])
                if code == 0:
                    self._set_size(keys[i], sizes[i])
                    results[i] = True
                else:
                    self.errors += 1
                    self._count_code(code, "store_failures")
        failed = [error_name(c) for c in codes if c != 0]
        if failed:
            logger.warning(
                "mooncake_store: %d of %d stores failed: %s",
                len(failed),
                len(codes),
                ", ".join(sorted(set(failed))),
            )
        return results

    def _put_batch(self, keys: list[ObjectKey], views: list[memoryview]) -> list[int]:
        names = [native_key_name(key) for key in keys]
        if self.object_format == "raw":
            ranges = [(address_of(view), view.nbytes) for view in views]
            with self._foreign_registered(ranges):
                return [
                    int(code)
                    for code in self._store.batch_put_from(
                        names, [p for p, _ in ranges], [n for _, n in ranges], self._replicate
                    )
                ]
        headers = np.empty(len(keys) * HEADER_SIZE, dtype=np.uint8)
        for i, (key, view) in enumerate(zip(keys, views, strict=True)):
            headers[i * HEADER_SIZE : (i + 1) * HEADER_SIZE] = np.frombuffer(
                frame(key, view), dtype=np.uint8
            )
        base = int(headers.ctypes.data)
        ranges = [(address_of(view), view.nbytes) for view in views]
        with self._foreign_registered([(base, headers.nbytes), *ranges]):
            codes = self._store.batch_put_from_multi_buffers(
                names,
                [[base + i * HEADER_SIZE, ptr] for i, (ptr, _) in enumerate(ranges)],
                [[HEADER_SIZE, size] for _, size in ranges],
                self._replicate,
            )
        return [int(code) for code in codes]

    def _load_batch(self, keys: list[ObjectKey], views: list[memoryview]) -> list[bool]:
        if not keys:
            return []
        # Not scratch: read into a temporary, copied out only once verified.
        direct = self.buffers_are_scratch
        temp = None if direct else np.empty(sum(v.nbytes for v in views), dtype=np.uint8)
        targets: list[tuple[int, int]] = []
        offset = 0
        for view in views:
            if temp is None:
                targets.append((address_of(view), view.nbytes))
            else:
                targets.append((int(temp.ctypes.data) + offset, view.nbytes))
                offset += view.nbytes
        framed = self.object_format == "framed"
        headers = np.empty(len(keys) * HEADER_SIZE if framed else 0, dtype=np.uint8)
        try:
            codes = self._get_batch(keys, targets, headers, temp)
        except Exception:
            logger.warning("mooncake_store: batch get failed", exc_info=True)
            self._count("transfer_failures", len(keys))
            return [False] * len(keys)
        results = []
        offset = 0
        for i, (key, view, code) in enumerate(zip(keys, views, codes, strict=True)):
            start, offset = offset, offset + view.nbytes
            expected = self._stored_size(view.nbytes)
            if code != expected:
                self._count_load_failure(code)
                results.append(False)
                continue
            data = view if temp is None else temp[start:offset].data
            if framed:
                try:
                    verify(key, headers[i * HEADER_SIZE : (i + 1) * HEADER_SIZE].data, data)
                except CorruptObject as exc:
                    self._count_corrupt(key)
                    logger.warning("mooncake_store: %s: treated as a miss", exc)
                    results.append(False)
                    continue
            if temp is not None:
                view[:] = data
            results.append(True)
        return results

    def _get_batch(
        self,
        keys: list[ObjectKey],
        targets: list[tuple[int, int]],
        headers: np.ndarray[Any, np.dtype[np.uint8]],
        temp: np.ndarray[Any, np.dtype[np.uint8]] | None,
    ) -> list[int]:
        names = [native_key_name(key) for key in keys]
        foreign = list(targets) if temp is None else [(int(temp.ctypes.data), temp.nbytes)]
        if self.object_format == "raw":
            with self._foreign_registered(foreign):
                codes = self._store.batch_get_into(
                    names, [p for p, _ in targets], [n for _, n in targets]
                )
            return [int(code) for code in codes]
        base = int(headers.ctypes.data)
        with self._foreign_registered([(base, headers.nbytes), *foreign]):
            codes = self._store.batch_get_into_multi_buffers(
                names,
                [[base + i * HEADER_SIZE, ptr] for i, (ptr, _) in enumerate(targets)],
                [[HEADER_SIZE, size] for _, size in targets],
            )
        return [int(code) for code in codes]

    def _remove_batch(self, keys: list[ObjectKey], force: bool) -> int:
        try:
            codes = list(self._store.batch_remove([native_key_name(k) for k in keys], force))
        except Exception:
            logger.warning("mooncake_store: batch_remove failed", exc_info=True)
            self._count("rpc_failures", len(keys))
            return 0
        removed = 0
        with self._lock:
            for key, code in zip(keys, codes, strict=True):
                if code in (0, OBJECT_NOT_FOUND):
                    # Gone either way (a restarted master or Mooncake's eviction forgot it).
                    self._set_size(key, None)
                    self._pins.pop(key, None)
                    removed += int(code == 0)
                elif code == OBJECT_HAS_LEASE:
                    self.counters["leased_deletes"] += 1
                else:
                    self.errors += 1
                    self._count_code(code, "rpc_failures")
        return removed

    # -- the base class's one-key hooks (its submit paths are overridden above) -------

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        views = [byte_view(part) for part in parts]
        ranges = [(address_of(view), view.nbytes) for view in views]
        with self._foreign_registered(ranges):
            code = int(
                self._store.batch_put_from_multi_buffers(
                    [native_key_name(key)],
                    [[p for p, _ in ranges]],
                    [[n for _, n in ranges]],
                    self._replicate,
                )[0]
            )
        if code != 0:
            raise OSError(f"mooncake_store: put failed: {error_name(code)}")

    def _exists(self, key: ObjectKey) -> bool:
        return int(self._store.batch_is_exist([native_key_name(key)])[0]) == 1

    def _get(self, key: ObjectKey, size: int) -> bytearray | None:
        data = bytearray(size)
        view = memoryview(data)
        with self._foreign_registered([(address_of(view), size)]):
            code = int(
                self._store.batch_get_into([native_key_name(key)], [address_of(view)], [size])[0]
            )
        return data if code == size else None

    def _remove(self, key: ObjectKey) -> bool:
        return int(self._store.batch_remove([native_key_name(key)], False)[0]) == 0

    # -- registration, counters and shutdown ------------------------------------------------

    def _register(self, address: int, size: int) -> None:
        with self._store_lock:
            code = int(self._store.register_buffer(address, size))
            if code != 0:
                raise MooncakeUnavailable(
                    f"mooncake_store: cannot register {size} bytes of L1: {error_name(code)}"
                )
            self._regions.append((address, size))

    def _inside_registered(self, address: int, size: int) -> bool:
        return any(base <= address and address + size <= base + n for base, n in self._regions)

    @contextmanager
    def _foreign_registered(self, ranges: Sequence[tuple[int, int]]) -> Iterator[None]:
        """With RDMA, register the ranges outside the arena for one batch (TCP needs none)."""
        if self.config.protocol != "rdma":
            yield
            return
        extra = [(p, n) for p, n in ranges if n and not self._inside_registered(p, n)]
        done: list[int] = []
        try:
            for address, size in extra:
                code = int(self._store.register_buffer(address, size))
                if code != 0:
                    raise MooncakeUnavailable(f"cannot register a buffer: {error_name(code)}")
                done.append(address)
            yield
        finally:
            for address in done:
                self._store.unregister_buffer(address)

    def _count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self.counters[counter] += n

    def _count_code(self, code: int, default: str) -> None:
        """Count one failed key by its Mooncake code; the lock is held."""
        if code == TRANSFER_FAIL:
            self.counters["transfer_failures"] += 1
        elif code == RPC_FAIL:
            self.counters["rpc_failures"] += 1
        else:
            self.counters[default] += 1

    def _count_load_failure(self, code: int) -> None:
        with self._lock:
            if code == OBJECT_NOT_FOUND:
                self.counters["misses"] += 1
            elif code >= 0 or code == INVALID_PARAMS:
                self.counters["size_mismatches"] += 1
            else:
                self.errors += 1
                self._count_code(code, "misses")

    def _close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True)
        if not self.config.persist_enabled:
            own = self.keys()
            if own:
                self._remove_batch(own, True)
        self._shutdown_store()

    def _shutdown_store(self) -> None:
        with self._store_lock:
            for address, _ in self._regions:
                self._store.unregister_buffer(address)
            self._regions.clear()
            self._store.close()
