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

import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from lmcache_core.observability.events import (
    L1EvictionLoopTick,
    L1KeysEvicted,
    count_per_salt,
)
from lmcache_core.storage.allocator import Allocator, align_down
from lmcache_core.storage.arena import Arena
from lmcache_core.storage.errors import L1ClosedError, L1FullError, ReservationExpired
from lmcache_core.storage.eviction import (
    EvictionPolicy,
    IsolatedEvictionPolicy,
    quota_eviction_targets,
)
from lmcache_core.storage.keys import ObjectKey, prefix_chunks

if TYPE_CHECKING:
    from lmcache_core.observability.bus import EventBus

logger = logging.getLogger("lmcache.storage")

# Grants taken within this fraction of the TTL of each other share one deadline
# (the earlier one), which bounds the grant list of a hot key to about 100
# entries however many readers come and go within one TTL.
_GRANT_MERGE_FRACTION = 0.01


@dataclass(frozen=True, slots=True)
class Reservation:
    """A staged object a writer fills, then commits or aborts.

    Attributes:
        key: The object's key.
        offset: Byte offset of the object in the arena (the same in every process
            that maps a shared-memory arena).
        nbytes: The object's size as requested (its extent is aligned up).
        serial: Distinguishes this reservation from a later one of the same key
            that reuses the same extent after this one expired.
    """

    key: ObjectKey
    offset: int
    nbytes: int
    serial: int = field(default=0, repr=False)


@dataclass(frozen=True, slots=True)
class L1Usage:
    """A consistent snapshot of the L1 tier's occupancy.

    Attributes:
        used_bytes: Bytes allocated (resident and staged, aligned sizes).
        capacity_bytes: The final size of L1 (``--l1-size-gb``).
        limit_bytes: The part grown so far (lazy allocation).
        resident_objects: Committed objects.
        staged_objects: Reservations not committed yet.
        locked_objects: Resident objects with a live read lock.
        temporary_objects: Resident objects marked temporary.
    """

    used_bytes: int
    capacity_bytes: int
    limit_bytes: int
    resident_objects: int
    staged_objects: int
    locked_objects: int
    temporary_objects: int = 0

    @property
    def usage_ratio(self) -> float:
        """``used_bytes / capacity_bytes`` (0 for an empty tier)."""
        return self.used_bytes / self.capacity_bytes if self.capacity_bytes else 0.0

    def as_dict(self) -> dict[str, int]:
        """The counts ``/status``, ``/config/adapters`` and the admin CLI show."""
        return {
            "used_bytes": self.used_bytes,
            "capacity_bytes": self.capacity_bytes,
            "limit_bytes": self.limit_bytes,
            "resident_objects": self.resident_objects,
            "staged_objects": self.staged_objects,
            "locked_objects": self.locked_objects,
        }


@dataclass(frozen=True, slots=True)
class SharedSegment:
    """The POSIX shared-memory segment holding L1, as another process maps it.

    Attributes:
        name: The segment's ``shm_open`` name.
        size_bytes: Its size; object offsets (:meth:`L1Manager.offsets`,
            :attr:`Reservation.offset`) are relative to its start.
    """

    name: str
    size_bytes: int


class _Stage:
    __slots__ = ("alloc_offset", "deadline", "reservation")

    def __init__(self, reservation: Reservation, alloc_offset: int, deadline: float) -> None:
        self.reservation = reservation
        self.alloc_offset = alloc_offset
        self.deadline = deadline


class _Object:
    """A resident object.

    ``grants`` and ``orphans`` are ``[deadline, count]`` lists in deadline order
    (deadlines are appended from a monotonic clock).
    """

    __slots__ = ("alloc_offset", "grants", "nbytes", "offset", "orphans", "readers", "temporary")

    def __init__(self, offset: int, alloc_offset: int, nbytes: int) -> None:
        self.offset = offset
        self.alloc_offset = alloc_offset
        self.nbytes = nbytes
        self.grants: list[list[float]] = []
        self.orphans: list[list[float]] = []
        self.readers = 0  # sum of the grants' counts
        self.temporary = False


