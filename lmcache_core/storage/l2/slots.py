"""``SlotTable``: the index and free-slot bookkeeping of adapters built on fixed slots.

Adapters that split a device into fixed slots of equal size (``dax``, ``raw_block``)
share the same bookkeeping: which key lives in which slot, which slots are free,
and which freed slots are still being read. Slots are numbered ``0 .. total - 1``;
the adapter maps a number to its device and offset.

Allocation takes a freed slot first, then the lowest never-used one (a bump
counter, so a large device costs no list of millions of free slots). A slot freed
while a reader borrows it (a delete, or a re-store that moved the key) is retired
and becomes free only when its last borrow ends, so a load never sees another
object's bytes written under it.

Every method is thread-safe.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from lmcache_core.storage.keys import ObjectKey


@dataclass(frozen=True)
class SlotEntry:
    """Where one object lives: its slot number and its stored length in bytes."""

    slot: int
    length: int


class SlotTable:
    """Key -> slot index, free slots and read borrows of ``total_slots`` fixed slots.

    Args:
        total_slots: How many slots there are (numbered from 0).
        used: Entries to start with (a recovered index); their slots are taken.

    Raises:
        ValueError: ``total_slots`` < 1, or ``used`` names a slot out of range or twice.
    """

    def __init__(self, total_slots: int, used: Mapping[ObjectKey, SlotEntry] | None = None) -> None:
        if total_slots < 1:
            raise ValueError("a slot table needs at least one slot")
        self.total_slots = total_slots
        self._lock = threading.Lock()
        self._index: dict[ObjectKey, SlotEntry] = dict(used or {})
        taken = [entry.slot for entry in self._index.values()]
        if len(set(taken)) != len(taken):
            raise ValueError("two entries share a slot")
        if any(not 0 <= slot < total_slots for slot in taken):
            raise ValueError(f"an entry's slot is outside 0..{total_slots - 1}")
        # Slots below the bump counter that no entry holds are free; those above are fresh.
        self._next_fresh = max(taken, default=-1) + 1
        occupied = set(taken)
        self._free: deque[int] = deque(s for s in range(self._next_fresh) if s not in occupied)
        self._borrows: dict[int, int] = {}
        self._retired: set[int] = set()
        self._version = 0  # bumped by every change of the index (checkpoints compare it)

    # -- queries -------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        """Slots a store can take now (retired slots still borrowed are not counted)."""
        with self._lock:
            return len(self._free) + self.total_slots - self._next_fresh

    @property
    def version(self) -> int:
        """A counter that changes whenever the index changes."""
        return self._version

    def get(self, key: ObjectKey) -> SlotEntry | None:
        """The entry of ``key``, or None."""
        with self._lock:
            return self._index.get(key)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._index

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def snapshot(self) -> tuple[int, dict[ObjectKey, SlotEntry]]:
        """The index version and a copy of the index, taken atomically."""
        with self._lock:
            return self._version, dict(self._index)

    def borrowed(self) -> dict[int, int]:
        """Slots being read and their borrow counts (a copy, for tests and status)."""
        with self._lock:
            return dict(self._borrows)

    # -- allocation ------------------------------------------------------------------------

    def take(self) -> int | None:
        """Reserve a free slot for a store; None when every slot is in use."""
        with self._lock:
            if self._free:
                return self._free.popleft()
            if self._next_fresh < self.total_slots:
                self._next_fresh += 1
                return self._next_fresh - 1
            return None

    def abandon(self, slot: int) -> None:
        """Give back a slot :meth:`take` reserved whose write failed."""
        with self._lock:
            self._free.appendleft(slot)

    def publish(self, key: ObjectKey, entry: SlotEntry) -> SlotEntry | None:
        """Point ``key`` at its freshly written slot; the slot it held before is released.

        Returns:
            The entry ``key`` had before, or None.
        """
        with self._lock:
            old = self._index.get(key)
            self._index[key] = entry
            self._version += 1
            if old is not None:
                self._release(old.slot)
            return old

    def remove(self, key: ObjectKey, *, expected: SlotEntry | None = None) -> SlotEntry | None:
        """Forget ``key`` and release its slot.

        Args:
            key: The key to forget.
            expected: Only remove it while it still has this entry (a reader that
                found a bad slot must not drop a newer store of the same key).

        Returns:
            The removed entry, or None when nothing was removed.
        """
        with self._lock:
            entry = self._index.get(key)
            if entry is None or (expected is not None and entry != expected):
                return None
            del self._index[key]
            self._version += 1
            self._release(entry.slot)
            return entry

    def clear(self) -> None:
        """Forget everything (the adapter is closing)."""
        with self._lock:
            self._index.clear()
            self._free.clear()
            self._retired.clear()
            self._next_fresh = self.total_slots
            self._version += 1

    # -- borrows ---------------------------------------------------------------------------

    def borrow(self, key: ObjectKey) -> SlotEntry | None:
        """The entry of ``key``, its slot kept from reuse until :meth:`end_borrow`; or None."""
        with self._lock:
            entry = self._index.get(key)
            if entry is not None:
                self._borrows[entry.slot] = self._borrows.get(entry.slot, 0) + 1
            return entry

    def end_borrow(self, slot: int) -> None:
        """End one borrow of ``slot``; a retired slot becomes free with its last borrow."""
        with self._lock:
            count = self._borrows[slot] - 1
            if count:
                self._borrows[slot] = count
                return
            del self._borrows[slot]
            if slot in self._retired:
                self._retired.discard(slot)
                self._free.append(slot)

    def _release(self, slot: int) -> None:
        """Free ``slot``, or retire it until its borrows end; the lock is held."""
        if self._borrows.get(slot):
            self._retired.add(slot)
        else:
            self._free.append(slot)
