"""The pre-allocated storage of ``nixl_store``: its page slots and where each one lives.

Upstream's ``nixl_store`` pre-allocates ``pool_size`` files (or objects) once and
splits them into pages of the L1 page size; an object takes as many pages as it
needs, anywhere in the pool. This module holds the two pieces of that which do no
I/O: :class:`PagePool`, the free list, and :class:`PoolLayout`, which maps a page
to its storage descriptor.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass


class PagePool:
    """A thread-safe free list of page indices ``0 .. total - 1``.

    Pages are handed out from the front and returned to the back, the order
    upstream's pool uses, so the same sequence of stores fills the same pages.

    Args:
        total: How many pages the pool has.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"a pool needs at least one page, not {total}")
        self.total = total
        self._free: deque[int] = deque(range(total))
        self._lock = threading.Lock()

    @property
    def free_pages(self) -> int:
        """How many pages are free now."""
        with self._lock:
            return len(self._free)

    def allocate(self, count: int) -> list[int] | None:
        """``count`` free pages, or None (nothing taken) when fewer are free."""
        with self._lock:
            if count > len(self._free):
                return None
            return [self._free.popleft() for _ in range(count)]

    def free(self, pages: Sequence[int]) -> None:
        """Return pages :meth:`allocate` handed out."""
        with self._lock:
            self._free.extend(pages)


@dataclass(frozen=True)
class PoolLayout:
    """Where each page lives: a file at an offset, or an object of its own.

    Attributes:
        page_size: Bytes per page.
        pages_per_slot: Pages in one pool file (1 for objects).
        slot_ids: Per pool slot, what NIXL addresses it by: the file's descriptor
            (file back ends) or the object's registration index (OBJ).
        objects: True for an object back end (a page is a whole object).
    """

    page_size: int
    pages_per_slot: int
    slot_ids: tuple[int, ...]
    objects: bool

    @property
    def total_pages(self) -> int:
        """Pages in the whole pool."""
        return len(self.slot_ids) * self.pages_per_slot

    def piece(self, page: int, offset: int, length: int) -> tuple[int, int, int]:
        """The storage descriptor of ``length`` bytes at ``offset`` inside ``page``."""
        slot, index = divmod(page, self.pages_per_slot)
        return (index * self.page_size + offset, length, self.slot_ids[slot])
