"""``L2AdapterV1``: the versioned contract between the core and an L2 storage adapter.

The public methods are template methods: they check arguments, run the
adapter's protected, blocking implementation on the adapter's own bounded
thread pool, frame and verify objects (:mod:`.object_format`), count bytes per
``cache_salt`` and enforce nothing they cannot. They return
:class:`concurrent.futures.Future` objects, so callers wait or attach callbacks
without busy polling. An adapter whose backend has native async completion may
override the ``submit_*`` methods, keeping their contract.

Adapters implement ``_put``, ``_exists``, ``_get``, ``_remove`` and ``_close``;
everything else comes from here. A batch's stores and loads run one key per pool
task, so the checksum pass of one object overlaps the I/O of another. Two optional
hooks make the data path cheaper: ``_put`` receives the header and the payload as
separate parts (write them scatter-gather, never joined), and ``_get_into`` reads
an object straight into the caller's memory, used when the caller declared its
buffers scratch (:attr:`L2AdapterV1.buffers_are_scratch`; the L2 tier does).
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.object_format import HEADER_SIZE, CorruptObject, frame, verify

logger = logging.getLogger("lmcache.l2")

T = TypeVar("T")
ObjectFormat = Literal["framed", "raw"]


@dataclass
class L2Usage:
    """Bytes an adapter holds, in total and per ``cache_salt``."""

    used_bytes: int
    capacity_bytes: int
    by_salt: dict[str, int] = field(default_factory=dict)

    @property
    def usage_fraction(self) -> float:
        """``used / capacity``, or -1 when the capacity is unlimited (0)."""
        return self.used_bytes / self.capacity_bytes if self.capacity_bytes else -1.0


class L2AdapterV1(abc.ABC):
    """Base class of every L2 adapter (contract version 1).

    Args:
        name: The adapter's type name (for logs and status).
        capacity_bytes: Capacity to report and enforce: a store that would exceed
            it fails (0: unlimited). Making room is the eviction controller's job.
        object_format: ``framed`` (header + payload; default) or ``raw``.
        num_workers: Threads running the blocking implementation.

    Thread safety: the public methods may be called from any thread, concurrently.
    """

    contract_version: ClassVar[int] = 1

    def __init__(
        self,
        name: str,
        *,
        capacity_bytes: int = 0,
        object_format: ObjectFormat = "framed",
        num_workers: int = 4,
    ) -> None:
        if capacity_bytes < 0 or num_workers < 1:
            raise ValueError("capacity_bytes must be >= 0 and num_workers >= 1")
        self.name = name
        self.capacity_bytes = capacity_bytes
        self.object_format = object_format
        self._pool = ThreadPoolExecutor(num_workers, thread_name_prefix=f"lmcache-l2-{name}")
        self._lock = threading.Lock()
        self._sizes: dict[ObjectKey, int] = {}
        self._used = 0  # sum of _sizes
        self._reserved = 0  # bytes of stores in flight, so concurrent stores cannot overshoot
        # The same stores in the backend's allocation units, for the room check.
        self._reserved_room = 0
        self.room_unit = 1
        """Allocation unit of the backend's room (a file system's block size): each
        object in flight takes a whole number of them in :meth:`_room_bytes`."""
        self._pins: dict[ObjectKey, int] = {}
        self._closed = False
        self.errors = 0
        self.corrupt = 0
        self.refused_full = 0
        self.refused_no_room = 0
        self.buffers_are_scratch = False
        """True: a failed load may leave partial bytes in its buffer (the caller discards
        it), so loads read straight into the buffer through :meth:`_get_into`. False
        (the default): a buffer is written only once its object has been verified."""

    # -- what adapters implement ------------------------------------------------------

    @abc.abstractmethod
    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        """Store the concatenation of ``parts`` under ``key``, atomically; raise on failure."""

    @abc.abstractmethod
    def _exists(self, key: ObjectKey) -> bool:
        """Whether ``key`` is stored."""

    @abc.abstractmethod
    def _get(self, key: ObjectKey, size: int) -> bytes | bytearray | memoryview | None:
        """The stored bytes of ``key`` (None when missing); ``size`` is the expected length."""

    @abc.abstractmethod
    def _remove(self, key: ObjectKey) -> bool:
        """Delete ``key``; True if it was there."""

    def _room_bytes(self) -> int | None:
        """Bytes the backend itself can still take, or None when it sets no limit.

        Optional: a file-system adapter overrides it with its disk limits (a
        watermark, a minimum free space), measured at admission. Stores in flight
        are subtracted by the caller. Raise ``OSError`` when it cannot be measured:
        the batch is then refused, since nothing says it fits.
        """
        return None

    def _get_into(self, key: ObjectKey, parts: Sequence[memoryview]) -> bool:
        """Read ``key``'s stored bytes straight into ``parts``, filled in order.

        Optional: override it when the backend can read into caller memory
        (``readinto``, ``preadv``, ``recv_into``). The parts' sizes add up to the
        expected stored size; a key that is missing or holds another size returns
        False, and the parts may then hold partial bytes. This default reads with
        :meth:`_get` and copies.
        """
        expected = sum(part.nbytes for part in parts)
        data = self._get(key, expected)
        if data is None:
            return False
        view = _byte_view(memoryview(data))
        if view.nbytes != expected:
            return False
        offset = 0
        for part in parts:
            part[:] = view[offset : offset + part.nbytes]
            offset += part.nbytes
        return True

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release the backend's resources."""

    def _known_objects(self) -> dict[ObjectKey, int]:
        """Objects already stored when the adapter starts (key -> stored bytes).

        Persistent adapters override this to rebuild their index, so usage and
        capacity hold across restarts.
        """
        return {}

    # -- the contract ------------------------------------------------------------------

    def start(self) -> None:
        """Load the index of what is already stored (call once, after construction)."""
        known = self._known_objects()
        with self._lock:
            for key, size in known.items():
                self._set_size(key, size)

    def submit_store(
        self, keys: Sequence[ObjectKey], payloads: Sequence[bytes | memoryview]
    ) -> Future[list[bool]]:
        """Store each payload under its key; per-key success, never True for a failure.

        The caller keeps the payload buffers alive and unchanged until completion.
        """
        self._check(keys, payloads)
        views = [_byte_view(p) for p in payloads]
        sizes = [self._stored_size(view.nbytes) for view in views]
        # Admission in key order: the first keys that fit are stored, the rest refused,
        # although the writes themselves then run concurrently.
        admitted = self._admit(keys, sizes)
        futures: list[Future[bool] | None] = []
        for key, view, size, ok in zip(keys, views, sizes, admitted, strict=True):
            futures.append(self._submit_reserved(key, view, size) if ok else None)
        return _gather(futures)

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """Which keys are stored; each found key is pinned until :meth:`unlock`."""
        self._check(keys)
        return self._submit(lambda: [self._lookup_one(k) for k in keys])

    def submit_load(
        self, keys: Sequence[ObjectKey], buffers: Sequence[memoryview]
    ) -> Future[list[bool]]:
        """Read each key's payload into its writable buffer; False for a miss or a bad object."""
        self._check(keys, buffers)
        views = [_byte_view(b) for b in buffers]
        return _gather(
            [self._pool.submit(self._load_one, k, v) for k, v in zip(keys, views, strict=True)]
        )

    def unlock(self, keys: Sequence[ObjectKey]) -> None:
        """Release one pin per key (extra releases are ignored)."""
        with self._lock:
            for key in keys:
                count = self._pins.get(key, 0)
                if count > 1:
                    self._pins[key] = count - 1
                else:
                    self._pins.pop(key, None)

    def delete(self, keys: Sequence[ObjectKey], *, force: bool = False) -> int:
        """Delete unpinned keys (pinned ones too with ``force``); returns how many went."""
        removed = 0
        for key in keys:
            with self._lock:
                if self._pins.get(key) and not force:
                    continue
            try:
                gone = self._remove(key)
            except Exception:
                self.errors += 1
                logger.exception("%s: delete failed", self.name)
                continue
            with self._lock:
                self._set_size(key, None)
                self._pins.pop(key, None)
            removed += int(gone)
        return removed

    def usage(self) -> L2Usage:
        """Bytes held, in total and per cache_salt."""
        with self._lock:
            by_salt: dict[str, int] = {}
            for key, size in self._sizes.items():
                by_salt[key.cache_salt] = by_salt.get(key.cache_salt, 0) + size
            return L2Usage(self._used, self.capacity_bytes, by_salt)

    @property
    def used_bytes(self) -> int:
        """Bytes held (cheap; :meth:`usage` also splits them per salt)."""
        return self._used

    def keys(self) -> list[ObjectKey]:
        """Every key this adapter knows it holds."""
        with self._lock:
            return list(self._sizes)

    def status(self) -> dict[str, Any]:
        """``is_healthy`` and counters."""
        usage = self.usage()
        return {
            "type": self.name,
            "is_healthy": not self._closed,
            "contract_version": self.contract_version,
            "objects": len(self._sizes),
            "used_bytes": usage.used_bytes,
            "capacity_bytes": usage.capacity_bytes,
            "errors": self.errors,
            "corrupt_objects": self.corrupt,
            "refused_full": self.refused_full,
            "refused_no_room": self.refused_no_room,
            "pinned_keys": len(self._pins),
        }

    def close(self) -> None:
        """Finish in-flight work, then release the backend."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        self._close()

    # -- internals -------------------------------------------------------------------------

    def _check(self, keys: Sequence[ObjectKey], values: Sequence[Any] | None = None) -> None:
        if self._closed:
            raise RuntimeError(f"L2 adapter {self.name} is closed")
        if values is not None and len(values) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(values)} buffers")

    def _submit(self, work: Callable[[], T]) -> Future[T]:
        return self._pool.submit(work)

    def _stored_size(self, payload_size: int) -> int:
        return payload_size + (HEADER_SIZE if self.object_format == "framed" else 0)

    def _set_size(self, key: ObjectKey, size: int | None) -> None:
        """Record (or, with None, forget) a stored object's size; the lock is held."""
        self._used -= self._sizes.pop(key, 0)
        if size is not None:
            self._sizes[key] = size
            self._used += size

    def _admit(self, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> list[bool]:
        """Reserve room for each key in order; False for a key that does not fit.

        Two limits apply: the capacity (bytes this adapter indexes) and the
        backend's own room (:meth:`_room_bytes`, measured once per batch outside the
        lock, less the stores in flight).
        """
        try:
            room = self._room_bytes()
        except OSError:
            logger.warning("%s: cannot measure the free space; refusing the stores", self.name)
            self.errors += 1
            room = 0
        admitted: list[bool] = []
        with self._lock:
            for key, size in zip(keys, sizes, strict=True):
                # A store that does not fit fails; upstream's mock "succeeded" and kept nothing.
                replaced = self._sizes.get(key, 0)
                if (
                    self.capacity_bytes
                    and self._used + self._reserved + size - replaced > self.capacity_bytes
                ):
                    self.refused_full += 1
                    admitted.append(False)
                elif room is not None and self._reserved_room + self._room_size(size) > room:
                    self.refused_no_room += 1
                    admitted.append(False)
                else:
                    self._reserved += size
                    self._reserved_room += self._room_size(size)
                    admitted.append(True)
        return admitted

    def _room_size(self, size: int) -> int:
        """``size`` in whole allocation units of the backend."""
        return -(-size // self.room_unit) * self.room_unit

    def _release(self, size: int) -> None:
        """Give back an admitted store's reservation; the lock is held."""
        self._reserved -= size
        self._reserved_room -= self._room_size(size)

    def _submit_reserved(self, key: ObjectKey, payload: memoryview, size: int) -> Future[bool]:
        """Run :meth:`_put_reserved` on the pool (releasing the reservation if it cannot)."""
        try:
            return self._pool.submit(self._put_reserved, key, payload, size)
        except BaseException:
            with self._lock:
                self._release(size)
            raise

    def _store_one(self, key: ObjectKey, payload: bytes | bytearray | memoryview) -> bool:
        payload = _byte_view(payload)  # subclasses may call in with any buffer
        size = self._stored_size(payload.nbytes)
        if not self._admit([key], [size])[0]:
            return False
        return self._put_reserved(key, payload, size)

    def _put_reserved(self, key: ObjectKey, payload: memoryview, size: int) -> bool:
        """Write one admitted object; record its size, and release its reservation either way."""
        try:
            parts: list[bytes | memoryview] = (
                [payload] if self.object_format == "raw" else [frame(key, payload), payload]
            )
            self._put(key, parts)
        except Exception:
            self.errors += 1
            logger.warning("%s: store failed", self.name, exc_info=True)
            return False
        else:
            with self._lock:
                self._set_size(key, size)
            return True
        finally:
            with self._lock:
                self._release(size)

    def _lookup_one(self, key: ObjectKey) -> bool:
        try:
            found = self._exists(key)
        except Exception:
            self.errors += 1
            logger.warning("%s: lookup failed", self.name, exc_info=True)
            return False
        if found:
            with self._lock:
                self._pins[key] = self._pins.get(key, 0) + 1
        return found

    def _load_one(self, key: ObjectKey, buffer: bytearray | memoryview) -> bool:
        buffer = _byte_view(buffer)
        if self.buffers_are_scratch and type(self)._get_into is not L2AdapterV1._get_into:
            return self._load_direct(key, buffer)
        size = buffer.nbytes
        try:
            data = self._get(key, self._stored_size(size))
        except Exception:
            self.errors += 1
            logger.warning("%s: load failed", self.name, exc_info=True)
            return False
        if data is None:
            return False
        view = memoryview(data)
        if self.object_format == "framed":
            try:
                verify(key, view[:HEADER_SIZE], view[HEADER_SIZE:])
            except CorruptObject as exc:
                self.corrupt += 1
                logger.warning("%s: %s: treated as a miss", self.name, exc)
                return False
            view = view[HEADER_SIZE:]
        if view.nbytes != size:  # a sound object of another size: the caller's mismatch
            return False
        buffer[:] = view
        return True

    def _load_direct(self, key: ObjectKey, buffer: memoryview) -> bool:
        """Read straight into ``buffer`` (scratch until verified): no copy, no temporary."""
        header = memoryview(bytearray(HEADER_SIZE)) if self.object_format == "framed" else None
        try:
            found = self._get_into(key, [buffer] if header is None else [header, buffer])
        except Exception:
            self.errors += 1
            logger.warning("%s: load failed", self.name, exc_info=True)
            return False
        if not found:
            return False
        if header is not None:
            try:
                verify(key, header, buffer)
            except CorruptObject as exc:
                self.corrupt += 1
                logger.warning("%s: %s: treated as a miss", self.name, exc)
                return False
        return True


def _gather(futures: Sequence[Future[bool] | None]) -> Future[list[bool]]:
    """One future of every key's result (None: False without work), done when all are."""
    combined: Future[list[bool]] = Future()
    pending = [future for future in futures if future is not None]
    remaining = len(pending)
    lock = threading.Lock()

    def finish() -> None:
        try:
            combined.set_result([f.result() if f is not None else False for f in futures])
        except Exception as exc:  # noqa: BLE001 - re-raised by the caller's result()
            combined.set_exception(exc)

    def one_done(_: Future[bool]) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            if remaining:
                return
        finish()

    if not pending:
        finish()
    for future in pending:
        future.add_done_callback(one_done)
    return combined


def _byte_view(buffer: bytes | bytearray | memoryview) -> memoryview:
    """A flat byte view of ``buffer``, so sizes are bytes whatever its item type.

    Raises:
        ValueError: ``buffer`` is not contiguous.
    """
    view = memoryview(buffer)
    if not view.c_contiguous:
        raise ValueError("L2 payloads and buffers must be contiguous")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")