class L1Manager:
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
        self.trigger_watermark = trigger_watermark
        self.eviction_ratio = eviction_ratio
        self._clock = clock
        self._allocator = Allocator(capacity_bytes, init_bytes, align_bytes)
        self.capacity_bytes = self._allocator.capacity
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # see wait_resident
        self._waiters = 0  # threads in wait_resident: commits notify only when some wait
        self._resident: dict[ObjectKey, _Object] = {}
        self._staged: dict[ObjectKey, _Stage] = {}
        self._locked: dict[ObjectKey, _Object] = {}  # objects with grants or orphans
        self._salt_bytes: dict[str, int] = {}  # resident bytes (aligned) per cache_salt
        self._next_deadline = math.inf  # lower bound of every stage/grant/orphan deadline
        self._serial = 0
        self._closed = False
        self._merge_window = read_ttl_s * _GRANT_MERGE_FRACTION
        self.events: EventBus | None = None
        """Where evictions and eviction ticks are published (set by the server)."""

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
            for index, key in enumerate(keys):
                if key in seen or key in self._resident:
                    continue
                stage = self._staged.get(key)
                if stage is not None:
                    if stage.deadline > now:
                        continue
                    # The writer is gone (its TTL ran out): reclaim for the new writer.
                    self._drop_stage(key, stage)
                seen.add(key)
                fresh.append(index)
            if not fresh:
                return result
            offsets = self._allocate(len(fresh), nbytes, now)
            deadline = now + self.write_ttl_s
            for index, alloc_offset in zip(fresh, offsets, strict=True):
                self._serial += 1
                key = keys[index]
                reservation = Reservation(key, self._base + alloc_offset, nbytes, self._serial)
                self._staged[key] = _Stage(reservation, alloc_offset, deadline)
                result[index] = reservation
            self._next_deadline = min(self._next_deadline, deadline)
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
            now = self._clock()
            stages = [self._staged.get(r.key) for r in reservations]
            if any(
                stage is None or stage.reservation.serial != r.serial or stage.deadline <= now
                for stage, r in zip(stages, reservations, strict=True)
            ):
                return False
            deadline = now + self.write_ttl_s
            for stage in stages:
                assert stage is not None
                stage.deadline = deadline
            self._next_deadline = min(self._next_deadline, deadline)
            return True

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
            gone: list[ObjectKey] = []
            batch: dict[ObjectKey, _Stage] = {}
            for reservation in reservations:
                stage = self._staged.get(reservation.key)
                if stage is None or stage.reservation.serial != reservation.serial:
                    gone.append(reservation.key)
                elif stage.deadline <= now:
                    gone.append(reservation.key)
                    self._drop_stage(reservation.key, stage)
                else:
                    batch[reservation.key] = stage
            if gone:
                raise ReservationExpired(gone)
            deadline = now + self.read_ttl_s
            for key, stage in batch.items():
                del self._staged[key]
                obj = _Object(
                    stage.reservation.offset, stage.alloc_offset, stage.reservation.nbytes
                )
                self._resident[key] = obj
                salt = key.cache_salt
                self._salt_bytes[salt] = self._salt_bytes.get(salt, 0) + self._allocator.size_of(
                    stage.alloc_offset
                )
                if readers:
                    self._grant(key, obj, readers, deadline)
                    obj.temporary = temporary
            if batch:
                self.policy.on_stored(list(batch))
                self._wake_waiters()

    def abort(self, reservations: Sequence[Reservation]) -> int:
        """Free staged reservations that will not be committed.

        Reservations already gone (expired, aborted, committed) are ignored.

        Returns:
            How many were freed.
        """
        freed = 0
        with self._lock:
            for reservation in reservations:
                stage = self._staged.get(reservation.key)
                if stage is not None and stage.reservation.serial == reservation.serial:
                    self._drop_stage(reservation.key, stage)
                    freed += 1
        return freed

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

    # -- reads --------------------------------------------------------------------

    def contains(self, keys: Sequence[ObjectKey]) -> list[bool]:
        """Whether each key is resident (staged ones are not)."""
        with self._lock:
            resident = self._resident
            return [key in resident for key in keys]

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
            resident = self._resident
            chunks = prefix_chunks([key in resident for key in keys], width)
            prefix = keys[: chunks * width]
            if prefix:
                deadline = self._clock() + self.read_ttl_s
                for key in prefix:
                    self._grant(key, resident[key], readers, deadline)
                self.policy.on_accessed(list(prefix))
        return chunks

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
            freed: list[ObjectKey] = []
            for key in keys:
                obj = self._resident.get(key)
                if obj is None:
                    continue
                self._prune(obj, now)
                self._release(obj, readers)
                if not obj.grants and not obj.orphans:
                    self._locked.pop(key, None)
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
                self._prune(obj, now)
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
            for key, stage in list(self._staged.items()):
                if stage.deadline <= now:
                    self._drop_stage(key, stage)
                    count += 1
            return count

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
            if now < self._next_deadline:
                return 0  # the common case: nothing can have expired yet
            expired = 0
            next_deadline = math.inf
            for key, stage in list(self._staged.items()):
                if stage.deadline <= now:
                    logger.warning("L1 reservation of %r expired before commit", key)
                    self._drop_stage(key, stage)
                    expired += 1
                else:
                    next_deadline = min(next_deadline, stage.deadline)
            freed: list[ObjectKey] = []
            for key, obj in list(self._locked.items()):
                expired += self._prune(obj, now)
                if obj.temporary and obj.readers == 0:
                    self._drop_object(key, obj)
                    freed.append(key)
                    continue
                if not obj.grants and not obj.orphans:
                    del self._locked[key]
                    continue
                if obj.grants:
                    next_deadline = min(next_deadline, obj.grants[0][0])
                if obj.orphans:
                    next_deadline = min(next_deadline, obj.orphans[0][0])
            self._next_deadline = next_deadline
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
        policy = self.policy
        if not isinstance(policy, IsolatedEvictionPolicy):
            return 0
        with self._lock:
            now = self._clock()
            targets = quota_eviction_targets(
                policy, self._salt_bytes, self.trigger_watermark, self.eviction_ratio
            )
            freed = 0
            for salt, target in targets.items():
                victims: list[ObjectKey] = []
                salt_freed = 0
                evictable = self._evictable(now, policy.salt_candidates(salt))
                for key, obj in evictable:
                    if key.cache_salt != salt:
                        continue  # a policy's mistake must not cost another salt its data
                    victims.append(key)
                    salt_freed += self._allocator.size_of(obj.alloc_offset)
                    if salt_freed >= target:
                        break
                evictable.close()  # ends the policy's iteration before we change it
                self._evict(victims)
                freed += salt_freed
            return freed

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
            triggered = used > self.trigger_watermark * self.capacity_bytes
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
            target = self.eviction_ratio * self.capacity_bytes
            if target <= 0:
                return 0
            now = self._clock()
            victims: list[ObjectKey] = []
            freed = 0
            for key, obj in self._evictable(now):
                victims.append(key)
                freed += self._allocator.size_of(obj.alloc_offset)
                if freed >= target:
                    break
            self._evict(victims)
            return freed

    # -- status and lifetime -----------------------------------------------------------

    def usage(self) -> L1Usage:
        """A snapshot of occupancy and object counts."""
        with self._lock:
            now = self._clock()
            locked = 0
            for obj in self._locked.values():
                self._prune(obj, now)
                if obj.readers:
                    locked += 1
            return L1Usage(
                used_bytes=self._allocator.used_bytes,
                capacity_bytes=self.capacity_bytes,
                limit_bytes=self._allocator.limit,
                resident_objects=len(self._resident),
                staged_objects=len(self._staged),
                locked_objects=locked,
                temporary_objects=sum(1 for obj in self._resident.values() if obj.temporary),
            )

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
            self._locked.clear()
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
            hits: list[ObjectKey] = []
            for key in keys:
                obj = self._resident.get(key)
                if obj is None:
                    found.append(False)
                else:
                    self._grant(key, obj, readers, deadline)
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

    def _allocate(self, count: int, nbytes: int, now: float) -> list[int]:
        """``count`` extents of ``nbytes``: allocate, else grow, else evict, else raise."""
        allocator = self._allocator
        sizes = [nbytes] * count
        offsets = allocator.allocate_batch(sizes)
        if offsets is not None:
            return offsets
        need = count * allocator.aligned(nbytes)
        if need > allocator.capacity:
            raise L1FullError(need, allocator.free_bytes, "larger than the whole L1")
        if allocator.limit < allocator.capacity:
            allocator.grow_to(allocator.limit + need)
            offsets = allocator.allocate_batch(sizes)
            if offsets is not None:
                return offsets
        offsets = self._evict_for(sizes, now)
        if offsets is None:
            raise L1FullError(
                need,
                allocator.free_bytes,
                "the rest is read-locked, staged, or not offered by the eviction policy",
            )
        return offsets

    def _evict_for(self, sizes: list[int], now: float) -> list[int] | None:
        """Evict just enough, in policy order, for ``sizes`` to fit.

        The allocator simulates the frees first, so nothing is evicted when even
        every evictable object would not make room (too few bytes, or the free
        space stays fragmented around locked objects).
        """
        victims: list[ObjectKey] = []
        evictable = self._evictable(now)

        def offsets() -> Iterator[int]:
            for key, obj in evictable:
                victims.append(key)
                yield obj.alloc_offset

        count = self._allocator.frees_needed(sizes, offsets())
        evictable.close()  # ends the policy's iteration before we change it
        if count is None:
            return None
        self._evict(victims[:count])
        offsets_ = self._allocator.allocate_batch(sizes)
        assert offsets_ is not None, "the allocator's simulation and allocation disagree"
        return offsets_

    def _evictable(
        self, now: float, candidates: Iterator[ObjectKey] | None = None
    ) -> Generator[tuple[ObjectKey, _Object], None, None]:
        """Candidates (by default the policy's global order) that may go.

        That is: resident, and without a live read lock.
        """
        stale: list[ObjectKey] = []
        try:
            for key in self.policy.candidates() if candidates is None else candidates:
                obj = self._resident.get(key)
                if obj is None:
                    stale.append(key)  # the policy tracks a key we do not have
                    continue
                if obj.grants:
                    self._prune(obj, now)
                if obj.readers == 0:
                    yield key, obj
        finally:
            if stale:
                self.policy.on_removed(stale)

    def _evict(self, keys: list[ObjectKey]) -> None:
        if not keys:
            return
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
                self._prune(obj, now)
                if obj.readers:
                    continue
            self._drop_object(key, obj)
            removed.append(key)
        if removed:
            self.policy.on_removed(removed)
        return len(removed)

    def _drop_object(self, key: ObjectKey, obj: _Object) -> None:
        del self._resident[key]
        self._locked.pop(key, None)
        salt = key.cache_salt
        left = self._salt_bytes[salt] - self._allocator.size_of(obj.alloc_offset)
        if left:
            self._salt_bytes[salt] = left
        else:
            del self._salt_bytes[salt]  # only salts present in L1 stay in the table
        self._allocator.free(obj.alloc_offset)

    def _drop_stage(self, key: ObjectKey, stage: _Stage) -> None:
        del self._staged[key]
        self._allocator.free(stage.alloc_offset)
        self._wake_waiters()  # a waiter for this key gives up: nobody writes it now

    def _grant(self, key: ObjectKey, obj: _Object, readers: int, deadline: float) -> None:
        grants = obj.grants
        if grants and deadline - grants[-1][0] <= self._merge_window:
            grants[-1][1] += readers
        else:
            grants.append([deadline, readers])
        obj.readers += readers
        self._locked[key] = obj
        self._next_deadline = min(self._next_deadline, deadline)

    def _prune(self, obj: _Object, now: float) -> int:
        """Turn expired grants into orphans, forget old orphans; returns locks expired."""
        expired = 0
        grants = obj.grants
        while grants and grants[0][0] <= now:
            deadline, count = grants.pop(0)
            obj.readers -= int(count)
            expired += int(count)
            # The holder gets one more TTL to send its late unlock.
            orphans = obj.orphans
            orphan_deadline = deadline + self.read_ttl_s
            if orphans and orphan_deadline - orphans[-1][0] <= self._merge_window:
                orphans[-1][1] += count
            else:
                orphans.append([orphan_deadline, count])
        orphans = obj.orphans
        while orphans and orphans[0][0] <= now:
            orphans.pop(0)
        return expired

    def _release(self, obj: _Object, readers: int) -> None:
        remaining = readers
        for pool, live in ((obj.orphans, False), (obj.grants, True)):
            while remaining and pool:
                take = min(remaining, int(pool[0][1]))
                pool[0][1] -= take
                remaining -= take
                if live:
                    obj.readers -= take
                if pool[0][1] == 0:
                    pool.pop(0)


