"""The L1 manager: object states, TTL read locks, reservations and eviction.

Every object is one chunk of one KV rank of one object group (an
:class:`~lmcache_core.storage.keys.ObjectKey`) held in one extent of the arena.
Its states:

* **staged**: reserved by a writer (:meth:`L1Manager.reserve`), invisible to
  lookups, never evicted; it expires ``write_ttl_s`` after the reservation.
* **resident**: committed (:meth:`L1Manager.commit`), visible at once.
* **read-locked**: resident with live read locks (:meth:`L1Manager.lock_for_read`,
  :meth:`L1Manager.lock_prefix`, or :meth:`L1Manager.pin`, which the eviction
  policy does not hear of); never evicted or deleted (unless forced). Each grant
  of locks has its own deadline, ``read_ttl_s`` after it was taken, so a new
  reader never extends an older reader's lock, and an expired grant never
  resets a newer one.
* **temporary**: resident, freed as soon as it has no live reader (a prefetched
  L2 hit that should not stay in L1, or a write-buffer object already in L2).

TTLs are crash safety nets: a reader or writer that died does not pin memory
forever. A lock grant that expired is remembered as *orphaned* for one more TTL,
so the late unlock of its (slow, not dead) holder consumes the orphan instead of
a newer reader's lock (upstream's shared counter got this wrong).

Concurrency: one lock guards every table, the allocator and the policy. Nothing
copies bytes under it: writers fill their staged extents and readers read their
locked extents through :meth:`L1Manager.buffer` / :meth:`L1Manager.read_view`
outside the lock, which is safe because staged and locked extents are never
freed (until their TTL expires).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from lmcache_core.observability.events import L1EvictionLoopTick, L1KeysEvicted, count_per_salt
from lmcache_core.storage.allocator import Allocator, align_down
from lmcache_core.storage.arena import Arena
from lmcache_core.storage.errors import L1ClosedError
from lmcache_core.storage.eviction import EvictionPolicy, IsolatedEvictionPolicy
from lmcache_core.storage.keys import ObjectKey, prefix_chunks
from lmcache_core.storage.l1_controller import L1Controller
from lmcache_core.storage.l1_eviction import L1Eviction
from lmcache_core.storage.l1_objects import (
    L1Usage,
    Reservation,
    ResidentObject,
    SharedSegment,
    Stage,
)
from lmcache_core.storage.l1_staging import Staging
from lmcache_core.storage.l1_views import ArenaViews
from lmcache_core.storage.namespace_index import NamespaceIndex
from lmcache_core.storage.read_grants import ReadGrants
from lmcache_core.storage.removal_history import L1_TIER, RemovalHistory

if TYPE_CHECKING:
    from lmcache_core.observability.bus import EventBus
    from lmcache_core.storage.pinning import LazyPinner

__all__ = ["L1Controller", "L1Manager", "L1Usage", "Reservation", "SharedSegment"]


class L1Manager(ArenaViews):
    """The L1 memory tier: a thread-safe table of objects in one arena.

    Args:
        arena: The memory; the manager owns it from now on (:meth:`close` closes it).
        capacity_bytes: Final size of the tier; at most the arena's size (less the
            padding that aligns the first object); rounded down to ``align_bytes``.
        init_bytes: Part usable at start (lazy allocation grows it on demand up
            to ``capacity_bytes``); ``>= capacity_bytes`` means eager.
        align_bytes: Power of two aligning every object's address and size.
        write_ttl_s: Lifetime of a reservation that is not committed.
        read_ttl_s: Lifetime of a read-lock grant that is not released.
        policy: Orders eviction candidates (an ``EvictionPolicy`` plugin).
        trigger_watermark: :meth:`maybe_evict` acts when ``used / capacity``
            exceeds this.
        eviction_ratio: Fraction of ``capacity_bytes`` :meth:`maybe_evict` frees.
        clock: Monotonic seconds; tests pass a fake one.

    Raises:
        ValueError: Inconsistent sizes, TTLs or ratios.
    """

    def __init__(
        self,
        *,
        arena: Arena,
        capacity_bytes: int,
        init_bytes: int,
        align_bytes: int,
        write_ttl_s: float,
        read_ttl_s: float,
        policy: EvictionPolicy,
        trigger_watermark: float,
        eviction_ratio: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if align_bytes <= 0 or align_bytes & (align_bytes - 1):
            raise ValueError(f"align_bytes must be a power of two, not {align_bytes}")
        if write_ttl_s <= 0 or read_ttl_s <= 0:
            raise ValueError("write_ttl_s and read_ttl_s must be > 0")
        if not 0.0 <= trigger_watermark <= 1.0 or not 0.0 <= eviction_ratio <= 1.0:
            raise ValueError("trigger_watermark and eviction_ratio must be in [0, 1]")
        # mmap gives page-aligned memory; a larger alignment (2 MiB for example)
        # needs padding before the first object, as upstream over-allocates by align-1.
        self._base = -arena.data_ptr() % align_bytes
        usable = align_down(arena.size_bytes - self._base, align_bytes)
        if capacity_bytes <= 0 or capacity_bytes > usable:
            raise ValueError(
                f"capacity_bytes must be in (0, {usable}] for this arena, not {capacity_bytes}"
            )
        self.arena = arena
        self.policy = policy
        self.align_bytes = align_bytes
        self.write_ttl_s = write_ttl_s
        self.read_ttl_s = read_ttl_s
        self._clock = clock
        self._allocator = Allocator(capacity_bytes, init_bytes, align_bytes)
        self.capacity_bytes = self._allocator.capacity
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # see wait_resident
        self._waiters = 0  # threads in wait_resident: commits notify only when some wait
        self._resident: dict[ObjectKey, ResidentObject] = {}
        self._staging = Staging(write_ttl_s, self._base, self._stage_dropped)
        self._staged = self._staging.staged  # the same table (tests check it)
        self._grants: ReadGrants[ObjectKey, ResidentObject] = ReadGrants(read_ttl_s)
        self._salt_bytes: dict[str, int] = {}  # resident bytes (aligned) per cache_salt
        self._closed = False
        self._eviction = L1Eviction(
            policy,
            self._resident,
            self._grants,
            self._evict,
            trigger_watermark=trigger_watermark,
            eviction_ratio=eviction_ratio,
            capacity_bytes=self.capacity_bytes,
        )
        self.events: EventBus | None = None
        """Where evictions and eviction ticks are published (set by the server)."""
        self.removals: RemovalHistory | None = None
        """Where evictions and deletions are remembered, for miss explanations (set by
        the server)."""
        self.pinning: LazyPinner | None = None
        """Who page-locks the arena for device DMA (set by the server on a CUDA host)."""
        self.namespaces: NamespaceIndex | None = None
        """Where the namespaces of committed keys are remembered, for miss explanations
        (set by the server)."""

    @property
    def objects_base(self) -> int:
        """Arena offset of allocator offset 0 (padding that aligns the first object)."""
        return self._base

    def hand_growth_to_pinning(self) -> None:
        """From now on the limit grows only through :meth:`extend_limit` (lazy pinning).

        A batch that does not fit below the limit is then handled like one that does
        not fit a full L1 (eviction, else :class:`L1FullError`), instead of raising the
        limit into memory that is not pinned yet.
        """
        with self._lock:
            self._eviction.grows_on_demand = False

    def extend_limit(self, new_limit: int) -> int:
        """Raise the allocation limit to ``new_limit`` with a guard unit at the old one.

        Called by the lazy pinner after each registration: the guard keeps any object
        from spanning two registrations.

        Returns:
            The new limit.
        """
        with self._lock:
            if self._closed:
                return self._allocator.limit
            return self._allocator.grow_to(new_limit, guard=True)

    @property
    def trigger_watermark(self) -> float:
        """Usage ratio above which :meth:`maybe_evict` acts (held by the eviction part)."""
        return self._eviction.trigger_watermark

    @property
    def eviction_ratio(self) -> float:
        """Fraction of ``capacity_bytes`` one :meth:`maybe_evict` round frees."""
        return self._eviction.eviction_ratio

    # -- writes -------------------------------------------------------------------

    def reserve(self, keys: Sequence[ObjectKey], nbytes: int) -> list[Reservation | None]:
        """Stage one object of ``nbytes`` per key, all or nothing.

        Keys already resident or staged (and repeats within ``keys``) get ``None``:
        someone else holds or writes them. If the others do not fit, the lazy
        limit grows first; then objects the policy offers are evicted (never a
        read-locked or staged one), but only if that can make the batch fit.

        Args:
            keys: The keys of one request, in prefix order.
            nbytes: Size of every object.

        Returns:
            One entry per key: a :class:`Reservation` to fill and commit, or ``None``.

        Raises:
            L1FullError: The batch does not fit; nothing was reserved.
            ValueError: ``nbytes`` is not positive.
            L1ClosedError: After :meth:`close`.
        """
        if nbytes <= 0:
            raise ValueError(f"nbytes must be > 0, not {nbytes}")
        result: list[Reservation | None] = [None] * len(keys)
        with self._lock:
            self._check_open()
            now = self._clock()
            fresh: list[int] = []
            seen: set[ObjectKey] = set()
            staged = self._staged
            for index, key in enumerate(keys):
                if key in seen or key in self._resident:
                    continue
                stage = staged.get(key)
                if stage is not None:
                    if stage.deadline > now:
                        continue
                    # The writer is gone (its TTL ran out): reclaim for the new writer.
                    self._staging.drop(key, stage)
                seen.add(key)
                fresh.append(index)
            if fresh:
                offsets = self._eviction.allocate(self._allocator, len(fresh), nbytes, now)
                self._staging.add(keys, fresh, offsets, nbytes, now, result)
        return result

    def renew(self, reservations: Sequence[Reservation]) -> bool:
        """Restart the write TTL of live reservations before a long write into them.

        A writer that fills a reservation itself (an inline store) renews first, so
        the memory cannot expire and be handed to another object mid-copy.

        Returns:
            True if every reservation was still staged (all renewed); False if any
            expired or was aborted (then none is renewed).
        """
        with self._lock:
            return self._staging.renew(reservations, self._clock())

    def commit(
        self, reservations: Sequence[Reservation], *, readers: int = 0, temporary: bool = False
    ) -> None:
        """Make filled reservations resident and visible, as one batch.

        The policy hears ``on_stored`` with the keys in the given order (pass them
        in prefix order).

        Args:
            reservations: Reservations from :meth:`reserve`, filled.
            readers: Read locks to take on each at once (the prefetch path: no
                eviction can slip in between commit and lock).
            temporary: Free each object when its last reader is done; needs
                ``readers >= 1``.

        Raises:
            ReservationExpired: Some are no longer staged (write TTL expired, or
                aborted); nothing was committed, the live ones stay staged, and the
                expired ones are freed.
            ValueError: ``temporary`` without readers, or negative ``readers``.
        """
        if readers < 0 or (temporary and readers == 0):
            raise ValueError("a temporary commit needs readers >= 1; readers must be >= 0")
        with self._lock:
            now = self._clock()
            batch = self._staging.committable(reservations, now)
            deadline = now + self.read_ttl_s
            grant = self._grants.grant
            staged = self._staged
            for key, stage in batch.items():
                del staged[key]
                obj = ResidentObject(
                    stage.reservation.offset, stage.alloc_offset, stage.reservation.nbytes
                )
                self._resident[key] = obj
                salt = key.cache_salt
                self._salt_bytes[salt] = self._salt_bytes.get(salt, 0) + self._allocator.size_of(
                    stage.alloc_offset
                )
                if readers:
                    grant(key, obj, readers, deadline)
                    obj.temporary = temporary
            if batch:
                committed = list(batch)
                self.policy.on_stored(committed)
                if self.namespaces is not None:
                    self.namespaces.add(committed)
                self._wake_waiters()

    def abort(self, reservations: Sequence[Reservation]) -> int:
        """Free staged reservations that will not be committed.

        Reservations already gone (expired, aborted, committed) are ignored.

        Returns:
            How many were freed.
        """
        with self._lock:
            return self._staging.abort(reservations)

    # -- reads --------------------------------------------------------------------

    def contains(self, keys: Sequence[ObjectKey]) -> list[bool]:
        """Whether each key is resident (staged ones are not)."""
        with self._lock:
            resident = self._resident
            return [key in resident for key in keys]

    def presence(self, keys: Sequence[ObjectKey]) -> list[int]:
        """Per key: 1 resident, 2 staged (a writer is filling it), 0 neither.

        For miss explanations: one lock round for the whole list.
        """
        with self._lock:
            resident, staged = self._resident, self._staged
            return [1 if key in resident else 2 if key in staged else 0 for key in keys]

    def keys(self) -> list[ObjectKey]:
        """A snapshot of every resident key (staged ones are not), for admin listings."""
        with self._lock:
            return list(self._resident)

    def lock_for_read(self, keys: Sequence[ObjectKey], readers: int = 1) -> list[bool]:
        """Take ``readers`` read locks on each resident key.

        The grant expires ``read_ttl_s`` from now. The policy hears
        ``on_accessed`` for the keys found, in the given order.

        Returns:
            Whether each key was resident (and is now locked).

        Raises:
            ValueError: ``readers`` < 1.
        """
        return self._lock_resident(keys, readers, accessed=True)

    def pin(self, keys: Sequence[ObjectKey], readers: int = 1) -> list[bool]:
        """Read-lock resident keys like :meth:`lock_for_read`, without counting an access.

        For the server's own readers (the L2 store controller copying objects
        out): their reads are not uses, so the eviction policy does not hear of
        them. Release with :meth:`unlock`.

        Returns:
            Whether each key was resident (and is now locked).

        Raises:
            ValueError: ``readers`` < 1.
        """
        return self._lock_resident(keys, readers, accessed=False)

    def lock_prefix(self, keys: Sequence[ObjectKey], width: int, readers: int = 1) -> int:
        """Read-lock exactly the longest prefix of chunks resident for every rank.

        Nothing past the first chunk with a missing rank is locked, and the
        policy hears ``on_accessed`` only for the locked keys (in order): chunks
        the request cannot use are neither pinned nor refreshed.

        Args:
            keys: Chunk-major: the ``width`` keys (ranks) of chunk 0, then chunk 1...
            width: Keys per chunk.
            readers: Read locks to take on each key of the prefix.

        Returns:
            How many leading chunks are now locked.

        Raises:
            ValueError: ``readers`` or ``width`` < 1.
        """
        if readers < 1:
            raise ValueError(f"readers must be >= 1, not {readers}")
        with self._lock:
            return self._lock_leading(keys, width, readers)

    def _lock_leading(self, keys: Sequence[ObjectKey], width: int, readers: int) -> int:
        """Read-lock the leading whole chunks of ``keys`` that are resident (lock held)."""
        resident = self._resident
        chunks = prefix_chunks([key in resident for key in keys], width)
        prefix = keys[: chunks * width]
        if prefix:
            deadline = self._clock() + self.read_ttl_s
            self._grants.grant_many(prefix, resident, readers, deadline)
            self.policy.on_accessed(list(prefix))
        return chunks

    def try_lock_prefix(
        self, keys: Sequence[ObjectKey], width: int, readers: int = 1
    ) -> tuple[int, list[int]] | None:
        """:meth:`lock_prefix` without waiting, with the presence of what it did not lock.

        For a lookup served on the request loop whose misses need no L2 query
        (no L2 tier): ``None`` when another thread holds the manager's lock right
        now (nothing locked); else the leading chunks now locked and, per key
        after them, :meth:`presence`'s 1/2/0, read under the same lock so the
        miss explanation needs no second round.

        Raises:
            ValueError: ``readers`` or ``width`` < 1.
        """
        if readers < 1:
            raise ValueError(f"readers must be >= 1, not {readers}")
        if not self._lock.acquire(blocking=False):
            return None
        try:
            resident, staged = self._resident, self._staged
            chunks = self._lock_leading(keys, width, readers)
            rest = keys[chunks * width :]
            return chunks, [1 if key in resident else 2 if key in staged else 0 for key in rest]
        finally:
            self._lock.release()

    def try_lock_all(self, keys: Sequence[ObjectKey], readers: int = 1) -> bool | None:
        """Read-lock every one of ``keys`` if all are resident, without waiting.

        For a lookup served on the request loop, which must not wait: ``None``
        when another thread holds the manager's lock right now, False (nothing
        locked) when a key is not resident, True when all are locked (the policy
        hears ``on_accessed`` for them, in order, as with :meth:`lock_prefix`).

        Raises:
            ValueError: ``readers`` < 1.
        """
        if readers < 1:
            raise ValueError(f"readers must be >= 1, not {readers}")
        if not self._lock.acquire(blocking=False):
            return None
        try:
            try:  # one lookup per key finds its ledger and proves it resident
                ledgers = list(map(self._resident.__getitem__, keys))
            except KeyError:
                return False
            if keys:
                deadline = self._clock() + self.read_ttl_s
                self._grants.grant_each(keys, ledgers, readers, deadline)
                self.policy.on_accessed(list(keys))
            return True
        finally:
            self._lock.release()

    def wait_resident(self, keys: Sequence[ObjectKey], timeout: float) -> bool:
        """Wait (bounded) until every key has been resident, for keys another writer stages.

        Wakes on every commit, and on every reservation dropped (aborted,
        expired), instead of polling. A key counts once it was seen resident
        (it may be evicted again afterwards). Gives up at once when a key is
        neither resident nor staged: nobody is writing it.

        Args:
            keys: The keys to wait for.
            timeout: Most seconds to wait, in real time (not the manager's clock,
                which tests fake).

        Returns:
            Whether every key was seen resident in time.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            waiting = list(keys)
            while True:
                if self._closed:
                    return False
                waiting = [key for key in waiting if key not in self._resident]
                if not waiting:
                    return True
                if any(key not in self._staged for key in waiting):
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._waiters += 1
                try:
                    self._changed.wait(left)
                finally:
                    self._waiters -= 1

    def unlock(self, keys: Sequence[ObjectKey], readers: int = 1) -> None:
        """Release up to ``readers`` read locks on each key (never below zero).

        Orphaned grants (expired, holder not heard from) are released first, then
        the grants closest to expiry. A temporary object left with no live reader
        is freed. Keys not resident are ignored.
        """
        if readers < 1:
            raise ValueError(f"readers must be >= 1, not {readers}")
        with self._lock:
            now = self._clock()
            release = self._grants.release
            freed: list[ObjectKey] = []
            for key in keys:
                obj = self._resident.get(key)
                if obj is None:
                    continue
                release(key, obj, readers, now)
                if obj.temporary and obj.readers == 0:
                    self._drop_object(key, obj)
                    freed.append(key)
            if freed:
                self.policy.on_removed(freed)

    def mark_temporary(self, keys: Sequence[ObjectKey]) -> int:
        """Mark resident objects to be freed once they have no live reader.

        Objects without a live reader are freed now (after an L2 store under the
        ``skip_l1`` policy, say); the others after their last unlock or lock
        expiry. Keys not resident are ignored.

        Returns:
            How many objects were marked (freed ones included).
        """
        with self._lock:
            now = self._clock()
            marked = 0
            freed: list[ObjectKey] = []
            for key in keys:
                obj = self._resident.get(key)
                if obj is None:
                    continue
                marked += 1
                obj.temporary = True
                self._grants.prune(obj, now)
                if obj.readers == 0:
                    self._drop_object(key, obj)
                    freed.append(key)
            if freed:
                self.policy.on_removed(freed)
        return marked

    def touch(self, keys: Sequence[ObjectKey]) -> None:
        """Tell the policy the resident ones among ``keys`` were used (no lock taken)."""
        with self._lock:
            hits = [key for key in keys if key in self._resident]
            if hits:
                self.policy.on_accessed(hits)

    # -- removal -------------------------------------------------------------------

    def delete(self, keys: Sequence[ObjectKey], force: bool = False) -> int:
        """Free resident objects without a live read lock (``force``: locked ones too).

        Staged objects are never touched: their writer may be copying into them.

        Returns:
            How many objects were freed.
        """
        with self._lock:
            return self._delete_locked(keys, force)

    def clear(self, force: bool = False) -> int:
        """Free every resident object without a live read lock, and expired stages.

        ``force`` also frees read-locked objects; live stages are kept even then,
        because a writer copying into a freed extent would corrupt its next owner.

        Returns:
            How many objects and stages were freed.
        """
        with self._lock:
            now = self._clock()
            count = self._delete_locked(list(self._resident), force)
            return count + self._staging.drop_expired(now)

    def expire(self, now: float | None = None) -> int:
        """Drop expired read-lock grants and expired reservations.

        A temporary object left without a live reader is freed.

        Args:
            now: The time to expire against (defaults to the clock).

        Returns:
            How many read locks (counted per reader) and reservations expired.
        """
        with self._lock:
            now = self._clock() if now is None else now
            if now < self._staging.next_deadline and now < self._grants.next_deadline:
                return 0  # the common case: nothing can have expired yet
            expired = self._staging.drop_expired(now, warn=True)
            freed: list[ObjectKey] = []

            def free_temporary(key: ObjectKey, obj: ResidentObject) -> bool:
                if not obj.temporary:
                    return False
                self._drop_object(key, obj)
                freed.append(key)
                return True

            expired += self._grants.expire(now, free_temporary)
            if freed:
                self.policy.on_removed(freed)
            return expired

    def evict_over_quota(self) -> int:
        """Evict every salt that reached its quota's watermark (isolated policies only).

        With an :class:`~lmcache_core.storage.eviction.IsolatedEvictionPolicy`,
        each salt frees what
        :func:`~lmcache_core.storage.eviction.quota_eviction_targets` asks of
        its resident bytes, from the salt's own order, skipping read-locked
        objects (staged ones are not candidates). Other policies: a no-op.

        Returns:
            Bytes freed.
        """
        if not isinstance(self.policy, IsolatedEvictionPolicy):
            return 0
        with self._lock:
            return self._eviction.over_quota(self._allocator, self._salt_bytes, self._clock())

    def bytes_by_salt(self) -> dict[str, int]:
        """Resident bytes (aligned sizes) per ``cache_salt``; staged objects not counted."""
        with self._lock:
            return dict(self._salt_bytes)

    def maybe_evict(self) -> int:
        """Evict if usage is above the watermark.

        Frees about ``eviction_ratio * capacity_bytes`` (bytes, not keys) of
        candidates, in policy order, skipping read-locked ones; staged objects
        are not candidates.

        Returns:
            Bytes freed.
        """
        with self._lock:
            used = self._allocator.used_bytes
            triggered = self._eviction.triggered(used)
            if self.events is not None and self.events.has_subscribers(L1EvictionLoopTick.type):
                self.events.publish(
                    L1EvictionLoopTick(
                        usage=used / self.capacity_bytes,
                        watermark=self.trigger_watermark,
                        triggered=triggered,
                    )
                )
            if not triggered:
                return 0
            return self._eviction.above_watermark(self._allocator, self._clock())

    # -- status and lifetime -----------------------------------------------------------

    def usage(self) -> L1Usage:
        """A snapshot of occupancy and object counts."""
        with self._lock:
            locked = self._grants.locked_count(self._clock())
            return L1Usage(
                used_bytes=self._allocator.used_bytes,
                capacity_bytes=self.capacity_bytes,
                limit_bytes=self._allocator.limit,
                resident_objects=len(self._resident),
                staged_objects=len(self._staged),
                locked_objects=locked,
                temporary_objects=sum(1 for obj in self._resident.values() if obj.temporary),
            )

    def pinning_status(self) -> dict[str, Any]:
        """Pinned and target bytes for ``/status`` (``registrar`` ``None``: not pinned)."""
        if self.pinning is not None:
            return self.pinning.status()
        return {"registrar": None, "state": "unpinned", "pinned_bytes": 0, "target_bytes": 0}

    def close(self) -> None:
        """Forget every object and close the arena; idempotent.

        Later writes raise :class:`~lmcache_core.storage.errors.L1ClosedError`;
        views handed out earlier stay valid (see :meth:`Arena.close`).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake_waiters()
            self._resident.clear()
            self._staged.clear()
            self._grants.clear()
            self._salt_bytes.clear()
            self._allocator = Allocator(self.capacity_bytes, 0, self.align_bytes)
        self.arena.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> L1Manager:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- internals (the caller holds self._lock) ----------------------------------------

    def _lock_resident(
        self, keys: Sequence[ObjectKey], readers: int, *, accessed: bool
    ) -> list[bool]:
        if readers < 1:
            raise ValueError(f"readers must be >= 1, not {readers}")
        found: list[bool] = []
        with self._lock:
            deadline = self._clock() + self.read_ttl_s
            grant = self._grants.grant
            hits: list[ObjectKey] = []
            for key in keys:
                obj = self._resident.get(key)
                if obj is None:
                    found.append(False)
                else:
                    grant(key, obj, readers, deadline)
                    hits.append(key)
                    found.append(True)
            if hits and accessed:
                self.policy.on_accessed(hits)
        return found

    def _wake_waiters(self) -> None:
        """Objects became resident or reservations were dropped: re-check :meth:`wait_resident`."""
        if self._waiters:
            self._changed.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise L1ClosedError("the L1 manager is closed")

    def _evict(self, keys: list[ObjectKey], reason: str) -> None:
        if not keys:
            return
        if self.removals is not None:
            self.removals.record(keys, L1_TIER, reason, time.time())
        freed = 0
        for key in keys:
            obj = self._resident[key]
            freed += obj.nbytes
            self._drop_object(key, obj)
        self.policy.on_removed(keys)
        if self.events is not None and self.events.has_subscribers(L1KeysEvicted.type):
            self.events.publish(
                L1KeysEvicted(
                    key_count=len(keys),
                    bytes=freed,
                    key_count_per_salt=count_per_salt(keys),
                    reason="eviction",
                    keys=tuple(keys),
                )
            )

    def _delete_locked(self, keys: Iterable[ObjectKey], force: bool) -> int:
        now = self._clock()
        removed: list[ObjectKey] = []
        for key in keys:
            obj = self._resident.get(key)
            if obj is None:
                continue
            if not force:
                self._grants.prune(obj, now)
                if obj.readers:
                    continue
            self._drop_object(key, obj)
            removed.append(key)
        if removed:
            self.policy.on_removed(removed)
            if self.removals is not None:
                self.removals.record(removed, L1_TIER, "deleted", time.time())
        return len(removed)

    def _drop_object(self, key: ObjectKey, obj: ResidentObject) -> None:
        del self._resident[key]
        self._grants.forget(key)
        salt = key.cache_salt
        left = self._salt_bytes[salt] - self._allocator.size_of(obj.alloc_offset)
        if left:
            self._salt_bytes[salt] = left
        else:
            del self._salt_bytes[salt]  # only salts present in L1 stay in the table
        self._allocator.free(obj.alloc_offset)

    def _stage_dropped(self, stage: Stage) -> None:
        self._allocator.free(stage.alloc_offset)
        self._wake_waiters()  # a waiter for this key gives up: nobody writes it now