class L1Controller:
    """Background upkeep of one L1 manager: expiry, then watermark eviction.

    A daemon thread calls :meth:`L1Manager.expire` and :meth:`L1Manager.maybe_evict`
    every ``interval_s``. Each round is bounded (one eviction round frees about
    ``eviction_ratio`` of the capacity), an error is logged and counted and never
    kills the thread, and :meth:`stop` returns within one round.

    Args:
        manager: The L1 manager to keep.
        interval_s: Pause between rounds.
    """

    def __init__(self, manager: L1Manager, interval_s: float = 0.1) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s}")
        self.manager = manager
        self.interval_s = interval_s
        self.rounds = 0
        self.errors = 0
        self.evicted_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = -math.inf

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (once).

        Raises:
            RuntimeError: It was started before.
        """
        if self._thread is not None:
            raise RuntimeError("the L1 controller was already started")
        self._thread = threading.Thread(target=self._run, name="lmcache-l1-controller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the thread to stop and wait for it.

        Returns:
            Whether it stopped within ``timeout`` (also true if never started).
        """
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def run_once(self) -> int:
        """One round: expire, evict over quotas, then above the watermark; returns bytes evicted."""
        self.manager.expire()
        freed = self.manager.evict_over_quota() + self.manager.maybe_evict()
        self.evicted_bytes += freed
        self.rounds += 1
        return freed

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.manager.closed:
                return
            try:
                self.run_once()
            except L1ClosedError:
                return
            except Exception:  # the thread must survive a bad policy (upstream's died)
                self.errors += 1
                now = time.monotonic()
                if now - self._last_error_log >= 10.0:  # at most one traceback per 10 s
                    self._last_error_log = now
                    logger.exception("L1 controller round failed (%d so far)", self.errors)
